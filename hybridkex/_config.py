"""User-level exchange settings -> a handshake config and a QKD key source.

The CLI's exchange flags, the WireGuard rotator's TOML and the TLS wrapper's keyword
arguments all land in :class:`ExchangeSettings`, so every front end validates and builds
the same way.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._auth import MIN_PSK_BYTES, Authenticator, PSKAuthenticator, SignatureAuthenticator
from ._errors import ConfigError
from ._files import read_secret_file
from ._handshake import HandshakeConfig, HandshakeResult
from ._identity import load_identity, load_public_identity
from ._primitives import get_backend
from ._ratchet import AuthRatchet
from ._suites import suites_for_kem
from .qkd._source import QKDKeySource

__all__ = ["ExchangeSettings", "load_psk_file", "QKD_KINDS"]

QKD_KINDS = ("off", "sim", "etsi014")


def load_psk_file(path: str | os.PathLike[str]) -> bytes:
    """Read a PSK file: base64 (as ``wg genpsk`` and ``hybridkex psk init`` write), hex, or raw bytes."""
    data = read_secret_file(path, "pre-shared key file", max_size=4096)
    text = data.strip()
    candidates: list[bytes] = []
    # Hex first: hex digits are also base64 characters, the converse almost never holds.
    try:
        candidates.append(bytes.fromhex(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        pass
    for key in candidates:
        if len(key) >= MIN_PSK_BYTES:
            return key
    if len(data) >= MIN_PSK_BYTES:
        return data
    raise ConfigError(f"pre-shared key file {path} holds fewer than {MIN_PSK_BYTES} key bytes; "
                      "create one with 'hybridkex psk init FILE'")


@dataclass(frozen=True)
class ExchangeSettings:
    """What a user configures for one exchange (flags of ``hybridkex exchange``)."""

    identity: Path | None = None
    """Our ML-DSA identity key (``id.key``), for signature authentication."""
    peers: tuple[Path, ...] = ()
    """Pinned peer public keys (``id.pub``); the peer must be one of them."""
    psk_file: Path | None = None
    """Pre-shared key file: selects PSK authentication instead of ML-DSA."""
    psk_ratchet: Path | None = None
    """State file of the QKD-fed authentication ratchet (PSK mode); bootstraps from ``psk_file``."""
    name: str | None = None
    """This side's name (PSK mode: required; bound into the MAC keys and the key, so a PSK holder
    cannot be connected to itself).  ML-DSA mode: the public key is the name."""
    peer_name: str | None = None
    """The expected peer's name (PSK mode: required, must differ from ``name``)."""
    kem: str = "ml-kem-768"
    """Post-quantum KEM: ``ml-kem-768`` or ``ml-kem-1024``."""
    backend: str = "auto"
    """Crypto backend: ``auto``, ``cryptography`` or ``liboqs``."""
    qkd: str = "off"
    """QKD key source: ``off``, ``sim`` (simulated link) or ``etsi014`` (a KME)."""
    qkd_link: Path | None = None
    """Simulated link file, for ``qkd='sim'``."""
    qkd_policy: str | None = None
    """``required``, ``preferred`` or ``off``; default ``required`` when a QKD source is set."""
    kme_url: str | None = None
    kme_ca: Path | None = None
    sae_cert: Path | None = None
    sae_key: Path | None = None
    sae_id: str | None = None
    peer_sae_id: str | None = None
    kme_insecure_http: bool = False
    """Allow plain http:// to the KME (simulators only)."""
    timeout: float = 30.0
    """Seconds for the whole handshake."""
    extra: dict[str, object] = field(default_factory=dict, compare=False)
    """Options for QKD sources added later (passed through to the source factory)."""

    @property
    def effective_qkd_policy(self) -> str:
        if self.qkd_policy is not None:
            return self.qkd_policy
        return "off" if self.qkd == "off" else "required"

    def validate(self) -> None:
        if self.qkd not in QKD_KINDS:
            raise ConfigError(f"unknown QKD source {self.qkd!r}; choose one of: {', '.join(QKD_KINDS)}")
        if self.qkd == "off" and self.effective_qkd_policy != "off":
            raise ConfigError(f"--qkd-policy {self.effective_qkd_policy} needs a QKD source: add --qkd sim or "
                              "--qkd etsi014")
        psk_mode = self.psk_file is not None or self.psk_ratchet is not None
        if psk_mode and (self.identity is not None or self.peers):
            raise ConfigError("choose one authentication mode: --psk-file, or --identity with --peer")
        if not psk_mode:
            if self.identity is None:
                raise ConfigError("no authentication configured: give --identity DIR/id.key and --peer PEER.pub, "
                                  "or --psk-file FILE")
            if not self.peers:
                raise ConfigError("no peer pinned: give the peer's public key with --peer PEER.pub")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")

    def authenticator(self) -> Authenticator:
        self.validate()
        if self.psk_ratchet is not None:
            return self.ratchet().authenticator()
        if self.psk_file is not None:
            return PSKAuthenticator([load_psk_file(self.psk_file)])
        assert self.identity is not None
        return SignatureAuthenticator(load_identity(self.identity),
                                      [load_public_identity(p) for p in self.peers], get_backend(self.backend))

    def ratchet(self) -> AuthRatchet:
        assert self.psk_ratchet is not None
        bootstrap = None
        if self.psk_file is not None and not self.psk_ratchet.exists():
            bootstrap = load_psk_file(self.psk_file)
        return AuthRatchet(self.psk_ratchet, bootstrap)

    def after_success(self, result: HandshakeResult) -> None:
        """Bookkeeping once both sides confirmed the key: advance the authentication ratchet."""
        if self.psk_ratchet is not None:
            self.ratchet().advance(result)

    def handshake_config(self, *, context: bytes = b"", authenticator: Authenticator | None = None) -> HandshakeConfig:
        """Build the handshake config; loads and checks keys (ConfigError on any problem)."""
        self.validate()
        return HandshakeConfig(
            authenticator=authenticator or self.authenticator(),
            suites=suites_for_kem(self.kem),
            qkd_policy=self.effective_qkd_policy,
            backend=get_backend(self.backend),
            context=context,
            timeout=self.timeout,
        )

    def open_qkd_source(self) -> QKDKeySource | None:
        """Open the configured QKD key source, or None with ``--qkd off`` / policy ``off``."""
        self.validate()
        if self.qkd == "off" or self.effective_qkd_policy == "off":
            return None
        from .qkd._registry import open_source

        return open_source(self)
