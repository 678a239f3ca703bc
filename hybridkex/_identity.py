"""Long-term ML-DSA identities: key files and fingerprints.

``id.key`` is a PKCS#8 PEM holding the FIPS 204 seed (the form OpenSSL 3.5+ and pyca
write), created 0600; ``id.pub`` is a SubjectPublicKeyInfo PEM.  A fingerprint is
``SHA256:`` + unpadded base64 of SHA-256 over the SPKI DER, like OpenSSH's, so
``openssl pkey -pubin -in id.pub -outform DER | sha256sum`` names the same key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from ._errors import ConfigError
from ._files import atomic_write, read_secret_file

__all__ = ["Identity", "PublicIdentity", "generate_identity", "load_identity", "load_public_identity",
           "fingerprint", "write_identity"]

_PRIVATE_TYPES: dict[Any, str] = {
    mldsa.MLDSA44PrivateKey: "ml-dsa-44", mldsa.MLDSA65PrivateKey: "ml-dsa-65", mldsa.MLDSA87PrivateKey: "ml-dsa-87",
}
_PUBLIC_TYPES: dict[Any, str] = {
    mldsa.MLDSA44PublicKey: "ml-dsa-44", mldsa.MLDSA65PublicKey: "ml-dsa-65", mldsa.MLDSA87PublicKey: "ml-dsa-87",
}
_PRIVATE_BY_NAME: dict[str, Any] = {v: k for k, v in _PRIVATE_TYPES.items()}
_PUBLIC_BY_NAME: dict[str, Any] = {v: k for k, v in _PUBLIC_TYPES.items()}


def _public_object(alg: str, raw: bytes) -> Any:
    return _PUBLIC_BY_NAME[alg].from_public_bytes(raw)


@functools.lru_cache(maxsize=1024)
@functools.lru_cache(maxsize=1024)
def fingerprint(alg: str, public_key: bytes) -> str:
    """``SHA256:<base64>`` of the SubjectPublicKeyInfo DER of an ML-DSA public key."""
    der = _public_object(alg, public_key).public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class PublicIdentity:
    """A peer's public ML-DSA key, as pinned with ``--peer``."""

    alg: str
    public_key: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.alg, self.public_key)


@dataclass(frozen=True)
class Identity:
    """Our ML-DSA identity: algorithm, seed (secret) and public key."""

    alg: str
    seed: bytes = field(repr=False)
    public_key: bytes

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.alg, self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.alg, self.public_key)


def generate_identity(alg: str = "ml-dsa-65") -> Identity:
    if alg not in _PRIVATE_BY_NAME:
        raise ConfigError(f"unknown identity algorithm {alg!r}; choose one of: {', '.join(_PRIVATE_BY_NAME)}")
    private = _PRIVATE_BY_NAME[alg].generate()
    return Identity(alg, private.private_bytes_raw(), private.public_key().public_bytes_raw())


def write_identity(identity: Identity, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/id.key`` (0600) and ``DIR/id.pub`` (0644); refuse to overwrite unless ``force``."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, pub_path = d / "id.key", d / "id.pub"
    if not force:
        for p in (key_path, pub_path):
            if p.exists():
                raise ConfigError(f"{p} already exists; pass --force to replace this identity")
    private = _PRIVATE_BY_NAME[identity.alg].from_seed_bytes(identity.seed)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, pem, mode=0o600)
    atomic_write(pub_path, pub, mode=0o644)
    return key_path, pub_path


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load ``id.key``; refuses files that group or others can read."""
    data = read_secret_file(path, "identity key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM private key; create one with 'hybridkex keygen DIR'") from None
    alg = next((name for cls, name in _PRIVATE_TYPES.items() if isinstance(private, cls)), None)
    if alg is None:
        raise ConfigError(f"{path} holds a {type(private).__name__}, not an ML-DSA key; "
                          "create one with 'hybridkex keygen DIR'")
    seed = private.private_bytes_raw()  # type: ignore[union-attr]
    return Identity(alg, seed, private.public_key().public_bytes_raw())  # type: ignore[union-attr]


def load_public_identity(path: str | os.PathLike[str]) -> PublicIdentity:
    """Load a peer's ``id.pub`` (SPKI PEM)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"peer public key {path} does not exist; copy the peer's id.pub here") from None
    except OSError as exc:
        raise ConfigError(f"cannot read peer public key {path}: {exc.strerror}") from None
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM public key; give the peer's id.pub") from None
    alg = next((name for cls, name in _PUBLIC_TYPES.items() if isinstance(public, cls)), None)
    if alg is None:
        raise ConfigError(f"{path} holds a {type(public).__name__}, not an ML-DSA public key")
    return PublicIdentity(alg, public.public_bytes_raw())  # type: ignore[union-attr]
