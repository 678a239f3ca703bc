"""The daemon on loopback with file sinks: many peers, dead peers, garbage, failure policies, reload, stop."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wg_support import Lines, wait

from hybridkex_wg._daemon import Daemon
from hybridkex_wg._keys import PeerRef
from hybridkex_wg._status import read_status
from hybridkex_wg._wire import Request, encode

FAST = {"interval": 0.5, "jitter": 0.0, "deadline": 30.0, "retry_initial": 0.2, "retry_max": 0.5}


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()



def own_psk(directory: Path, name: str) -> dict[str, str]:
    """A peer's own PSK file (two WireGuard peers may not share one), as a [peer.exchange] table."""
    path = directory / f"{name}.psk"
    if not path.exists():
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        path.chmod(0o600)
    return {"psk_file": str(path)}


def file_sink(directory: Path) -> list[dict[str, str]]:
    return [{"type": "file", "path": str(directory / "{interface}" / "{name}.psk")}]


def rotations(daemon: Daemon, name: str) -> int:
    return next(rt.state.rotations for rt in daemon.peers.values() if rt.config.name == name)


def test_dead_peer_and_garbage_do_not_disturb_the_others(tmp_path: Path, psk_file: Path,
                                                         run_daemon: Callable[..., tuple[Daemon, Lines]],
                                                         port: Callable[[], int]) -> None:
    kb, dead = key(), key()
    ka = [key() for _ in range(4)]
    listen = port()
    exchange = {"timeout": 5.0}
    # Pair a3 takes its QKD keys from a KME that is down (nothing listens there).
    kme_down = {"qkd": "etsi014", "kme_url": f"http://127.0.0.1:{port()}", "kme_insecure_http": True,
                "sae_id": "SAE-A", "peer_sae_id": "SAE-B"}

    def ex(i: int) -> dict[str, Any]:
        return {"exchange": {**own_psk(tmp_path, f"a{i}"), **(kme_down if i == 3 else {})}}

    responder = {
        "listen": f"127.0.0.1:{listen}", "rotation": FAST, "exchange": exchange,
        "interface": [{"name": "wgB", "public_key": kb, "sink": file_sink(tmp_path / "b")}],
        "peer": [{"public_key": k, "name": f"a{i}", "role": "responder", **ex(i)} for i, k in enumerate(ka)],
    }
    initiator = {
        "rotation": FAST, "exchange": exchange,
        "interface": [{"name": f"wgA{i}", "public_key": k, "sink": file_sink(tmp_path / "a")}
                      for i, k in enumerate(ka)],
        "peer": [{"interface": f"wgA{i}", "public_key": kb, "name": f"a{i}", "role": "initiator",
                  "endpoint": f"127.0.0.1:{listen}", **ex(i)} for i in range(4)]
        + [{"interface": "wgA0", "public_key": dead, "name": "dead", "role": "initiator",
            "endpoint": f"127.0.0.1:{port()}", "exchange": own_psk(tmp_path, "dead")}],
    }
    b, b_out = run_daemon(responder, tmp_path)
    # Garbage, a truncated message and a Request for a pair nobody configured, before and while rotating.
    for payload in (b"GET / HTTP/1.0\r\n\r\n" + os.urandom(200), b"HW\x01",
                    encode(Request(os.urandom(32), os.urandom(32), 0, 0, bytes(32)))):
        with socket.create_connection(("127.0.0.1", listen)) as s:
            s.sendall(payload)
    a, a_out = run_daemon(initiator, tmp_path)
    wait(lambda: all(rotations(a, f"a{i}") >= 3 and rotations(b, f"a{i}") >= 3 for i in range(3)), 30,
         "three rotations of every live peer")
    dead_state = next(rt.state for rt in a.peers.values() if rt.config.name == "dead")
    assert dead_state.failures >= 2 and "refused" in dead_state.last_error and dead_state.rotations == 0
    kme_state = next(rt.state for rt in a.peers.values() if rt.config.name == "a3")
    assert kme_state.failures >= 1 and kme_state.rotations == 0 and "QKD" in kme_state.last_error
    a.request_stop()
    wait(lambda: not any(rt.state.busy for rt in b.peers.values()), 10, "the responder to finish")
    for i in range(3):
        assert (tmp_path / "a" / f"wgA{i}" / f"a{i}.psk").read_bytes() == (tmp_path / "b" / "wgB" / f"a{i}.psk") \
            .read_bytes()
    assert not (tmp_path / "a" / "wgA0" / "dead.psk").exists()
    # Both ends printed the same fingerprint for the same epoch.
    seen_a = {(r["name"], r["epoch"]): r["fingerprint"] for r in a_out.records("psk-set")}
    seen_b = {(r["name"], r["epoch"]): r["fingerprint"] for r in b_out.records("psk-set")}
    common = set(seen_a) & set(seen_b)
    assert len(common) >= 9 and all(seen_a[k] == seen_b[k] for k in common)


