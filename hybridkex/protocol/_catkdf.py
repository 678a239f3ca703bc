"""ETSI TS 103 744 CatKDF combiner.

    key_material = KDF(salt=label, IKM=psk || k1 || k2,
                       info=H(u32(len(context))||context || u32(len(MA))||MA || u32(len(MB))||MB))

KDF is HKDF (RFC 5869) or the SP 800-56C one-step KDF with HMAC (ETSI TS 103 744 §8.2,
"HMAC" variant, as OpenSSL's SSKDF with mac=HMAC computes it).  The derived key stays
secret while any one of psk, k1 or k2 stays secret.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["catkdf", "catkdf_unchecked", "HASHES", "KDFS", "new_hash", "hmac_digest", "HMACKey"]

HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}
KDFS = ("hkdf", "hmac")

# A handshake computes some forty hashes and HMACs over short inputs.  Copying a ready hash
# object skips OpenSSL's per-call algorithm lookup, which costs more than hashing the input.
_EMPTY = {name: ctor() for name, ctor in HASHES.items()}
_TRANS_36 = bytes(x ^ 0x36 for x in range(256))
_TRANS_5C = bytes(x ^ 0x5C for x in range(256))


def new_hash(hash: str, data: bytes = b"") -> hashlib._Hash:
    """A fresh ``hash`` object (``sha256``/``sha384``) that has absorbed ``data``."""
    h = _EMPTY[hash].copy()
    if data:
        h.update(data)
    return h


def _keyed(key: bytes, hash: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC's inner and outer hashes with the padded key absorbed (RFC 2104)."""
    inner = _EMPTY[hash].copy()
    outer = _EMPTY[hash].copy()
    block = inner.block_size
    if len(key) > block:
        key = new_hash(hash, key).digest()
    key = key.ljust(block, b"\0")
    inner.update(key.translate(_TRANS_36))
    outer.update(key.translate(_TRANS_5C))
    return inner, outer


def hmac_digest(key: bytes, msg: bytes, hash: str) -> bytes:
    """HMAC (RFC 2104) with ``hash``; equal to :func:`hmac.digest` (tests check it), faster."""
    inner, outer = _keyed(key, hash)
    inner.update(msg)
    outer.update(inner.digest())
    return outer.digest()


class HMACKey:
    """HMAC under one key, its padded blocks absorbed once: for a secret that keys several MACs
    (HKDF-Expand of several labels).  It holds the key's state: drop it with the secret."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, hash: str) -> None:
        self._inner, self._outer = _keyed(key, hash)

    def digest(self, msg: bytes) -> bytes:
        """HMAC(key, msg); equal to :func:`hmac_digest` with the same key and hash."""
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _u32(data: bytes) -> bytes:
    return struct.pack(">I", len(data))


def _check_bytes(**kwargs: object) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"catkdf: {name} must be bytes, not {type(value).__name__}")


def catkdf(*, hash: str, kdf: str, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes,
           context: bytes, label: bytes, length: int) -> bytes:
    """Combine psk, k1 and k2 into ``length`` bytes of key material (ETSI TS 103 744 CatKDF)."""
    _check_bytes(psk=psk, k1=k1, k2=k2, ma=ma, mb=mb, context=context, label=label)
    if hash not in HASHES:
        raise ValueError(f"catkdf: hash must be one of {sorted(HASHES)}, not {hash!r}")
    if kdf not in KDFS:
        raise ValueError(f"catkdf: kdf must be one of {list(KDFS)}, not {kdf!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise ValueError("catkdf: length must be a positive integer")
    if length > 255 * HASHES[hash]().digest_size:
        raise ValueError(f"catkdf: length {length} exceeds 255 * digest size")
    return catkdf_unchecked(hash, kdf, bytes(psk), bytes(k1), bytes(k2), bytes(ma), bytes(mb), bytes(context),
                            bytes(label), length)


def catkdf_unchecked(hash: str, kdf: str, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes, context: bytes,
                     label: bytes, length: int) -> bytes:
    """:func:`catkdf` without argument checks, for callers that built every argument themselves."""
    info = new_hash(hash, _u32(context) + context + _u32(ma) + ma + _u32(mb) + mb).digest()
    secret = psk + k1 + k2
    out = bytearray()
    counter = 1
    if kdf == "hkdf":
        # RFC 5869: PRK = HMAC(salt, IKM); T(i) = HMAC(PRK, T(i-1) || info || i)
        prk = hmac_digest(label, secret, hash)
        block = b""
        while len(out) < length:
            block = hmac_digest(prk, block + info + bytes([counter]), hash)
            out += block
            counter += 1
    else:
        # SP 800-56C rev2 §4.1 option 2: K(i) = HMAC(salt, counter_32 || Z || FixedInfo)
        while len(out) < length:
            out += hmac_digest(label, struct.pack(">I", counter) + secret + info, hash)
            counter += 1
    return bytes(out[:length])
