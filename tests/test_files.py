"""Secret and state files: 0600, atomic replacement, refusal of loose permissions."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hybridkex import ConfigError
from hybridkex.io import atomic_write, write_key_file
from hybridkex.io._files import encode_key, locked, read_secret_file


def test_atomic_write_mode_under_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "k", b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k").read_bytes() == b"secret"


def test_replace_leaves_no_temporary_files(tmp_path: Path) -> None:
    for n in range(5):
        atomic_write(tmp_path / "k", str(n).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]
    assert (tmp_path / "k").read_bytes() == b"4"


def test_no_overwrite(tmp_path: Path) -> None:
    atomic_write(tmp_path / "k", b"a", overwrite=False)
    with pytest.raises(ConfigError, match="--force"):
        atomic_write(tmp_path / "k", b"b", overwrite=False)
    assert (tmp_path / "k").read_bytes() == b"a"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        atomic_write(tmp_path / "nope" / "k", b"a")


def test_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atomic_write(tmp_path / "k", b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "k", b"new")
    assert (tmp_path / "k").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_read_secret_file_checks(tmp_path: Path) -> None:
    p = tmp_path / "s"
    p.write_bytes(b"x")
    os.chmod(p, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_file(p, "key")
    os.chmod(p, 0o600)
    assert read_secret_file(p, "key") == b"x"
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret_file(tmp_path / "missing", "key")
    with pytest.raises(ConfigError, match="directory"):
        read_secret_file(tmp_path, "key")


def test_key_formats(tmp_path: Path) -> None:
    key = bytes(range(32))
    assert encode_key(key, "raw") == key
    assert encode_key(key, "hex") == key.hex().encode() + b"\n"
    write_key_file(tmp_path / "k", key, "base64")
    assert (tmp_path / "k").read_text().strip() == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    with pytest.raises(ValueError):
        encode_key(key, "pem")


def test_lock_serialises(tmp_path: Path) -> None:
    order: list[str] = []

    def worker(name: str) -> None:
        with locked(tmp_path / "state"):
            order.append(name + "-in")
            order.append(name + "-out")

    threads = [threading.Thread(target=worker, args=(str(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(order[i].split("-")[0] == order[i + 1].split("-")[0] for i in range(0, len(order), 2))
