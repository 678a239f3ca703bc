"""Attacks on a running daemon, through its listening socket (in-process daemons on loopback, file sinks).

Each test first plays the attack, then shows that the legitimate partner still rotates and
that the attacked pair's state did not move: forged epoch, stalled Request, Request then
TCP reset, tampered proof, cross-peer rotation by another pinned partner, idle-connection
starvation, log flood.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hybridkex import ConfigError, generate_identity, write_identity
from wg_support import Lines, wait

from hybridkex_wg._config import parse_config
from hybridkex_wg._daemon import PER_SOURCE, Daemon
from hybridkex_wg._session import COUNTERS, LIMITER, REQUEST_TIMEOUT
from hybridkex_wg._wire import Accept, AcceptStatus, Request, encode, read_message

FAST = {"interval": 0.5, "jitter": 0.0, "deadline": 60.0, "retry_initial": 0.2, "retry_max": 0.5,
        "startup_spread": 0.0}


def wg_key() -> bytes:
    return os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def own_psk(directory: Path, name: str) -> str:
    path = directory / f"{name}.psk"
    if not path.exists():
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        path.chmod(0o600)
    return str(path)


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    """The rate limiter is process-wide: each test starts with a clean one."""
    LIMITER._last.clear()
    yield
    LIMITER._last.clear()



class Pair:
    """Responder daemon B for WireGuard peer A; A's initiator daemon is started on demand."""

    def __init__(self, tmp_path: Path, run_daemon: Callable[[dict[str, Any], Path], tuple[Daemon, Lines]],
                 port: int, b_timeout: float = 3.0, **b_top: Any) -> None:
        self.tmp = tmp_path
        self.run = run_daemon
        self.ka, self.kb = wg_key(), wg_key()
        self.port = port
        psk = own_psk(tmp_path, "ab")
        self.b, _ = run_daemon({
            **b_top, "listen": f"127.0.0.1:{port}", "rotation": FAST,
            "exchange": {"psk_file": psk, "timeout": b_timeout},
            "interface": [{"name": "wgB", "public_key": b64(self.kb),
                           "sink": [{"type": "file", "path": str(tmp_path / "b" / "{name}.psk")}]}],
            "peer": [{"public_key": b64(self.ka), "name": "a", "role": "responder"}]}, tmp_path)
        self.a_doc = {
            "rotation": FAST, "exchange": {"psk_file": psk, "timeout": 3.0},
            "interface": [{"name": "wgA", "public_key": b64(self.ka),
                           "sink": [{"type": "file", "path": str(tmp_path / "a" / "{name}.psk")}]}],
            "peer": [{"public_key": b64(self.kb), "name": "b", "role": "initiator",
                      "endpoint": f"127.0.0.1:{port}"}]}

    @property
    def b_state(self) -> Any:
        return next(iter(self.b.peers.values())).state

    def start_a(self) -> Daemon:
        return self.run(self.a_doc, self.tmp)[0]

    def request(self, **changes: Any) -> Request:
        values: dict[str, Any] = dict(initiator_public=self.ka, responder_public=self.kb, installed_epoch=0,
                                      highest_epoch=0, proof=bytes(32), interval_ms=500, deadline_ms=60000)
        values.update(changes)
        return Request(**values)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0))
        return sock


@pytest.fixture
def pair(tmp_path: Path, run_daemon: Callable[[dict[str, Any], Path], tuple[Daemon, Lines]],
         port: Callable[[], int]) -> Pair:
    return Pair(tmp_path, run_daemon, port())


def keys_match(p: Pair) -> bool:
    a, b = p.tmp / "a" / "b.psk", p.tmp / "b" / "a.psk"
    return a.exists() and b.exists() and a.read_bytes() == b.read_bytes()


def test_forged_epoch_near_2_64_is_refused_and_poisons_nothing(pair: Pair) -> None:
    with pair.connect() as s:
        s.sendall(encode(pair.request(highest_epoch=2**64 - 2)))
        accept = read_message(s, time.monotonic() + 5, Accept, "Accept")
    assert isinstance(accept, Accept) and accept.status is AcceptStatus.EPOCH_REFUSED
    assert pair.b_state.highest_epoch == 0
    pair.b.write_status(force=True)
    a = pair.start_a()
    wait(lambda: pair.b_state.rotations >= 2 and keys_match(pair), 20, "rotations after the forged epoch")
    assert pair.b_state.highest_epoch < 100 and pair.b_state.failures == 0
    assert next(iter(a.peers.values())).state.highest_epoch < 100


