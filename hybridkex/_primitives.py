"""Primitive interfaces and the registry that picks an implementation by name.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import BackendUnavailable

__all__ = [
    "KEM", "KeyAgreement", "SignatureScheme",
    "KEM_SIZES", "SIG_SIZES", "KEM_NAMES", "SIG_NAMES",
    "Backend", "get_backend", "available_backends", "register_backend",
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
    """A source of primitive implementations."""

    name: str

    @abc.abstractmethod
    def kem(self, name: str) -> KEM: ...

    @abc.abstractmethod
    def key_agreement(self, name: str) -> KeyAgreement: ...

    @abc.abstractmethod
    def signature(self, name: str) -> SignatureScheme: ...


# name -> (probe returning None when usable or a reason string, factory)
_BACKENDS: dict[str, tuple[Callable[[], str | None], Callable[[], Backend]]] = {}
_CACHE: dict[str, Backend] = {}
#: order in which ``auto`` tries backends
AUTO_ORDER = ("liboqs", "cryptography")


def register_backend(name: str, probe: Callable[[], str | None], factory: Callable[[], Backend]) -> None:
    _BACKENDS[name] = (probe, factory)
    _PROBED.pop(name, None)
    _CACHE.pop(name, None)


def _load_builtin() -> None:
    if _BACKENDS:
        return
    from . import _backend_cryptography, _backend_liboqs

    register_backend("cryptography", _backend_cryptography.probe, _backend_cryptography.CryptographyBackend)
    register_backend("liboqs", _backend_liboqs.probe, _backend_liboqs.LiboqsBackend)


_PROBED: dict[str, str | None] = {}


def _probe(name: str) -> str | None:
    """A backend's probe result, computed once per process (probes build keys; that is not free)."""
    if name not in _PROBED:
        _PROBED[name] = _BACKENDS[name][0]()
    return _PROBED[name]


def available_backends() -> dict[str, str | None]:
    """Map each known backend to None (usable) or the reason it is not."""
    _load_builtin()
    return {name: _probe(name) for name in _BACKENDS}


def get_backend(name: str = "auto") -> Backend:
    """Return a backend by name: ``auto``, ``cryptography`` or ``liboqs``."""
    _load_builtin()
    if name == "auto":
        for candidate in AUTO_ORDER:
            if candidate in _BACKENDS and _probe(candidate) is None:
                return get_backend(candidate)
        raise BackendUnavailable("no crypto backend is usable; install 'cryptography>=48'")
    if name not in _BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: auto, {', '.join(sorted(_BACKENDS))}")
    if name not in _CACHE:
        factory = _BACKENDS[name][1]
        reason = _probe(name)
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} is not usable here: {reason}")
        _CACHE[name] = factory()
    return _CACHE[name]
