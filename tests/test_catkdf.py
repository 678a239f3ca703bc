"""ETSI TS 103 744 CatKDF against the published vectors (tests/data/etsi-ts103744-catkdf.json)."""

from __future__ import annotations

import pytest
from vectors import load

from hybridkex import catkdf

VECTORS = load("etsi-ts103744-catkdf.json")["vectors"]


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['kdf']}-{v['hash']}-{v['ecdh']}-{v['kem']}-{v['cid']}")
def test_vector(v: dict[str, str]) -> None:
    expected = bytes.fromhex(v["key_material"])
    out = catkdf(hash=v["hash"].lower(), kdf=v["kdf"].lower(), psk=bytes.fromhex(v["psk"]),
                 k1=bytes.fromhex(v["k1"]), k2=bytes.fromhex(v["k2"]), ma=bytes.fromhex(v["MA"]),
                 mb=bytes.fromhex(v["MB"]), context=v["info"].encode(), label=bytes.fromhex(v["label"]),
                 length=len(expected))
    assert out == expected


def test_all_four_variants_covered() -> None:
    assert {(v["kdf"], v["hash"]) for v in VECTORS} == {("HKDF", "SHA256"), ("HKDF", "SHA384"),
                                                        ("HMAC", "SHA256"), ("HMAC", "SHA384")}


def _args(**over: object) -> dict[str, object]:
    base: dict[str, object] = dict(hash="sha256", kdf="hkdf", psk=b"q" * 32, k1=b"a" * 32, k2=b"b" * 32, ma=b"MA",
                                   mb=b"MB", context=b"ctx", label=b"salt", length=32)
    base.update(over)
    return base


@pytest.mark.parametrize("field", ["psk", "k1", "k2", "ma", "mb", "context", "label"])
@pytest.mark.parametrize("kdf", ["hkdf", "hmac"])
def test_every_input_changes_output(field: str, kdf: str) -> None:
    base = catkdf(**_args(kdf=kdf))  # type: ignore[arg-type]
    changed = catkdf(**_args(kdf=kdf, **{field: b"X" + _args()[field]}))  # type: ignore[arg-type, operator]
    assert base != changed


def test_length_boundaries_of_ma_mb_are_unambiguous() -> None:
    # Moving a byte from MA to MB must change the output (the u32 length prefixes bind the split).
    assert catkdf(**_args(ma=b"MAx", mb=b"B")) != catkdf(**_args(ma=b"MA", mb=b"xB"))  # type: ignore[arg-type]


def test_hmac_variant_longer_than_one_block() -> None:
    out = catkdf(**_args(kdf="hmac", length=100))  # type: ignore[arg-type]
    assert len(out) == 100 and out[:32] == catkdf(**_args(kdf="hmac", length=32))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [dict(hash="md5"), dict(kdf="pbkdf2"), dict(length=0), dict(length=255 * 32 + 1),
                                 dict(length=True)])
def test_bad_parameters(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        catkdf(**_args(**bad))  # type: ignore[arg-type]


def test_non_bytes_rejected() -> None:
    with pytest.raises(TypeError, match="k1"):
        catkdf(**_args(k1="text"))  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 128, 129, 300])
def test_fast_hmac_equals_the_standard_one(hash_name: str, key_len: int) -> None:
    import hmac
    import os

    from hybridkex.protocol._catkdf import HMACKey, hmac_digest, new_hash

    prepared = None
    for msg_len in (0, 1, 55, 64, 1000):
        key, msg = os.urandom(key_len), os.urandom(msg_len)
        assert hmac_digest(key, msg, hash_name) == hmac.digest(key, msg, hash_name)
        assert HMACKey(key, hash_name).digest(msg) == hmac.digest(key, msg, hash_name)
        # One prepared key, reused: each MAC starts from the key's state, not the previous message's.
        prepared = prepared or (key, HMACKey(key, hash_name))
        assert prepared[1].digest(msg) == hmac.digest(prepared[0], msg, hash_name)
        assert new_hash(hash_name, msg).digest() == __import__("hashlib").new(hash_name, msg).digest()
