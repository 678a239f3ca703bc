"""A throw-away PKI for the KME simulator: one CA, two KME server certificates, one client
certificate per SAE.

ETSI GS QKD 014 carries keys from KME to SAE over HTTPS; hybridkex insists on mutual TLS:
the KME proves itself with a server certificate, the SAE with a client certificate, and the
KME learns *which* SAE is calling from that certificate.  The simulator takes the SAE ID
from the client certificate's subject common name, so ``DIR/<SAE ID>.crt`` has ``CN=<SAE ID>``.

Layout of ``DIR``::

    ca.crt  ca.key            the CA (key 0600)
    kme-a.crt kme-a.key       server certificate of KME A (SANs 127.0.0.1, localhost)
    kme-b.crt kme-b.key       server certificate of KME B
    <SAE ID>.crt <SAE ID>.key client certificate of each SAE (key 0600)

This is a test PKI: unencrypted ECDSA P-256 keys, no revocation.  Do not use it for
production KMEs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hybridkex import ConfigError
from hybridkex.io import atomic_write

__all__ = ["TestPKI", "create_test_pki", "load_test_pki", "check_sae_id", "KME_NAMES", "DEFAULT_HOSTS"]

#: The two simulated KMEs; their certificate files are ``DIR/<name>.crt`` and ``DIR/<name>.key``.
KME_NAMES = ("kme-a", "kme-b")
#: Names the KME server certificates are valid for (subject alternative names).
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

_RESERVED = {"ca", *KME_NAMES}
# An SAE ID names a file here and sits in a URL path: keep it to a safe token.
_SAE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CA_DAYS = 3650
_LEAF_DAYS = 825


def check_sae_id(sae_id: str) -> str:
    """Return ``sae_id`` if it is usable as a test-PKI SAE ID, else raise :class:`ConfigError`."""
    if not _SAE_ID_RE.fullmatch(sae_id):
        raise ConfigError(
            f"SAE ID {sae_id!r} is not usable: use 1-64 characters from A-Z a-z 0-9 . _ - "
            f"starting with a letter or digit")
    if sae_id.lower() in _RESERVED:
        raise ConfigError(f"SAE ID {sae_id!r} is reserved for the CA or a KME; choose another name")
    return sae_id


@dataclass(frozen=True)
class TestPKI:
    """Paths of a test PKI directory (see the module docstring for the layout)."""

    __test__ = False  # not a pytest test class, despite the name

    #: the directory holding every file
    directory: Path
    #: SAE IDs whose certificate and key exist in ``directory``
    sae_ids: tuple[str, ...] = field(default=())

    @property
    def ca_cert(self) -> Path:
        """The CA certificate both sides trust."""
        return self.directory / "ca.crt"

    def kme_cert(self, kme: str) -> Path:
        """Server certificate of ``kme`` ("kme-a" or "kme-b")."""
        return self.directory / f"{kme}.crt"

    def kme_key(self, kme: str) -> Path:
        """Server private key of ``kme``."""
        return self.directory / f"{kme}.key"

    def sae_cert(self, sae_id: str) -> Path:
        """Client certificate of SAE ``sae_id`` (subject CN = ``sae_id``)."""
        return self.directory / f"{sae_id}.crt"

    def sae_key(self, sae_id: str) -> Path:
        """Client private key of SAE ``sae_id``."""
        return self.directory / f"{sae_id}.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hybridkex test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("hybridkex test CA"))
            .issuer_name(_name("hybridkex test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *,
           server_hosts: Sequence[str] | None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a leaf: a TLS server certificate when ``server_hosts`` is given, else a client one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server_hosts is not None:
        names: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _load_ca(pki: TestPKI) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reuse the CA in {pki.directory}: {exc}; pass --force to create a new PKI") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pki.directory / 'ca.key'} is not an EC key; pass --force to create a new PKI")
    return key, cert


def _write_pair(cert_path: Path, key_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    atomic_write(key_path, _key_pem(key), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def create_test_pki(directory: str | os.PathLike[str], sae_ids: Iterable[str], *,
                    hosts: Sequence[str] = DEFAULT_HOSTS, force: bool = False) -> tuple[TestPKI, list[Path]]:
    """Create (or extend) a test PKI in ``directory``; return it and the files written.

    An existing CA and existing KME/SAE certificates are reused unless ``force`` is true, so
    ``create_test_pki(d, ["sae-c"])`` adds an SAE to a PKI made earlier.  ``hosts`` are the
    names the KME server certificates are valid for.
    """
    ids = [check_sae_id(s) for s in sae_ids]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same SAE ID was given twice; give each --sae once")
    root = Path(directory)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {root}: {exc.strerror}; check the path and permissions") from None
    pki = TestPKI(root)
    written: list[Path] = []
    if force or not (pki.ca_cert.exists() and (root / "ca.key").exists()):
        ca_key, ca_cert = _new_ca()
        _write_pair(pki.ca_cert, root / "ca.key", ca_key, ca_cert)
        written += [pki.ca_cert, root / "ca.key"]
        force = True  # a new CA invalidates every certificate issued by the old one
    else:
        ca_key, ca_cert = _load_ca(pki)
    for kme in KME_NAMES:
        if force or not (pki.kme_cert(kme).exists() and pki.kme_key(kme).exists()):
            _write_pair(pki.kme_cert(kme), pki.kme_key(kme), *_issue(ca_key, ca_cert, kme, server_hosts=hosts))
            written += [pki.kme_cert(kme), pki.kme_key(kme)]
    for sae in ids:
        if force or not (pki.sae_cert(sae).exists() and pki.sae_key(sae).exists()):
            _write_pair(pki.sae_cert(sae), pki.sae_key(sae), *_issue(ca_key, ca_cert, sae, server_hosts=None))
            written += [pki.sae_cert(sae), pki.sae_key(sae)]
    return load_test_pki(root), written


def load_test_pki(directory: str | os.PathLike[str]) -> TestPKI:
    """Open a test PKI made by :func:`create_test_pki`, checking the CA and KME files exist."""
    root = Path(directory)
    pki = TestPKI(root)
    needed = [pki.ca_cert] + [p for kme in KME_NAMES for p in (pki.kme_cert(kme), pki.kme_key(kme))]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise ConfigError(f"test PKI {root} lacks {', '.join(missing)}; "
                          f"create it with 'hybridkex kme pki {root} --sae ID --sae ID'")
    saes = sorted(p.stem for p in root.glob("*.crt")
                  if p.stem.lower() not in _RESERVED and (root / f"{p.stem}.key").is_file())
    return TestPKI(root, tuple(saes))