def test_a_stalled_request_does_not_make_the_pair_busy(pair: Pair) -> None:
    stalled = pair.connect()
    try:
        stalled.sendall(encode(pair.request(highest_epoch=5)))
        accept = read_message(stalled, time.monotonic() + 5, Accept, "Accept")
        assert isinstance(accept, Accept) and accept.status is AcceptStatus.OK
        # The stranger now says nothing; the real initiator rotates meanwhile -- well before the stranger's
        # handshake times out (3 s), so nothing waited for it.
        pair.start_a()
        wait(lambda: pair.b_state.rotations >= 2 and keys_match(pair), 2.5, "rotations next to a stalled request")
        assert pair.b_state.highest_epoch == pair.b_state.current.epoch < 5 + 2  # the stranger's 5 was not used
    finally:
        stalled.close()


def test_stalled_handshakes_after_a_request_free_the_workers_within_preauth_timeout(
        tmp_path: Path, run_daemon: Callable[..., tuple[Daemon, Lines]], port: Callable[[], int]) -> None:
    # One responder worker and a long exchange timeout: a stranger who knows the two (public) WireGuard keys
    # sends a valid Request, gets its Accept and then stalls in the handshake, twice.  Unauthenticated, each
    # may hold the worker for preauth_timeout (1 s), not for the exchange's 20 s.
    pair = Pair(tmp_path, run_daemon, port(), b_timeout=20.0, workers=1, preauth_timeout=1.0)
    stalled = []
    try:
        for _ in range(2):
            s = pair.connect(source="127.0.0.2")
            stalled.append(s)
            s.sendall(encode(pair.request(highest_epoch=5)))
            accept = read_message(s, time.monotonic() + 5, Accept, "Accept")
            assert isinstance(accept, Accept) and accept.status is AcceptStatus.OK
        started = time.monotonic()
        pair.start_a()
        wait(lambda: pair.b_state.rotations >= 1 and keys_match(pair), 8, "a rotation next to stalled handshakes")
        assert time.monotonic() - started < 8
        # Neither stall changed the pair: the stranger's epoch 5 was never taken, no failure was recorded.
        assert pair.b_state.highest_epoch < 5 and pair.b_state.failures == 0
    finally:
        for s in stalled:
            s.close()


def rejected() -> int:
    """Connections the daemon has refused or dropped so far, for every reason (process-wide)."""
    return sum(v for (name, _), v in COUNTERS.snapshot().items() if name == "rejected")


def test_request_then_tcp_reset_leaves_the_pair_idle(pair: Pair) -> None:
    before = rejected()
    for _ in range(3):
        s = pair.connect()
        s.sendall(encode(pair.request()))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST
    # Not a pause and a look: the daemon has handled all three before the state is read.
    wait(lambda: rejected() - before >= 3, 10, "the daemon to drop the three reset connections")
    assert pair.b_state.state.value == "idle" and pair.b_state.failures == 0
    pair.start_a()
    wait(lambda: pair.b_state.rotations >= 2 and keys_match(pair), 15, "rotations after resets")


def test_a_tampered_proof_changes_nothing(pair: Pair) -> None:
    a = pair.start_a()
    wait(lambda: pair.b_state.rotations >= 1 and keys_match(pair), 15, "a first rotation")
    a.request_stop()
    wait(lambda: not next(iter(a.peers.values())).state.busy, 10, "A to stop")
    before = (pair.b_state.current, pair.b_state.pending, pair.b_state.highest_epoch)
    key_before = (pair.tmp / "b" / "a.psk").read_bytes()
    with pair.connect() as s:
        s.sendall(encode(pair.request(installed_epoch=before[0].epoch, highest_epoch=before[2],
                                      proof=os.urandom(32))))
        accept = read_message(s, time.monotonic() + 5, Accept, "Accept")
        assert isinstance(accept, Accept)
        dropped = rejected()
    # Not a pause and a look: the daemon has given up on the forged exchange before the state is read.
    wait(lambda: rejected() > dropped and not pair.b_state.busy, 10, "the daemon to drop the forged exchange")
    assert (pair.b_state.current, pair.b_state.pending, pair.b_state.highest_epoch) == before
    assert (pair.tmp / "b" / "a.psk").read_bytes() == key_before


def test_idle_connections_cannot_starve_the_workers(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    idle = []
    try:
        for _ in range(64):
            idle.append(pair.connect(source="127.0.0.2"))
        started = time.monotonic()
        pair.start_a()  # from 127.0.0.1
        wait(lambda: pair.b_state.rotations >= 2 and keys_match(pair), 10, "rotations next to 64 idle connections")
        assert time.monotonic() - started < 5
        # Beyond the per-source cap the idle connections were closed at once; the rest after the Request timeout.
        time.sleep(REQUEST_TIMEOUT + 0.5)
        closed = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, OSError):
                closed += 0
        assert closed >= 64 - PER_SOURCE
    finally:
        for s in idle:
            s.close()


