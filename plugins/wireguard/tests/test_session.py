"""One rotation through real sockets, the real hybridkex handshake and real file sinks (in one process)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hybridkex_wg._config import PeerConfig, exchange_settings, rotation_policy
from hybridkex_wg._keys import wg_key_text
from hybridkex_wg._rotation import Role
from hybridkex_wg._session import PeerRuntime, Reporter, SocketSet, build_runtime, run_initiator, serve_connection
from hybridkex_wg._sinks import FileSink


def make_runtime(tmp_path: Path, side: str, role: Role, local: bytes, peer: bytes, exchange: dict[str, object],
                 ) -> PeerRuntime:
    settings = exchange_settings(exchange, "exchange", tmp_path, names=(wg_key_text(local), wg_key_text(peer)))
    policy = rotation_policy({"interval": 10, "jitter": 0}, "rotation", False)
    config = PeerConfig("wg" + side, local, peer, "p", role, ("127.0.0.1", 1) if role is Role.INITIATOR else None,
                        settings, policy, (FileSink(str(tmp_path / side / "{name}.psk")),))
    return build_runtime(config, now=0.0)


def run_pair(a: PeerRuntime, b: PeerRuntime, reporter: Reporter) -> None:
    left, right = socket.socketpair()
    with left, right:
        served = threading.Thread(target=serve_connection,
                                  args=(right, lambda local, peer: b if (local, peer) == b.config.key else None,
                                        reporter))
        served.start()
        run_initiator(a, a.state.start(0.0), reporter, SocketSet(), connected=left)
        served.join(10)


class Lines:
    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, s: str) -> None:
        self.text.extend(x for x in s.splitlines() if x)

    def flush(self) -> None:
        pass


def keys() -> tuple[bytes, bytes]:
    a, b = sorted(os.urandom(32) for _ in range(2))
    return a, b


def test_rotation_over_a_socket_writes_equal_keys(tmp_path: Path, psk_file: Path) -> None:
    ka, kb = keys()
    a = make_runtime(tmp_path, "a", Role.INITIATOR, ka, kb, {"psk_file": str(psk_file)})
    b = make_runtime(tmp_path, "b", Role.RESPONDER, kb, ka, {"psk_file": str(psk_file)})
    out = Lines()
    reporter = Reporter(out)  # type: ignore[arg-type]
    run_pair(a, b, reporter)
    first = (tmp_path / "a" / "p.psk").read_bytes()
    assert first == (tmp_path / "b" / "p.psk").read_bytes()
    assert a.state.confirmed and b.state.confirmed and a.state.status().epoch == 1
    run_pair(a, b, reporter)
    assert (tmp_path / "a" / "p.psk").read_bytes() == (tmp_path / "b" / "p.psk").read_bytes() != first
    fingerprints = [line.split("fingerprint=")[1].split()[0] for line in out.text if line.startswith("psk-set")]
    assert len(fingerprints) == 4
    assert fingerprints[0] == fingerprints[1] != fingerprints[2] == fingerprints[3] == a.state.status().fingerprint
    assert all("qkd=no" in line for line in out.text)
    for line in out.text:
        assert first.decode().strip() not in line


def test_wrong_credentials_fail_without_installing(tmp_path: Path, psk_file: Path) -> None:
    other = tmp_path / "other.psk"
    shutil.copy(psk_file, other)
    other.write_bytes(b"A" * 43 + b"=\n")
    other.chmod(0o600)
    ka, kb = keys()
    a = make_runtime(tmp_path, "a", Role.INITIATOR, ka, kb, {"psk_file": str(psk_file)})
    b = make_runtime(tmp_path, "b", Role.RESPONDER, kb, ka, {"psk_file": str(other)})
    run_pair(a, b, Reporter(Lines()))  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert a.state.failures == 1 and "pre-shared key" in a.state.last_error


def test_mismatched_wireguard_keys_fail_the_context_check(tmp_path: Path, psk_file: Path) -> None:
    # The responder is configured for another local key: the Request is refused as an unknown pair.
    ka, kb = keys()
    kc = os.urandom(32)
    a = make_runtime(tmp_path, "a", Role.INITIATOR, ka, kb, {"psk_file": str(psk_file)})
    b = make_runtime(tmp_path, "b", Role.RESPONDER, kc, ka, {"psk_file": str(psk_file)})
    run_pair(a, b, Reporter(Lines()))  # type: ignore[arg-type]
    assert "does not know this (interface, peer) pair" in a.state.last_error


@pytest.fixture
def link_files(tmp_path: Path) -> tuple[Path, Path]:
    link = tmp_path / "link-a.json"
    done = subprocess.run([sys.executable, "-c", "from hybridkex.cli import main; main()", "qkd-link", "init",
                           str(link)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the simulated QKD link is not available: {done.stderr.strip()}")
    copy = tmp_path / "link-b.json"
    shutil.copy(link, copy)
    copy.chmod(0o600)
    return link, copy


def test_rotation_with_simulated_qkd_reports_qkd_used(tmp_path: Path, psk_file: Path,
                                                      link_files: tuple[Path, Path]) -> None:
    ka, kb = keys()
    a = make_runtime(tmp_path, "a", Role.INITIATOR, ka, kb,
                     {"psk_file": str(psk_file), "qkd": "sim", "qkd_link": str(link_files[0])})
    b = make_runtime(tmp_path, "b", Role.RESPONDER, kb, ka,
                     {"psk_file": str(psk_file), "qkd": "sim", "qkd_link": str(link_files[1])})
    assert a.config.policy.failure_policy.value == "keep"  # policy built with qkd_required=False above
    out = Lines()
    run_pair(a, b, Reporter(out))  # type: ignore[arg-type]
    assert a.state.status().qkd == "used" == b.state.status().qkd
    assert (tmp_path / "a" / "p.psk").read_bytes() == (tmp_path / "b" / "p.psk").read_bytes()
    assert all("qkd=yes" in line for line in out.text if line.startswith("psk-set"))
