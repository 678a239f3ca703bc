"""ML-DSA identity files and fingerprints."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from hybridkex import ConfigError, generate_identity, load_identity, load_public_identity, write_identity
from hybridkex.backends import SIG_NAMES


@pytest.mark.parametrize("alg", SIG_NAMES)
def test_round_trip(tmp_path: Path, alg: str) -> None:
    ident = generate_identity(alg)
    key, pub = write_identity(ident, tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = load_identity(key)
    assert loaded == ident and load_public_identity(pub) == ident.public
    assert ident.seed.hex() not in repr(ident)


def test_fingerprint_is_sha256_of_spki(tmp_path: Path) -> None:
    ident = generate_identity("ml-dsa-44")
    _, pub = write_identity(ident, tmp_path)
    der = base64.b64decode("".join(pub.read_text().splitlines()[1:-1]))
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert ident.fingerprint == expected


def test_refuses_overwrite(tmp_path: Path) -> None:
    write_identity(generate_identity(), tmp_path)
    with pytest.raises(ConfigError, match="--force"):
        write_identity(generate_identity(), tmp_path)


def test_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello")
    os.chmod(junk, 0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_identity(junk)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_identity(junk)
    with pytest.raises(ConfigError, match="id.pub"):
        load_public_identity(tmp_path / "missing.pub")


def test_wrong_key_type(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    k = ed25519.Ed25519PrivateKey.generate()
    p = tmp_path / "ed.key"
    p.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match="not an ML-DSA key"):
        load_identity(p)