def test_failure_policies_when_the_partner_stops(tmp_path: Path, psk_file: Path,
                                                 run_daemon: Callable[..., tuple[Daemon, Lines]],
                                                 port: Callable[[], int]) -> None:
    kb = key()
    closed, kept = key(), key()
    listen = port()
    rotation = {**FAST, "deadline": 2.0}
    exchange = {"timeout": 2.0}
    responder = {
        "listen": f"127.0.0.1:{listen}", "rotation": rotation, "exchange": exchange,
        "interface": [{"name": "wgB", "public_key": kb, "sink": file_sink(tmp_path / "b")}],
        "peer": [{"public_key": closed, "name": "closed", "role": "responder", "exchange": own_psk(tmp_path, "c")},
                 {"public_key": kept, "name": "kept", "role": "responder", "exchange": own_psk(tmp_path, "k")}],
    }
    initiator = {
        "rotation": {**rotation, "failure_policy": "fail-closed"}, "exchange": exchange,
        "interface": [{"name": "wgC", "public_key": closed, "sink": file_sink(tmp_path / "a")},
                      {"name": "wgK", "public_key": kept, "sink": file_sink(tmp_path / "a")}],
        "peer": [{"interface": "wgC", "public_key": kb, "name": "closed", "role": "initiator",
                  "endpoint": f"127.0.0.1:{listen}", "exchange": own_psk(tmp_path, "c")},
                 {"interface": "wgK", "public_key": kb, "name": "kept", "role": "initiator",
                  "endpoint": f"127.0.0.1:{listen}", "rotation": {"failure_policy": "keep"},
                  "exchange": own_psk(tmp_path, "k")}],
    }
    b, _ = run_daemon(responder, tmp_path)
    a, a_out = run_daemon(initiator, tmp_path)
    wait(lambda: rotations(b, "closed") >= 1 and rotations(b, "kept") >= 1, 20, "first rotations")
    b.request_stop()
    wait(lambda: not any(rt.state.busy for rt in b.peers.values()), 10, "the responder to stop")
    kept_key = tmp_path / "a" / "wgK" / "kept.psk"
    wait(lambda: len(a_out.records("psk-stale")) >= 2, 10, "both peers to go stale")
    stale = {r["name"]: r for r in a_out.records("psk-stale")}
    assert stale["closed"]["policy"] == "fail-closed" and stale["closed"]["action"] == "random-key"
    assert stale["kept"]["policy"] == "keep" and stale["kept"]["action"] == "kept"
    assert float(stale["closed"]["age"]) >= 2
    # Fail closed: this side now holds a random key that the (stopped) partner does not have.
    assert (tmp_path / "a" / "wgC" / "closed.psk").read_bytes() != (tmp_path / "b" / "wgB" / "closed.psk").read_bytes()
    assert kept_key.read_bytes() == (tmp_path / "b" / "wgB" / "kept.psk").read_bytes()
    assert all(rt.state.status().stale for rt in a.peers.values())