def test_a_flood_writes_a_few_log_lines(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hybridkex_wg")
    give_up = time.monotonic() + 2.0
    before = rejected()
    sent = 0
    stranger = wg_key()
    while time.monotonic() < give_up and sent < 400:
        try:
            with pair.connect(source="127.0.0.3") as s:
                if sent % 2:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                else:
                    s.sendall(encode(pair.request(initiator_public=stranger)))
                s.settimeout(1)
                s.recv(64)
        except OSError:
            pass
        sent += 1
    # Every connection of the flood was refused and counted before the log is read.
    wait(lambda: rejected() - before >= sent, 10, "the daemon to refuse every connection of the flood")
    lines = [r for r in caplog.records if r.name == "hybridkex_wg"]
    assert sent >= 50
    assert len(lines) <= 6, [r.getMessage() for r in lines]
    assert pair.b_state.failures == 0 and pair.b_state.highest_epoch == 0


def test_another_pinned_partner_cannot_rotate_a_peer_it_is_not_bound_to(
        tmp_path: Path, port: Callable[[], int], run_daemon: Callable[..., tuple[Daemon, Lines]]) -> None:
    ids = {}
    for name in ("a", "b", "c"):
        ids[name] = write_identity(generate_identity("ml-dsa-44"), tmp_path / name)
    ka, kb, kc = wg_key(), wg_key(), wg_key()
    listen = port()
    sink = [{"type": "file", "path": str(tmp_path / "b" / "{name}.psk")}]
    base_b = {"listen": f"127.0.0.1:{listen}", "rotation": FAST,
              "interface": [{"name": "wgB", "public_key": b64(kb), "sink": sink}]}
    # The old mistake: both partners pinned in the shared table.  Refused at load.
    shared = {**base_b, "exchange": {"identity": str(ids["b"][0]), "pinned_peers": [str(ids["a"][1]),
                                                                                    str(ids["c"][1])]},
              "peer": [{"public_key": b64(ka), "name": "a", "role": "responder"},
                       {"public_key": b64(kc), "name": "c", "role": "responder"}]}
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config(shared, base=tmp_path, min_interval=0.1)
    # Two WireGuard peers bound to one identity: refused too.
    same = {**base_b, "exchange": {"identity": str(ids["b"][0])},
            "peer": [{"public_key": b64(ka), "name": "a", "role": "responder",
                      "exchange": {"pinned_peers": [str(ids["a"][1])]}},
                     {"public_key": b64(kc), "name": "c", "role": "responder",
                      "exchange": {"pinned_peers": [str(ids["a"][1])]}}]}
    with pytest.raises(ConfigError, match="share one pinned identity"):
        Daemon(parse_config(same, base=tmp_path, min_interval=0.1))
    # Each bound to its own: C, authenticated as itself, asks to rotate A's pair and is refused.
    b, _ = run_daemon({**base_b, "exchange": {"identity": str(ids["b"][0])},
                    "peer": [{"public_key": b64(ka), "name": "a", "role": "responder",
                              "exchange": {"pinned_peers": [str(ids["a"][1])]}},
                             {"public_key": b64(kc), "name": "c", "role": "responder",
                              "exchange": {"pinned_peers": [str(ids["c"][1])]}}]}, tmp_path)
    attacker, _ = run_daemon({"rotation": FAST, "exchange": {"identity": str(ids["c"][0]),
                                                          "pinned_peers": [str(ids["b"][1])]},
                           # C claims A's WireGuard key for its side of the pair.
                           "interface": [{"name": "wgX", "public_key": b64(ka),
                                          "sink": [{"type": "file", "path": str(tmp_path / "x" / "{name}.psk")}]}],
                           "peer": [{"public_key": b64(kb), "name": "b", "role": "initiator",
                                     "endpoint": f"127.0.0.1:{listen}"}]}, tmp_path)
    a_state = next(rt.state for rt in b.peers.values() if rt.config.name == "a")
    x_state = next(iter(attacker.peers.values())).state
    wait(lambda: x_state.failures >= 2, 15, "the attacker's attempts to fail")
    assert a_state.rotations == 0 and a_state.current is None and a_state.highest_epoch == 0
    assert not (tmp_path / "b" / "a.psk").exists()
    assert x_state.rotations == 0
