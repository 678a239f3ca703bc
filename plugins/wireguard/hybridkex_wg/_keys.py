"""WireGuard public keys: parsing, ordering and safe display."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from hybridkex import ConfigError

__all__ = ["WG_KEY_BYTES", "parse_wg_key", "wg_key_text", "PeerRef", "default_initiator"]

WG_KEY_BYTES = 32


def parse_wg_key(text: str, what: str = "WireGuard public key") -> bytes:
    """Decode a base64 WireGuard key (as ``wg pubkey`` prints it) into 32 bytes."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string of 44 base64 characters")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} {text!r} is not valid base64; copy it from 'wg show IF public-key'") from None
    if len(raw) != WG_KEY_BYTES:
        raise ConfigError(f"{what} {text!r} decodes to {len(raw)} bytes; a WireGuard key has {WG_KEY_BYTES}")
    return raw


def wg_key_text(key: bytes) -> str:
    """The base64 form WireGuard tools print."""
    return base64.b64encode(key).decode("ascii")


def default_initiator(local_public: bytes, peer_public: bytes) -> bool:
    """The pairing rule for ``role = "auto"``: the lexicographically smaller public key initiates.

    Both ends compute the same answer from public data, so exactly one of them connects.
    """
    if local_public == peer_public:
        raise ConfigError("a peer's WireGuard public key equals the interface's own key")
    return local_public < peer_public


@dataclass(frozen=True)
class PeerRef:
    """One WireGuard peer of one local interface, as sinks and logs see it (never secret)."""

    interface: str
    """Local interface name, e.g. ``wg0``."""
    public_key: bytes
    """The peer's WireGuard public key (32 bytes)."""
    name: str = ""
    """Operator's label for logs (defaults to the start of the public key)."""

    @property
    def public_key_text(self) -> str:
        return wg_key_text(self.public_key)

    @property
    def file_safe_key(self) -> str:
        """The public key in URL-safe base64 without padding, usable in a file name."""
        return base64.urlsafe_b64encode(self.public_key).decode("ascii").rstrip("=")

    @property
    def label(self) -> str:
        """Short human name for log lines: ``wg0/site-b`` or ``wg0/AbCdEfGh…``."""
        return f"{self.interface}/{self.name or self.public_key_text[:8] + '…'}"
