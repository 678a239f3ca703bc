"""Long-term ML-DSA identities and their fingerprints (key files are read and written by
:mod:`hybridkex._identity`).

A fingerprint is
``SHA256:`` + unpadded base64 of SHA-256 over the SPKI DER, like OpenSSH's, so
``openssl pkey -pubin -in id.pub -outform DER | sha256sum`` names the same key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from .._errors import ConfigError

__all__ = ["Identity", "PublicIdentity", "generate_identity", "fingerprint", "PRIVATE_TYPES", "PUBLIC_TYPES",
           "PRIVATE_BY_NAME"]

PRIVATE_TYPES: dict[Any, str] = {
    mldsa.MLDSA44PrivateKey: "ml-dsa-44", mldsa.MLDSA65PrivateKey: "ml-dsa-65", mldsa.MLDSA87PrivateKey: "ml-dsa-87",
}
PUBLIC_TYPES: dict[Any, str] = {
    mldsa.MLDSA44PublicKey: "ml-dsa-44", mldsa.MLDSA65PublicKey: "ml-dsa-65", mldsa.MLDSA87PublicKey: "ml-dsa-87",
}
PRIVATE_BY_NAME: dict[str, Any] = {v: k for k, v in PRIVATE_TYPES.items()}
_PUBLIC_BY_NAME: dict[str, Any] = {v: k for k, v in PUBLIC_TYPES.items()}


def _public_object(alg: str, raw: bytes) -> Any:
    return _PUBLIC_BY_NAME[alg].from_public_bytes(raw)


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
    if alg not in PRIVATE_BY_NAME:
        raise ConfigError(f"unknown identity algorithm {alg!r}; choose one of: {', '.join(PRIVATE_BY_NAME)}")
    private = PRIVATE_BY_NAME[alg].generate()
    return Identity(alg, private.private_bytes_raw(), private.public_key().public_bytes_raw())