def test_sighup_reload_and_sigterm_with_real_processes(tmp_path: Path, psk_file: Path, port: Callable[[], int],
                                                       spawn: Callable[..., Any],
                                                       write_toml: Callable[[Path, dict[str, Any]], Path]) -> None:
    kb = key()
    ka = {name: key() for name in ("p1", "p2", "p3")}
    listen = port()
    exchange = {"timeout": 5.0}
    # Real processes refuse intervals below 10 s; the first rotation of a new peer is immediate.
    rotation = {**FAST, "interval": 10.0, "startup_spread": 0.0}

    def configs(names: list[str]) -> None:
        write_toml(tmp_path / "b.toml", {
            "listen": f"127.0.0.1:{listen}", "status_file": "b-status.json", "rotation": rotation,
            "exchange": exchange,
            "interface": [{"name": "wgB", "public_key": kb, "sink": file_sink(tmp_path / "b")}],
            "peer": [{"public_key": ka[n], "name": n, "role": "responder", "exchange": own_psk(tmp_path, n)}
                     for n in names]})
        write_toml(tmp_path / "a.toml", {
            "status_file": "a-status.json", "rotation": rotation, "exchange": exchange,
            "interface": [{"name": f"wg{n}", "public_key": ka[n], "sink": file_sink(tmp_path / "a")} for n in ka],
            "peer": [{"interface": f"wg{n}", "public_key": kb, "name": n, "role": "initiator",
                      "endpoint": f"127.0.0.1:{listen}", "exchange": own_psk(tmp_path, n)} for n in names]})

    configs(["p1", "p2"])
    b = spawn(["wg", "run", "--config", str(tmp_path / "b.toml")], stderr_path=tmp_path / "b.log")
    a = spawn(["wg", "run", "--config", str(tmp_path / "a.toml")], stderr_path=tmp_path / "a.log")

    def count(process: Any, name: str) -> int:
        return sum(1 for r in process.records("psk-set") if r["name"] == name)

    a.wait_for(lambda: count(a, "p1") >= 1 and count(a, "p2") >= 1, 20, "p1 and p2 rotated")
    p2_epochs_before = [int(r["epoch"]) for r in a.records("psk-set") if r["name"] == "p2"]

    configs(["p2", "p3"])  # remove p1, add p3, keep p2
    b.signal(signal.SIGHUP)
    b.wait_for(lambda: "reloaded" in b.stderr_tail(), 10, "the responder to reload")
    a.signal(signal.SIGHUP)
    a.wait_for(lambda: count(a, "p3") >= 1 and count(b, "p3") >= 1, 20, "p3 rotated after the reload")
    p2_epochs = [int(r["epoch"]) for r in a.records("psk-set") if r["name"] == "p2"]
    # p2 was not restarted (a restarted peer rotates at once): its epochs are those from before the reload.
    assert p2_epochs == p2_epochs_before
    assert "1 added, 1 removed, 0 changed" in a.stderr_tail()
    assert a.proc.poll() is None and b.proc.poll() is None

    # A broken configuration is refused and the daemon keeps running the previous one.
    (tmp_path / "a.toml").write_text("this is = [not toml\n")
    a.signal(signal.SIGHUP)
    a.wait_for(lambda: "reload failed" in a.stderr_tail(), 10, "the bad reload to be refused")
    assert a.proc.poll() is None

    started = time.monotonic()
    assert a.stop() == 0 and b.stop() == 0
    assert time.monotonic() - started < 10
    status = read_status(tmp_path / "a-status.json")
    names = {p["name"]: p for p in status["peers"]}
    assert set(names) == {"p2", "p3"}
    assert names["p3"]["epoch"] >= 1 and names["p3"]["role"] == "initiator" and names["p3"]["last_error"] == ""
    text = json.dumps(status)
    for path in (tmp_path / "a").rglob("*.psk"):
        assert path.read_text().strip() not in text


def test_status_command_and_status_file_have_no_keys(tmp_path: Path, psk_file: Path, port: Callable[[], int],
                                                    run_daemon: Callable[..., tuple[Daemon, Lines]],
                                                    spawn: Callable[..., Any]) -> None:
    kb, ka = key(), key()
    listen = port()
    exchange = {"psk_file": str(psk_file), "timeout": 5.0}  # one peer per daemon: its own key
    b, _ = run_daemon({"listen": f"127.0.0.1:{listen}", "rotation": FAST, "exchange": exchange,
                       "interface": [{"name": "wgB", "public_key": kb, "sink": file_sink(tmp_path / "b")}],
                       "peer": [{"public_key": ka, "name": "siteA", "role": "responder"}]}, tmp_path)
    a, _ = run_daemon({"status_file": "status.json", "rotation": FAST, "exchange": exchange,
                       "interface": [{"name": "wgA", "public_key": ka, "sink": file_sink(tmp_path / "a")}],
                       "peer": [{"public_key": kb, "name": "siteB", "role": "initiator",
                                 "endpoint": f"127.0.0.1:{listen}"}]}, tmp_path)
    wait(lambda: (tmp_path / "status.json").exists() and read_status(tmp_path / "status.json")["peers"][0]["epoch"]
         >= 2, 20, "the status file to show epoch 2")
    shown = spawn(["wg", "status", "--status-file", str(tmp_path / "status.json")])
    assert shown.proc.wait(20) == 0  # the daemon runs (in this process) and no peer is stale
    shown.wait_for(lambda: len(shown.lines) >= 3, 5, "the status table")
    header, row = shown.lines[1], shown.lines[2]
    for column in ("INTERFACE", "EPOCH", "QKD", "KEY AGE", "WG HANDSHAKE", "CURRENT KEY", "NEXT DUE", "FAILURES",
                   "LAST ERROR"):
        assert column in header
    assert row.split()[:4] == ["wgA", kb[:10] + "…", "siteB", "initiator"]
    as_json = spawn(["wg", "status", "--status-file", str(tmp_path / "status.json"), "--json"])
    assert as_json.proc.wait(20) == 0
    as_json.wait_for(lambda: as_json.lines and as_json.lines[-1] == "}", 5, "JSON")
    document = json.loads("\n".join(as_json.lines))
    entry = document["peers"][0]
    assert entry["peer"] == kb and entry["qkd"] == "off" and entry["fingerprint"].startswith("SHA256:")
    key_text = (tmp_path / "a" / "wgA" / "siteB.psk").read_text().strip()
    assert key_text not in (tmp_path / "status.json").read_text()
    assert PeerRef("wgA", base64.b64decode(kb), "siteB").label == "wgA/siteB"
