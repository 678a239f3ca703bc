"""Cipher suites and authentication modes, by wire code and by the names users type."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["Suite", "SUITES", "suites_for_kem", "AUTH_PSK", "AUTH_SIG_CODES", "auth_name",
           "QKD_POLICIES", "QKD_POLICY_CODES"]


@dataclass(frozen=True)
class Suite:
    """What the handshake mixes and how."""

    code: int
    """Wire code (u16)."""
    name: str
    """Name shown to users and in --json."""
    kem: str
    """Post-quantum KEM, e.g. ``ml-kem-768``."""
    key_agreement: str
    """Classical key agreement, ``x25519``."""
    hash: str
    """CatKDF hash and transcript hash: ``sha256`` or ``sha384``."""
    kdf: str
    """CatKDF KDF: ``hkdf`` or ``hmac`` (ETSI TS 103 744 §8.2)."""

    @property
    def hash_len(self) -> int:
        return 32 if self.hash == "sha256" else 48


SUITES: dict[int, Suite] = {
    s.code: s
    for s in (
        Suite(0x0001, "x25519+ml-kem-768/hkdf-sha256", "ml-kem-768", "x25519", "sha256", "hkdf"),
        Suite(0x0002, "x25519+ml-kem-1024/hkdf-sha384", "ml-kem-1024", "x25519", "sha384", "hkdf"),
        Suite(0x0003, "x25519+ml-kem-768/hmac-sha256", "ml-kem-768", "x25519", "sha256", "hmac"),
        Suite(0x0004, "x25519+ml-kem-1024/hmac-sha384", "ml-kem-1024", "x25519", "sha384", "hmac"),
    )
}


def suites_for_kem(kem: str) -> tuple[int, ...]:
    """The suites offered for ``--kem``, preferred first (HKDF before the HMAC one-step KDF)."""
    codes = tuple(s.code for s in SUITES.values() if s.kem == kem)
    if not codes:
        kems = sorted({s.kem for s in SUITES.values()})
        raise ConfigError(f"unknown KEM {kem!r}; choose one of: {', '.join(kems)}")
    return codes


#: authentication modes on the wire (u8)
AUTH_SIG_CODES: dict[str, int] = {"ml-dsa-44": 0x01, "ml-dsa-65": 0x02, "ml-dsa-87": 0x03}
AUTH_PSK = 0x10
_AUTH_NAMES = {v: k for k, v in AUTH_SIG_CODES.items()} | {AUTH_PSK: "psk"}


def auth_name(code: int) -> str:
    name = _AUTH_NAMES.get(code)
    return name if name is not None else f"unknown-auth-0x{code:02x}"


QKD_POLICIES = ("off", "preferred", "required")
QKD_POLICY_CODES = {name: i for i, name in enumerate(QKD_POLICIES)}
