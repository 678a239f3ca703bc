"""Primitives from pyca/cryptography (>= 48): ML-KEM, ML-DSA and X25519 in one wheel."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519

from .._errors import BackendUnavailable
from ._interface import KEM, KEM_SIZES, SIG_SIZES, Backend, KeyAgreement, SignatureScheme

__all__ = ["CryptographyBackend", "probe"]

_KEM_CLASSES: dict[str, tuple[Any, Any]] = {
    "ml-kem-768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    "ml-kem-1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}
_SIG_CLASSES: dict[str, tuple[Any, Any]] = {
    "ml-dsa-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
    "ml-dsa-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
    "ml-dsa-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
}


def probe() -> str | None:
    try:
        mlkem.MLKEM768PrivateKey.generate()
        mldsa.MLDSA44PrivateKey.generate()
    except Exception as exc:  # pragma: no cover - depends on the installed wheel
        return f"cryptography lacks ML-KEM/ML-DSA ({type(exc).__name__}); install cryptography>=48"
    return None


def _need(data: bytes, size: int, what: str) -> None:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes")
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(data)}")


class _CryptographyKEM(KEM):
    def __init__(self, name: str) -> None:
        self.name = name
        self.sizes = KEM_SIZES[name]
        self._priv_cls, self._pub_cls = _KEM_CLASSES[name]

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        _need(seed, self.sizes.decapsulation_key_seed, f"{self.name} seed")
        private = self._priv_cls.from_seed_bytes(bytes(seed))
        return private, private.public_key().public_bytes_raw()

    def encapsulate(self, encapsulation_key: bytes) -> tuple[bytes, bytes]:
        _need(encapsulation_key, self.sizes.encapsulation_key, f"{self.name} encapsulation key")
        public = self._pub_cls.from_public_bytes(bytes(encapsulation_key))
        shared_secret, ciphertext = public.encapsulate()
        return shared_secret, ciphertext

    def decapsulate(self, private: Any, ciphertext: bytes) -> bytes:
        _need(ciphertext, self.sizes.ciphertext, f"{self.name} ciphertext")
        return bytes(private.decapsulate(bytes(ciphertext)))


class _CryptographyX25519(KeyAgreement):
    name = "x25519"
    public_key_size = 32
    private_key_size = 32

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        _need(seed, 32, "x25519 seed")
        private = x25519.X25519PrivateKey.from_private_bytes(bytes(seed))
        return private, private.public_key().public_bytes_raw()

    def exchange(self, private: Any, peer_public: bytes) -> bytes:
        _need(peer_public, 32, "x25519 public key")
        # cryptography raises ValueError for an all-zero shared secret (RFC 7748 §6.1).
        return bytes(private.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(peer_public))))


class _CryptographyMLDSA(SignatureScheme):
    def __init__(self, name: str) -> None:
        self.name = name
        self.sizes = SIG_SIZES[name]
        self._priv_cls, self._pub_cls = _SIG_CLASSES[name]

    def from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        _need(seed, self.sizes.seed, f"{self.name} seed")
        private = self._priv_cls.from_seed_bytes(bytes(seed))
        return private, private.public_key().public_bytes_raw()

    def sign(self, private: Any, message: bytes, context: bytes) -> bytes:
        if len(context) > 255:
            raise ValueError("ML-DSA context must be at most 255 bytes")
        return bytes(private.sign(bytes(message), bytes(context)))

    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        if len(public_key) != self.sizes.public_key or len(signature) != self.sizes.signature or len(context) > 255:
            return False
        try:
            self._pub_cls.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message), bytes(context))
        except (InvalidSignature, ValueError):
            return False
        return True


class CryptographyBackend(Backend):
    name = "cryptography"

    @classmethod
    def probe(cls) -> str | None:
        return probe()

    def describe(self) -> str:
        from cryptography import __version__
        from cryptography.hazmat.backends.openssl import backend

        return f"cryptography {__version__} on {backend.openssl_version_text()}"

    def kem(self, name: str) -> KEM:
        if name not in _KEM_CLASSES:
            raise BackendUnavailable(f"cryptography backend has no KEM {name!r}; choose one of {sorted(_KEM_CLASSES)}")
        return _CryptographyKEM(name)

    def key_agreement(self, name: str) -> KeyAgreement:
        if name != "x25519":
            raise BackendUnavailable(f"cryptography backend has no key agreement {name!r}; use 'x25519'")
        return _CryptographyX25519()

    def signature(self, name: str) -> SignatureScheme:
        if name not in _SIG_CLASSES:
            raise BackendUnavailable(
                f"cryptography backend has no signature scheme {name!r}; choose one of {sorted(_SIG_CLASSES)}")
        return _CryptographyMLDSA(name)
