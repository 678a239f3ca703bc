"""The primitive interfaces every backend implements.

Algorithms are named as users type them: ``x25519``, ``ml-kem-768``, ``ml-kem-1024``,
``ml-dsa-44``, ``ml-dsa-65``, ``ml-dsa-87``.  A *backend* (``cryptography`` or ``liboqs``)
supplies implementations; wire formats (public keys, ciphertexts, signatures) are the
FIPS 203/204 byte strings, identical in every backend, so two processes on different
backends interoperate.

Private keys are held as opaque objects returned by the scheme; identity keys are stored
on disk as their FIPS 204 32-byte seed (xi), the form every backend can load.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KEM", "KeyAgreement", "SignatureScheme",
    "KEM_SIZES", "SIG_SIZES", "KEM_NAMES", "SIG_NAMES",
    "Backend",
]


@dataclass(frozen=True)
class KEMSizes:
    encapsulation_key: int
    decapsulation_key_seed: int
    ciphertext: int
    shared_secret: int


@dataclass(frozen=True)
class SigSizes:
    public_key: int
    seed: int
    signature: int


#: FIPS 203 Table 3 sizes; the seed is d || z (64 bytes).
KEM_SIZES = {
    "ml-kem-768": KEMSizes(1184, 64, 1088, 32),
    "ml-kem-1024": KEMSizes(1568, 64, 1568, 32),
}
#: FIPS 204 Table 2 sizes; the seed is xi (32 bytes).
SIG_SIZES = {
    "ml-dsa-44": SigSizes(1312, 32, 2420),
    "ml-dsa-65": SigSizes(1952, 32, 3309),
    "ml-dsa-87": SigSizes(2592, 32, 4627),
}
KEM_NAMES = tuple(KEM_SIZES)
SIG_NAMES = tuple(SIG_SIZES)


class KEM(abc.ABC):
    """A key-encapsulation mechanism (FIPS 203 ML-KEM)."""

    name: str
    sizes: KEMSizes

    @abc.abstractmethod
    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        """Derive a key pair from a 64-byte seed (d || z); return (decapsulation handle, encapsulation key)."""

    @abc.abstractmethod
    def encapsulate(self, encapsulation_key: bytes) -> tuple[bytes, bytes]:
        """Return (shared_secret, ciphertext) -- pyca order.  ValueError on a malformed key."""

    @abc.abstractmethod
    def decapsulate(self, private: Any, ciphertext: bytes) -> bytes:
        """Return the shared secret.  ValueError on a ciphertext of the wrong length."""


class KeyAgreement(abc.ABC):
    """A Diffie-Hellman style key agreement (X25519)."""

    name: str
    public_key_size: int
    private_key_size: int

    @abc.abstractmethod
    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        """Derive a key pair from a private-key-sized seed; return (private handle, public key)."""

    @abc.abstractmethod
    def exchange(self, private: Any, peer_public: bytes) -> bytes:
        """Return the shared secret.  ValueError on a bad public key or an all-zero result."""


class SignatureScheme(abc.ABC):
    """A signature scheme (FIPS 204 ML-DSA), used with a context string (FIPS 204 §5.2)."""

    name: str
    sizes: SigSizes

    @abc.abstractmethod
    def from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        """Load a signing key from its 32-byte seed; return (signing handle, public key)."""

    @abc.abstractmethod
    def sign(self, private: Any, message: bytes, context: bytes) -> bytes:
        """Sign ``message`` under ``context`` (at most 255 bytes)."""

    @abc.abstractmethod
    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """Return True for a valid signature, False otherwise (wrong lengths included); never raise on bad input."""


class Backend(abc.ABC):
    """A source of primitive implementations.

    A backend is registered under the entry-point group ``hybridkex.backends`` as its class;
    the class is constructed once per process, after :meth:`probe` said it is usable.
    """

    name: str

    @classmethod
    def probe(cls) -> str | None:
        """None when this backend is usable here, else a sentence saying why not and what to do."""
        return None

    def describe(self) -> str:
        """What implements the primitives, with versions (for reports: no paths, nothing secret)."""
        return self.name

    @abc.abstractmethod
    def kem(self, name: str) -> KEM: ...

    @abc.abstractmethod
    def key_agreement(self, name: str) -> KeyAgreement: ...

    @abc.abstractmethod
    def signature(self, name: str) -> SignatureScheme: ...
