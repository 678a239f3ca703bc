"""QKD policies on source failures, configuration rules of issue-level weight, status exit codes, metrics.

In-process daemons on loopback with file sinks and the simulated QKD link.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hybridkex import ConfigError
from hybridkex_sim import init_link_file, update_link_file
from wg_support import Lines, wait

from hybridkex_wg._config import parse_config
from hybridkex_wg._daemon import Daemon
from hybridkex_wg._session import LIMITER
from hybridkex_wg._status import problems, read_status

FAST = {"interval": 0.5, "jitter": 0.0, "deadline": 60.0, "retry_initial": 0.2, "retry_max": 0.5,
        "startup_spread": 0.0}


def b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    LIMITER._last.clear()
    yield



def two_ends(tmp_path: Path, port: int, qkd_policy: str, **top: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    psk = tmp_path / "ab.psk"
    psk.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    psk.chmod(0o600)
    init_link_file(tmp_path / "link-a.json")
    shutil.copy(tmp_path / "link-a.json", tmp_path / "link-b.json")
    (tmp_path / "link-b.json").chmod(0o600)
    ka, kb = b64(), b64()

    def exchange(side: str) -> dict[str, Any]:
        return {"psk_file": str(psk), "timeout": 3.0, "qkd": "sim", "qkd_link": f"link-{side}.json",
                "qkd_policy": qkd_policy}

    b = {"listen": f"127.0.0.1:{port}", "rotation": FAST, "exchange": exchange("b"), "status_file": "b.json",
         "interface": [{"name": "wgB", "public_key": kb, "sink": [{"type": "file", "path": "b/{name}.psk"}]}],
         "peer": [{"public_key": ka, "name": "a", "role": "responder"}], **top}
    a = {"rotation": FAST, "exchange": exchange("a"), "status_file": "a.json",
         "interface": [{"name": "wgA", "public_key": ka, "sink": [{"type": "file", "path": "a/{name}.psk"}]}],
         "peer": [{"public_key": kb, "name": "b", "role": "initiator", "endpoint": f"127.0.0.1:{port}"}]}
    return a, b


@pytest.mark.parametrize("failure", ["missing", "unreadable", "tapped"])
def test_preferred_falls_back_on_any_qkd_source_failure_with_a_warning(
        failure: str, tmp_path: Path, port: Callable[[], int], caplog: pytest.LogCaptureFixture,
        run_daemon: Callable[..., tuple[Daemon, Lines]]) -> None:
    caplog.set_level(logging.WARNING, logger="hybridkex_wg")
    a_doc, b_doc = two_ends(tmp_path, port(), "preferred")
    link = tmp_path / "link-a.json"
    if failure == "missing":
        link.unlink()
    elif failure == "unreadable":
        link.write_text("not a link file")
    else:  # an eavesdropper on the link: every block aborts on its QBER
        update_link_file(link, eve=1.0)
        update_link_file(tmp_path / "link-b.json", eve=1.0)
    b, b_out = run_daemon(b_doc, tmp_path)
    a, a_out = run_daemon(a_doc, tmp_path)
    wait(lambda: len(a_out.records("psk-set")) >= 2, 20, "rotations without QKD")
    assert all(r["qkd"] == "no" for r in a_out.records("psk-set"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ML-KEM + X25519" in
                r.getMessage()]
    assert warnings, "no warning about the fallback"
    if failure == "tapped":
        assert any("QBER" in w for w in warnings), warnings
    else:
        assert any("link-a.json" in w for w in warnings), warnings


def test_required_never_installs_a_key_without_qkd(tmp_path: Path, port: Callable[[], int],
                                                   run_daemon: Callable[..., tuple[Daemon, Lines]]) -> None:
    a_doc, b_doc = two_ends(tmp_path, port(), "required")
    (tmp_path / "link-a.json").unlink()
    b, b_out = run_daemon(b_doc, tmp_path)
    a, a_out = run_daemon(a_doc, tmp_path)
    state = next(iter(a.peers.values())).state
    wait(lambda: state.failures >= 2, 15, "failed attempts")
    assert not a_out.records("psk-set") and not b_out.records("psk-set")
    assert "QKD" in state.last_error


def test_wg_check_rejects_a_qkd_source_that_cannot_be_opened(tmp_path: Path, port: Callable[[], int],
                                                              cli: list[str],
                                                              write_toml: Callable[[Path, dict[str, Any]], Path],
                                                              ) -> None:
    a_doc, _ = two_ends(tmp_path, port(), "preferred")
    a_doc["rotation"] = {**FAST, "interval": 10.0}
    config = write_toml(tmp_path / "a.toml", a_doc)
    ok = subprocess.run([*cli, "wg", "check", "--config", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "link-a.json").unlink()
    bad = subprocess.run([*cli, "wg", "check", "--config", str(config)], capture_output=True, text=True)
    assert bad.returncode != 0 and "QKD source cannot be opened" in bad.stderr


def test_configuration_rules(tmp_path: Path) -> None:
    psk = tmp_path / "p.psk"
    psk.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    ka, kb, kc = b64(), b64(), b64()
    base = {"listen": "127.0.0.1:1", "exchange": {"psk_file": str(psk)},
            "interface": [{"name": "wg0", "public_key": ka}]}
    with pytest.raises(ConfigError, match="interval = 5 s is too short"):
        parse_config({**base, "rotation": {"interval": 5}, "peer": [{"public_key": kb, "role": "responder"}]},
                     base=tmp_path)
    config = parse_config({**base, "peer": [{"public_key": kb, "role": "responder"}]}, base=tmp_path)
    settings = config.peers[0].settings
    assert (settings.name, settings.peer_name) == (ka, kb)  # PSK mode: the two WireGuard keys by default
    named = parse_config({**base, "peer": [{"public_key": kb, "role": "responder",
                                            "exchange": {"name": "here", "peer_name": "there"}}]}, base=tmp_path)
    assert (named.peers[0].settings.name, named.peers[0].settings.peer_name) == ("here", "there")
    with pytest.raises(ConfigError, match="distinct"):
        parse_config({**base, "peer": [{"public_key": kb, "role": "responder",
                                        "exchange": {"name": "x", "peer_name": "x"}}]}, base=tmp_path)
    shared = parse_config({**base, "peer": [{"public_key": kb, "role": "responder"},
                                            {"public_key": kc, "role": "responder"}]}, base=tmp_path)
    with pytest.raises(ConfigError, match="share one key file"):
        Daemon(shared)
    copy = tmp_path / "copy.psk"
    shutil.copy(psk, copy)
    same_content = parse_config({**base, "peer": [{"public_key": kb, "role": "responder"},
                                                  {"public_key": kc, "role": "responder",
                                                   "exchange": {"psk_file": str(copy)}}]}, base=tmp_path)
    with pytest.raises(ConfigError, match="same content"):
        Daemon(same_content)
    with pytest.raises(ConfigError, match="on_stop"):
        parse_config({**base, "on_stop": "maybe", "peer": [{"public_key": kb, "role": "responder"}]},
                     base=tmp_path)


def test_status_exits_non_zero_when_stale_or_not_running(tmp_path: Path, port: Callable[[], int], cli: list[str],
                                                         run_daemon: Callable[..., tuple[Daemon, Lines]]) -> None:
    a_doc, b_doc = two_ends(tmp_path, port(), "preferred")
    a_doc["metrics"] = f"127.0.0.1:{port()}"
    b, _ = run_daemon(b_doc, tmp_path)
    a, a_out = run_daemon(a_doc, tmp_path)
    wait(lambda: len(a_out.records("psk-set")) >= 1, 15, "a rotation")
    a.write_status(force=True)
    status = tmp_path / "a.json"
    shown = subprocess.run([*cli, "wg", "status", "--status-file", str(status)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "WG HANDSHAKE" in shown.stdout and "FAILURES" in shown.stdout
    # Metrics: per-peer gauges and counters from the same state.
    assert a.metrics_address is not None
    host, metrics_port = a.metrics_address
    body = urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=5).read().decode()
    for name in ("hybridkex_wg_key_age_seconds", "hybridkex_wg_rotations_total", "hybridkex_wg_stale",
                 "hybridkex_wg_consecutive_failures", "hybridkex_wg_wireguard_handshake_uses_current_key",
                 "hybridkex_wg_rejected_connections_total"):
        assert name in body, name
    assert 'name="b"' in body and "SHA256:" not in body
    # A stale peer: exit 1, and say which.
    document = read_status(status)
    document["peers"][0]["stale"] = True
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(document))
    shown = subprocess.run([*cli, "wg", "status", "--status-file", str(stale)], capture_output=True, text=True)
    assert shown.returncode == 1 and "stale" in shown.stderr
    # A daemon that is gone (its PID is not running): exit 1, although the file looks healthy.
    dead = subprocess.Popen(["true"])
    dead.wait()
    document = read_status(status)
    document["pid"] = dead.pid
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps(document))
    shown = subprocess.run([*cli, "wg", "status", "--status-file", str(gone)], capture_output=True, text=True)
    assert shown.returncode == 1 and "not running" in shown.stderr
    # A hung daemon (no update for long): also 1.
    document = read_status(status)
    document["updated"] = time.time() - 600
    assert any("has not updated" in p for p in problems(document))


def test_on_stop_cut_installs_random_keys(tmp_path: Path, port: Callable[[], int],
                                         run_daemon: Callable[..., tuple[Daemon, Lines]]) -> None:
    a_doc, b_doc = two_ends(tmp_path, port(), "preferred", on_stop="cut")
    b, b_out = run_daemon(b_doc, tmp_path)
    a, a_out = run_daemon(a_doc, tmp_path)
    wait(lambda: len(b_out.records("psk-set")) >= 1, 15, "a rotation")
    a.request_stop()
    wait(lambda: not next(iter(a.peers.values())).state.busy, 10, "A to stop")
    time.sleep(0.3)
    b.request_stop()
    wait(lambda: bool(b_out.records("psk-cut")), 10, "B to cut on stop")
    assert b_out.records("psk-cut")[0]["reason"] == "stop"
    assert (tmp_path / "a" / "b.psk").read_bytes() != (tmp_path / "b" / "a.psk").read_bytes()
