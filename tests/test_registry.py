"""Backends and QKD key sources come from entry points: a distribution adds one without the core knowing it.

The test builds a tiny distribution in a temporary directory -- a package and its
``.dist-info`` with ``entry_points.txt``, which is what ``pip install`` leaves behind -- puts
it on ``PYTHONPATH`` and runs two real ``hybridkex exchange`` processes that select its QKD
source and its backend by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hybridkex import ConfigError, ExchangeSettings, QKDKey
from hybridkex.backends import backend_names, get_backend, register_backend
from hybridkex.backends._cryptography import CryptographyBackend
from hybridkex.qkd import QKDSourceKind, open_source, register_source, source_names

HKX = [sys.executable, "-m", "hybridkex.cli"]

TINY = '''
"""A QKD key source for tests: both ends derive each key from a shared secret file and the key_ID."""
import hashlib, hmac, os, uuid
from pathlib import Path

from hybridkex import QKDKey, QKDKeySource
from hybridkex.backends._cryptography import CryptographyBackend
from hybridkex.qkd import QKDSourceKind

CALLS = Path(os.environ["TINY_CALLS"])


class TinySource(QKDKeySource):
    def __init__(self, secret):
        self.secret = secret

    def _key(self, key_id, size_bits):
        return hmac.new(self.secret, key_id.bytes, hashlib.sha512).digest()[: size_bits // 8]

    def get_new_keys(self, number=1, size_bits=256):
        with CALLS.open("a") as f:
            f.write("enc\\n")
        ids = [uuid.uuid4() for _ in range(number)]
        return [QKDKey(i, self._key(i, size_bits)) for i in ids]

    def get_keys_by_id(self, key_ids):
        with CALLS.open("a") as f:
            f.write("dec\\n")
        return [QKDKey(i, self._key(i, 256)) for i in key_ids]


def _open(settings):
    return TinySource(Path(os.environ["TINY_SECRET"]).read_bytes())


SOURCE = QKDSourceKind("tiny", open=_open, description="tiny test source")


class TinyBackend(CryptographyBackend):
    name = "tiny"

    def kem(self, name):
        with CALLS.open("a") as f:
            f.write("backend\\n")
        return super().kem(name)
'''


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "tinyqkd").mkdir(parents=True)
    (site / "tinyqkd" / "__init__.py").write_text(textwrap.dedent(TINY))
    info = site / "tinyqkd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyqkd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hybridkex.qkd_sources]\ntiny = tinyqkd:SOURCE\n\n"
                                           "[hybridkex.backends]\ntiny = tinyqkd:TinyBackend\n")
    (tmp_path / "secret").write_bytes(os.urandom(32))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               TINY_SECRET=str(tmp_path / "secret"), TINY_CALLS=str(tmp_path / "calls"),
               HYBRIDKEX_STATE_DIR=str(tmp_path / "state"))
    return env


def test_an_installed_source_and_backend_run_an_exchange(tiny: dict[str, str], tmp_path: Path) -> None:
    listed = subprocess.run([*HKX, "exchange", "--help"], env=tiny, capture_output=True, text=True, timeout=60)
    assert "tiny" in listed.stdout  # the --qkd and --backend choices come from the registries
    subprocess.run([*HKX, "psk", "init", tmp_path / "psk"], env=tiny, check=True, timeout=60)
    common = ["--psk-file", str(tmp_path / "psk"), "--qkd", "tiny", "--backend", "tiny", "--json"]
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    responder = subprocess.Popen([*HKX, "exchange", "--listen", f"127.0.0.1:{port}", "--accept-timeout", "30",
                                  "--name", "bob", "--peer-name", "alice", "--out", str(tmp_path / "kr"), *common],
                                 env=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        initiator = subprocess.run([*HKX, "exchange", "--connect", f"127.0.0.1:{port}", "--name", "alice",
                                    "--peer-name", "bob", "--out", str(tmp_path / "ki"), *common],
                                   env=tiny, capture_output=True, text=True, timeout=60)
        out, err = responder.communicate(timeout=60)
    finally:
        if responder.poll() is None:
            responder.kill()
            responder.wait()
    assert initiator.returncode == 0 and responder.returncode == 0, (initiator.stderr, err)
    ji, jr = json.loads(initiator.stdout), json.loads(out)
    assert ji["qkd"] == jr["qkd"] == "used" and len(ji["qkd_key_ids"]) == 1
    assert (tmp_path / "ki").read_bytes() == (tmp_path / "kr").read_bytes()
    calls = (tmp_path / "calls").read_text().split()
    assert calls.count("enc") == 1 and calls.count("dec") == 1 and "backend" in calls


def test_an_unknown_source_is_a_config_error_that_lists_the_installed_ones(tiny: dict[str, str]) -> None:
    p = subprocess.run([*HKX, "exchange", "--connect", "127.0.0.1:1", "--qkd", "nonesuch"], env=tiny,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "tiny" in p.stderr and "etsi014" in p.stderr


def test_register_at_run_time_adds_without_hiding_the_built_ins() -> None:
    """Registering a backend or a source by code keeps every built-in one (it used to hide them)."""

    class Renamed(CryptographyBackend):
        name = "renamed"

    register_backend("renamed", Renamed)
    assert {"cryptography", "liboqs", "renamed"} <= set(backend_names())
    assert isinstance(get_backend("renamed"), Renamed) and get_backend("cryptography").name == "cryptography"

    seen: list[str] = []

    class Fixed:
        def get_new_keys(self, number: int = 1, size_bits: int = 256) -> list[QKDKey]:
            raise AssertionError("not called")

    def _open(settings: ExchangeSettings) -> Fixed:  # type: ignore[return]
        seen.append(settings.qkd)
        return Fixed()

    register_source(QKDSourceKind("fixed", open=_open))  # type: ignore[arg-type]
    assert {"etsi014", "fixed"} <= set(source_names())
    open_source(ExchangeSettings(qkd="fixed"))
    assert seen == ["fixed"]
    with pytest.raises(ConfigError, match="fixed"):
        ExchangeSettings(qkd="nonesuch").validate()
    with pytest.raises(TypeError, match="Backend subclass"):
        register_backend("bad", object)  # type: ignore[arg-type]
