"""User-level exchange settings -> a handshake config and a QKD key source.

The CLI's exchange flags, the WireGuard rotator's TOML and the TLS wrapper's keyword
arguments all land in :class:`ExchangeSettings`, so every front end validates and builds
the same way.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigError, HybridKexError, QKDSourceMissing
from ._identity import load_identity, load_public_identity
from ._ratchet import AuthRatchet, RatchetState
from .backends import get_backend
from .io._files import read_secret_file
from .protocol._auth import MIN_PSK_BYTES, Authenticator, PSKAuthenticator, SignatureAuthenticator
from .protocol._handshake import HandshakeConfig, HandshakeResult
from .protocol._qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource
from .protocol._suites import suites_for_kem
from .qkd._journal import DEFAULT_RETENTION_DAYS, JournaledSource, KeyIdJournal, default_journal_path
from .qkd._registry import check_source, open_source, source_names

__all__ = ["ExchangeSettings", "load_psk_file", "qkd_kinds"]


def qkd_kinds() -> list[str]:
    """What ``--qkd`` accepts: ``off`` and every installed QKD key source."""
    return ["off", *source_names()]


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
    """QKD key source: ``off`` or an installed source, e.g. ``etsi014`` (a KME) or ``sim`` (simulated link)."""
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
    peer_sae_map: tuple[tuple[str, str], ...] = ()
    """Responder with several pinned peers: (peer fingerprint, its SAE ID) pairs (``--peer-sae-map FPR=SAE``)."""
    kme_insecure_http: bool = False
    """Allow plain http:// to the KME (simulators only)."""
    qkd_journal: Path | None = None
    """File of the QKD key_IDs this side used (default: ``$HYBRIDKEX_STATE_DIR/qkd-key-ids``)."""
    qkd_journal_days: float = DEFAULT_RETENTION_DAYS
    """Days a used key_ID stays in the journal (a KME that hands it out again within them is caught)."""
    timeout: float = 30.0
    """Seconds for the whole handshake."""

    @property
    def effective_qkd_policy(self) -> str:
        if self.qkd_policy is not None:
            return self.qkd_policy
        return "off" if self.qkd == "off" else "required"

    def validate(self) -> None:
        if self.qkd == "off":
            if self.effective_qkd_policy != "off":
                choices = " or ".join(f"--qkd {name}" for name in source_names())
                raise ConfigError(f"--qkd-policy {self.effective_qkd_policy} needs a QKD source: add {choices}")
        else:
            check_source(self)
        psk_mode = self.psk_file is not None or self.psk_ratchet is not None
        if psk_mode and (self.identity is not None or self.peers):
            raise ConfigError("choose one authentication mode: --psk-file, or --identity with --peer")
        if psk_mode and (not self.name or not self.peer_name):
            raise ConfigError("PSK authentication needs --name (this side) and --peer-name (the peer, whose --name "
                              "it is); both are bound into the exchange so a node cannot be connected to itself")
        if psk_mode and self.name == self.peer_name:
            raise ConfigError(f"--peer-name is this side's own --name {self.name!r}; give the peer's name")
        if not psk_mode:
            if self.identity is None:
                raise ConfigError("no authentication configured: give --identity DIR/id.key and --peer PEER.pub, "
                                  "or --psk-file FILE")
            if not self.peers:
                raise ConfigError("no peer pinned: give the peer's public key with --peer PEER.pub")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")
        if not self.qkd_journal_days > 0:
            raise ConfigError("--qkd-journal-days (qkd_journal_days) must be a positive number of days")

    def authenticator(self) -> Authenticator:
        self.validate()
        if self.psk_ratchet is not None:
            return self.ratchet().authenticator()
        if self.psk_file is not None:
            return PSKAuthenticator([load_psk_file(self.psk_file)], name=self.name, peer_name=self.peer_name)
        assert self.identity is not None
        return SignatureAuthenticator(load_identity(self.identity),
                                      [load_public_identity(p) for p in self.peers], get_backend(self.backend))

    def ratchet(self) -> AuthRatchet:
        assert self.psk_ratchet is not None
        return AuthRatchet(self.psk_ratchet, name=self.name, peer_name=self.peer_name)

    def after_success(self, result: HandshakeResult) -> RatchetState | None:
        """Bookkeeping once the peer proved the session: advance the authentication ratchet."""
        if self.psk_ratchet is not None:
            return self.ratchet().advance(result)
        return None

    def peer_sae_ids(self) -> dict[str, str]:
        return dict(self.peer_sae_map)

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
            sae_id=self.sae_id or "",
            peer_sae_id=self.peer_sae_id or "",
            peer_sae_ids=self.peer_sae_ids(),
        )

    def open_qkd_source(self) -> QKDKeySource | None:
        """Open the configured QKD key source, or None with ``--qkd off`` / policy ``off``.

        Every key_ID it delivers goes through this side's key_ID journal.  With policy
        ``preferred`` a source that cannot be opened (missing or unreadable link file, say) is
        replaced by one that fails each request with that reason, so the exchange falls back to
        ML-KEM and X25519 and says why; with ``required`` the error is raised here.
        """
        self.validate()
        if self.qkd == "off" or self.effective_qkd_policy == "off":
            return None
        try:
            source = open_source(self)
        except HybridKexError as exc:
            if self.effective_qkd_policy != "preferred":
                raise
            source = _BrokenSource(self.qkd, QKDSourceMissing(f"QKD source {self.qkd} cannot be opened: {exc}"))
        return JournaledSource(source, KeyIdJournal.for_path(self.qkd_journal or default_journal_path(),
                                                             self.qkd_journal_days))


class _BrokenSource(QKDKeySource):
    """A source that could not be opened: every request fails with why (policy ``preferred``)."""

    def __init__(self, kind: str, error: QKDSourceMissing) -> None:
        self.kind = kind
        self.error = error

    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        raise self.error

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        raise self.error
