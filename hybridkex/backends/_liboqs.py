"""Primitives from liboqs through liboqs-python (the optional ``oqs`` extra).

liboqs is faster than ``cryptography`` for ML-DSA and ML-KEM key generation, and its
wire formats (encapsulation keys, ciphertexts, public keys, signatures) are the same
FIPS 203/204 byte strings, so a peer on either backend interoperates.  Three things
about liboqs-python shape this module:

* ``import oqs`` without the shared library counts down 5 s, runs ``git clone`` and
  ``cmake``, and raises ``SystemExit``.  :func:`probe` therefore looks for the library
  in the places liboqs-python searches, loads it, and only then imports ``oqs``.
* liboqs-python copies every input into a buffer of the algorithm's nominal length,
  zero-padding short inputs and truncating long ones.  Every length is checked here
  before liboqs sees the bytes.
* liboqs-python logs to standard output at import time; hybridkex may write keys to
  standard output, so that handler is removed and records go to the root logger.

Seeds: ML-KEM key pairs come from the 64-byte seed d || z through the public liboqs
function ``OQS_KEM_keypair_derand``.  liboqs has no public "ML-DSA key pair from seed"
function; its ML-DSA code (mldsa-native) exports ``keypair_internal`` (FIPS 204
Algorithm 6, ML-DSA.KeyGen_internal) under a namespaced symbol, which is called through
ctypes on the library liboqs-python loaded.  Each derivation is checked once per
algorithm against ``cryptography`` on a fixed seed; where the symbol is missing or the
check fails, that step (and the signing or decapsulation with the derived key) falls
back to ``cryptography`` rather than producing a different key.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .._errors import BackendUnavailable
from ._cryptography import CryptographyBackend
from ._interface import KEM, KEM_NAMES, KEM_SIZES, SIG_NAMES, SIG_SIZES, Backend, KeyAgreement, SignatureScheme

__all__ = ["LiboqsBackend", "probe"]

#: hybridkex name -> liboqs mechanism name
_OQS_NAMES = {
    "ml-kem-768": "ML-KEM-768",
    "ml-kem-1024": "ML-KEM-1024",
    "ml-dsa-44": "ML-DSA-44",
    "ml-dsa-65": "ML-DSA-65",
    "ml-dsa-87": "ML-DSA-87",
}
#: FIPS 204 Table 2 private key sizes (liboqs keeps the expanded key, not the seed).
_MLDSA_SECRET_KEY_SIZES = {"ml-dsa-44": 2560, "ml-dsa-65": 4032, "ml-dsa-87": 4896}
#: mldsa-native symbol for ML-DSA.KeyGen_internal(xi); the portable C build is always
#: compiled when the algorithm is enabled, unlike the AVX2 one.
_MLDSA_KEYGEN_SYMBOL = "PQCP_MLDSA_NATIVE_MLDSA{level}_C_keypair_internal"
#: Seed for the one-time derivation check against cryptography (any fixed value works).
_SELF_TEST_SEED = hashlib.sha512(b"hybridkex liboqs seed derivation check").digest()
_MAX_CONTEXT = 255  # FIPS 204 §5.2: ctx is at most 255 bytes

_oqs: Any = None  # the liboqs-python module once imported; untyped
_probe_result: list[str | None] = []  # memo: [] until probed, then [reason or None]


# --------------------------------------------------------------------------- discovery


def _install_root() -> Path:
    install = os.environ.get("OQS_INSTALL_PATH")
    if install is not None:  # liboqs-python tests presence, not emptiness
        return Path(install)
    try:
        return Path.home() / "_oqs"
    except RuntimeError:  # no home directory can be determined
        return Path("_oqs")


def _library_candidates() -> list[str]:
    """Paths and names liboqs-python tries when it loads liboqs (see oqs.oqs._load_liboqs).

    OQS_INSTALL_PATH replaces ~/_oqs rather than adding to it, exactly as liboqs-python does.
    """
    candidates: list[str] = []
    for name in ("liboqs", "oqs"):
        try:
            found = ctypes.util.find_library(name)
        except Exception:  # find_library runs external tools that can fail oddly
            found = None
        if found:
            candidates.append(found)
    root = _install_root()
    system = platform.system()
    if system == "Windows":
        candidates += [str(root / "bin" / "oqs.dll"), str(root / "bin" / "liboqs.dll")]
    elif system == "Darwin":
        candidates += [str(root / sub / "liboqs.dylib") for sub in ("lib", "lib64")]
    else:
        candidates += [str(root / sub / "liboqs.so") for sub in ("lib", "lib64")]
    return candidates


def _find_loadable_library() -> str | None:
    for candidate in _library_candidates():
        if os.sep in candidate and not os.path.exists(candidate):
            continue
        try:
            ctypes.CDLL(candidate)
        except OSError:
            continue
        return candidate
    return None


def _import_oqs() -> Any:
    """Import liboqs-python without letting it print to standard output."""
    oqs_logger = logging.getLogger("oqs.oqs")
    handlers_before = list(oqs_logger.handlers)
    was_disabled = oqs_logger.disabled
    oqs_logger.disabled = True
    try:
        module = importlib.import_module("oqs")
    finally:
        for handler in list(oqs_logger.handlers):
            if handler not in handlers_before:
                oqs_logger.removeHandler(handler)
        oqs_logger.setLevel(logging.NOTSET)
        oqs_logger.disabled = was_disabled
    return module


def _check_mechanisms(oqs: Any) -> str | None:
    missing = [_OQS_NAMES[n] for n in (*KEM_NAMES, *SIG_NAMES) if _OQS_NAMES[n] not in
               (*oqs.get_enabled_kem_mechanisms(), *oqs.get_enabled_sig_mechanisms())]
    if missing:
        return (f"liboqs {oqs.oqs_version()} was built without {', '.join(missing)}; "
                "rebuild liboqs with these algorithms enabled")
    for name in KEM_NAMES:
        with oqs.KeyEncapsulation(_OQS_NAMES[name]) as kem:
            kem_sizes = KEM_SIZES[name]
            kem_got = (kem.length_public_key, kem.length_ciphertext, kem.length_shared_secret)
            if kem_got != (kem_sizes.encapsulation_key, kem_sizes.ciphertext, kem_sizes.shared_secret):
                return (f"liboqs {oqs.oqs_version()} reports {name} sizes {kem_got}, not FIPS 203's; "
                        "install a liboqs-python release that matches the liboqs release")
    for name in SIG_NAMES:
        with oqs.Signature(_OQS_NAMES[name]) as sig:
            sig_sizes = SIG_SIZES[name]
            sig_got = (sig.length_public_key, sig.length_signature)
            if sig_got != (sig_sizes.public_key, sig_sizes.signature):
                return (f"liboqs {oqs.oqs_version()} reports {name} sizes {sig_got}, not FIPS 204's; "
                        "install a liboqs-python release that matches the liboqs release")
            if not sig.sig_with_ctx_support:
                return f"liboqs {oqs.oqs_version()} cannot sign {name} with a context string; upgrade liboqs"
    return None


#: What hybridkex uses of liboqs-python's module (PyPI's ``oqs`` is another project with the same import name).
_OQS_API = ("KeyEncapsulation", "Signature", "get_enabled_kem_mechanisms", "get_enabled_sig_mechanisms",
            "oqs_version", "oqs_python_version")


def _probe_uncached() -> str | None:
    global _oqs
    if "oqs" not in sys.modules:
        if importlib.util.find_spec("oqs") is None:
            return "the 'oqs' module is not installed; install it with: pip install 'hybridkex[oqs]'"
        if _find_loadable_library() is None:
            return (f"the liboqs shared library was not found (searched the system library path and "
                    f"{_install_root()}); "
                    "build liboqs with -DBUILD_SHARED_LIBS=ON and set OQS_INSTALL_PATH to its install prefix")
    try:
        oqs = _import_oqs()
        if not all(hasattr(oqs, name) for name in _OQS_API):
            return ("the installed 'oqs' module is not liboqs-python (another package uses that name); "
                    "replace it: pip uninstall oqs && pip install 'hybridkex[oqs]'")
        reason = _check_mechanisms(oqs)
    except (Exception, SystemExit) as exc:  # liboqs-python raises SystemExit when it cannot load liboqs
        return f"liboqs-python failed to load liboqs ({type(exc).__name__}: {exc})"
    if reason is None:
        _oqs = oqs
    return reason


def probe() -> str | None:
    """Return None when liboqs is usable, else a sentence saying why not and what to do."""
    if not _probe_result:
        _probe_result.append(_probe_uncached())
    return _probe_result[0]


# --------------------------------------------------------------------------- helpers


def _as_bytes(data: object, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    return bytes(data)


def _need(data: object, size: int, what: str) -> bytes:
    raw = _as_bytes(data, what)
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


class _OqsSecret:
    """Owns a liboqs-python object that holds a secret key; frees (and wipes) it when dropped."""

    def __init__(self, holder: Any) -> None:
        self._holder = holder

    def __del__(self) -> None:
        holder, self._holder = getattr(self, "_holder", None), None
        if holder is not None:
            try:
                holder.free()
            except Exception:  # interpreter shutdown may have torn down ctypes already
                pass


class _OqsDecapsulationKey(_OqsSecret):
    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._holder.decap_secret(ciphertext))
        except RuntimeError:
            raise ValueError("ML-KEM decapsulation failed") from None


class _FallbackDecapsulationKey:
    """A cryptography decapsulation key, used when liboqs cannot derive keys from a seed."""

    def __init__(self, private: Any) -> None:
        self._private = private

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return bytes(self._private.decapsulate(ciphertext))


class _OqsSigningKey(_OqsSecret):
    def sign(self, message: bytes, context: bytes) -> bytes:
        return bytes(self._holder.sign_with_ctx_str(message, context))


class _FallbackSigningKey:
    """A cryptography signing key, used when liboqs cannot derive ML-DSA keys from a seed."""

    def __init__(self, private: Any) -> None:
        self._private = private

    def sign(self, message: bytes, context: bytes) -> bytes:
        return bytes(self._private.sign(message, context))


# --------------------------------------------------------------------------- ML-KEM


class _LiboqsKEM(KEM):
    def __init__(self, name: str, oqs: Any, reference: KEM) -> None:
        self.name = name
        self.sizes = KEM_SIZES[name]
        self._oqs = oqs
        self._oqs_name = _OQS_NAMES[name]
        self._reference = reference
        # Encapsulation uses no secret state, so one liboqs object serves every call.
        self._encapsulator = oqs.KeyEncapsulation(self._oqs_name)
        #: which library turns a seed into a key pair: "liboqs", or "cryptography" as a fallback
        self.seed_derivation = "liboqs" if self._derivation_matches() else "cryptography"

    def _derive(self, seed: bytes) -> tuple[Any, bytes]:
        holder = self._oqs.KeyEncapsulation(self._oqs_name)
        try:
            if holder.length_keypair_seed != self.sizes.decapsulation_key_seed:
                raise RuntimeError("no derandomised key generation")
            public = bytes(holder.generate_keypair_seed(seed))
        except BaseException:
            holder.free()
            raise
        return holder, public

    def _derivation_matches(self) -> bool:
        try:
            holder, public = self._derive(_SELF_TEST_SEED)
        except (RuntimeError, ValueError, AttributeError):  # AttributeError: liboqs-python too old
            return False
        holder.free()
        return public == self._reference.generate(_SELF_TEST_SEED)[1]

    def generate(self, seed: bytes) -> tuple[Any, bytes]:
        seed = _need(seed, self.sizes.decapsulation_key_seed, f"{self.name} seed")
        if self.seed_derivation == "liboqs":
            holder, public = self._derive(seed)
            return _OqsDecapsulationKey(holder), public
        # liboqs cannot turn d || z into a key pair here (or disagrees with FIPS 203 on it).
        private, public = self._reference.generate(seed)
        return _FallbackDecapsulationKey(private), public

    def encapsulate(self, encapsulation_key: bytes) -> tuple[bytes, bytes]:
        key = _need(encapsulation_key, self.sizes.encapsulation_key, f"{self.name} encapsulation key")
        try:
            ciphertext, shared_secret = self._encapsulator.encap_secret(key)
        except RuntimeError:
            # FIPS 203 §7.2 input check: a coefficient is not reduced modulo q.
            raise ValueError(f"{self.name} encapsulation key is malformed") from None
        # liboqs returns (ciphertext, shared_secret); the interface is pyca's order.
        return bytes(shared_secret), bytes(ciphertext)

    def decapsulate(self, private: Any, ciphertext: bytes) -> bytes:
        raw = _need(ciphertext, self.sizes.ciphertext, f"{self.name} ciphertext")
        if not isinstance(private, (_OqsDecapsulationKey, _FallbackDecapsulationKey)):
            raise TypeError(f"{self.name} decapsulation key must come from this backend's generate()")
        return private.decapsulate(raw)


# --------------------------------------------------------------------------- ML-DSA


class _LiboqsMLDSA(SignatureScheme):
    def __init__(self, name: str, oqs: Any, reference: SignatureScheme) -> None:
        self.name = name
        self.sizes = SIG_SIZES[name]
        self._oqs = oqs
        self._oqs_name = _OQS_NAMES[name]
        self._reference = reference
        self._secret_key_size = _MLDSA_SECRET_KEY_SIZES[name]
        # Verification uses no secret state, so one liboqs object serves every call.
        self._verifier = oqs.Signature(self._oqs_name)
        self._keygen = self._find_keygen()
        #: which library turns a seed into a signing key: "liboqs", or "cryptography" as a fallback
        self.seed_derivation = "liboqs" if self._derivation_matches() else "cryptography"

    def _find_keygen(self) -> Any:
        symbol = _MLDSA_KEYGEN_SYMBOL.format(level=self.name.rsplit("-", 1)[1])
        try:
            function = getattr(self._oqs.native(), symbol)
        except AttributeError:
            return None
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        function.restype = ctypes.c_int
        return function

    def _derive(self, seed: bytes) -> tuple[bytes, bytes] | None:
        """Run ML-DSA.KeyGen_internal(xi) in liboqs; return (expanded secret key, public key)."""
        if self._keygen is None:
            return None
        public = ctypes.create_string_buffer(self.sizes.public_key)
        secret = ctypes.create_string_buffer(self._secret_key_size)
        try:
            if self._keygen(public, secret, seed) != 0:
                return None
            public_key, secret_key = public.raw, secret.raw
        finally:
            ctypes.memset(secret, 0, self._secret_key_size)
        # FIPS 204 Algorithm 24 (skEncode): sk starts with rho (= pk[:32]), K, then tr = H(pk, 64).
        if secret_key[:32] != public_key[:32] or secret_key[64:128] != hashlib.shake_256(public_key).digest(64):
            return None
        return secret_key, public_key

    def _derivation_matches(self) -> bool:
        derived = self._derive(_SELF_TEST_SEED[:32])
        return derived is not None and derived[1] == self._reference.from_seed(_SELF_TEST_SEED[:32])[1]

    def from_seed(self, seed: bytes) -> tuple[Any, bytes]:
        seed = _need(seed, self.sizes.seed, f"{self.name} seed")
        derived = self._derive(seed) if self.seed_derivation == "liboqs" else None
        if derived is None:
            # liboqs has no public seed-to-key function; without the mldsa-native symbol
            # (or if it disagrees with FIPS 204) the key comes from cryptography instead.
            private, public = self._reference.from_seed(seed)
            return _FallbackSigningKey(private), public
        secret_key, public_key = derived
        return _OqsSigningKey(self._oqs.Signature(self._oqs_name, secret_key)), public_key

    def sign(self, private: Any, message: bytes, context: bytes) -> bytes:
        message = _as_bytes(message, "message")
        context = _as_bytes(context, "context")
        if len(context) > _MAX_CONTEXT:
            raise ValueError("ML-DSA context must be at most 255 bytes")
        if not isinstance(private, (_OqsSigningKey, _FallbackSigningKey)):
            raise TypeError(f"{self.name} signing key must come from this backend's from_seed()")
        return private.sign(message, context)

    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        public_key = _as_bytes(public_key, "public key")
        message = _as_bytes(message, "message")
        signature = _as_bytes(signature, "signature")
        context = _as_bytes(context, "context")
        # liboqs-python would pad or cut a wrong-length public key to size; reject it here.
        if (len(public_key) != self.sizes.public_key or len(signature) != self.sizes.signature
                or len(context) > _MAX_CONTEXT):
            return False
        try:
            return bool(self._verifier.verify_with_ctx_str(message, signature, context, public_key))
        except (RuntimeError, ValueError):
            return False


# --------------------------------------------------------------------------- backend


class LiboqsBackend(Backend):
    """ML-KEM and ML-DSA from liboqs.

    liboqs has no X25519, so :meth:`key_agreement` hands out the ``cryptography``
    backend's X25519 (a hard dependency of hybridkex anyway).
    """

    name = "liboqs"

    @classmethod
    def probe(cls) -> str | None:
        return probe()

    def __init__(self) -> None:
        reason = probe()
        if reason is not None or _oqs is None:
            raise BackendUnavailable(f"backend 'liboqs' is not usable here: {reason}")
        self._oqs: Any = _oqs
        self._reference = CryptographyBackend()
        self._kems: dict[str, KEM] = {}
        self._signatures: dict[str, SignatureScheme] = {}

    def describe(self) -> str:
        return f"liboqs {self._oqs.oqs_version()} through liboqs-python {self._oqs.oqs_python_version()}"

    def kem(self, name: str) -> KEM:
        if name not in KEM_SIZES:
            raise BackendUnavailable(f"liboqs backend has no KEM {name!r}; choose one of {sorted(KEM_SIZES)}")
        if name not in self._kems:
            self._kems[name] = _LiboqsKEM(name, self._oqs, self._reference.kem(name))
        return self._kems[name]

    def key_agreement(self, name: str) -> KeyAgreement:
        """Return X25519 from ``cryptography``: liboqs implements no classical key agreement."""
        if name != "x25519":
            raise BackendUnavailable(f"liboqs backend has no key agreement {name!r}; use 'x25519'")
        return self._reference.key_agreement(name)

    def signature(self, name: str) -> SignatureScheme:
        if name not in SIG_SIZES:
            raise BackendUnavailable(
                f"liboqs backend has no signature scheme {name!r}; choose one of {sorted(SIG_SIZES)}")
        if name not in self._signatures:
            self._signatures[name] = _LiboqsMLDSA(name, self._oqs, self._reference.signature(name))
        return self._signatures[name]
