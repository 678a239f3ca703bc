"""QKD-replenished authentication: the PSK ratchet survives a crash or a lost message at every step,
keeps its previous key only for a while, never re-bootstraps by itself, and no reflection moves it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from handshake_harness import QKDPair, run

from hybridkex import ConfigError, HandshakeResult, QKDUnavailable
from hybridkex._ratchet import MAX_PREVIOUS_EXCHANGES, MAX_PREVIOUS_SECONDS, AuthRatchet, init_ratchet

BOOT = os.urandom(32)


class Side:
    """One node's ratchet for its peer."""

    def __init__(self, path: Path, name: str, peer: str, clock: list[float]) -> None:
        self.ratchet = AuthRatchet(path, name=name, peer_name=peer, wall=lambda: clock[0])
        self.path = path

    def state(self) -> bytes:
        return self.path.read_bytes()


def exchange(a: Side, b: Side, *, a_initiates: bool = True, lost: int | None = None, no_write: str = "",
             qkd: QKDPair | None = None, policy: str = "required") -> tuple[object, object]:
    """One exchange; ``lost`` drops message N (and the connection); ``no_write`` names a side that dies
    after it confirmed the key but before it saved its ratchet state."""
    ini, res = (a, b) if a_initiates else (b, a)
    o = run(ini.ratchet.authenticator(), res.ratchet.authenticator(), i_policy=policy, r_policy=policy,
            qkd=qkd or QKDPair(), tamper=lambda i, f: None if i == lost else f)
    for side, ratchet, result in (("i", ini, o.initiator), ("r", res, o.responder)):
        if isinstance(result, HandshakeResult) and no_write != side:
            ratchet.ratchet.advance(result)
    return o.initiator, o.responder


@pytest.fixture
def clock() -> list[float]:
    return [1_000_000.0]


@pytest.fixture
def pair(tmp_path: Path, clock: list[float]) -> tuple[Side, Side]:
    init_ratchet(tmp_path / "a.ratchet", BOOT)
    init_ratchet(tmp_path / "b.ratchet", BOOT)
    return (Side(tmp_path / "a.ratchet", "alice", "bob", clock), Side(tmp_path / "b.ratchet", "bob", "alice", clock))


def test_ratchet_replaces_bootstrap_with_qkd_fed_keys(pair: tuple[Side, Side]) -> None:
    a, b = pair
    i, r = exchange(a, b)
    assert isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult)
    sa, sb = a.ratchet.load(), b.ratchet.load()
    assert sa.epoch == sb.epoch == 1 and sa.current == sb.current and sa.current.qkd_fed
    assert sa.current.key == i.ratchet_psk() != BOOT and sa.previous is not None and sa.previous.key == BOOT
    exchange(a, b, a_initiates=False)
    exchange(a, b)
    keys = {k.key for k in a.ratchet.load().usable(2e6)} | {k.key for k in b.ratchet.load().usable(2e6)}
    assert BOOT not in keys, "the bootstrap PSK is gone once newer keys are proven"


STEPS = [("lost", 1), ("lost", 2), ("lost", 3), ("no_write", "i"), ("no_write", "r")]


@pytest.mark.parametrize("step", STEPS, ids=[f"{k}-{v}" for k, v in STEPS])
@pytest.mark.parametrize("epochs_before", [0, 2])
def test_a_crash_or_lost_message_at_every_step_never_locks_out(pair: tuple[Side, Side], step: tuple[str, object],
                                                                 epochs_before: int) -> None:
    a, b = pair
    for n in range(epochs_before):
        exchange(a, b, a_initiates=n % 2 == 0)
    before = (a.state(), b.state())
    kind, value = step
    i, r = exchange(a, b, **{kind: value})  # type: ignore[arg-type]
    if kind == "lost" and value in (1, 2):
        assert (a.state(), b.state()) == before, "a failed exchange changed no state"
    # The next exchanges succeed in both directions and leave both sides with the same current key.
    for direction in (True, False):
        i, r = exchange(a, b, a_initiates=direction)
        assert isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult)
    assert a.ratchet.load().current == b.ratchet.load().current


def test_altering_any_message_changes_no_ratchet_state(pair: tuple[Side, Side]) -> None:
    a, b = pair
    exchange(a, b)
    before = (a.state(), b.state())
    for index in range(4):
        o = run(a.ratchet.authenticator(), b.ratchet.authenticator(), i_policy="required", r_policy="required",
                qkd=QKDPair(), tamper=lambda i, f, index=index: f[:-1] + bytes([f[-1] ^ 1]) if i == index else f)
        assert not isinstance(o.initiator, HandshakeResult) and not isinstance(o.responder, HandshakeResult)
    assert (a.state(), b.state()) == before


def test_previous_key_is_bounded_in_exchanges_and_time(pair: tuple[Side, Side], clock: list[float]) -> None:
    a, b = pair
    exchange(a, b)
    state = a.ratchet.load()
    assert len(state.usable(clock[0])) == 2
    assert len(state.usable(clock[0] + MAX_PREVIOUS_SECONDS + 1)) == 1, "the previous key expires with time"
    # b keeps missing its updates (it never saves): a accepts b's key only for a bounded number of exchanges.
    results = []
    for _ in range(MAX_PREVIOUS_EXCHANGES + 2):
        i, r = exchange(a, b, no_write="r")
        results.append(isinstance(i, HandshakeResult))
    assert results[:MAX_PREVIOUS_EXCHANGES - 1] == [True] * (MAX_PREVIOUS_EXCHANGES - 1)
    assert results[-1] is False, "an old key is not accepted forever"


def test_a_qkd_fed_key_is_never_replaced_by_one_without_qkd(pair: tuple[Side, Side]) -> None:
    a, b = pair
    exchange(a, b)
    before = (a.state(), b.state())
    i, r = exchange(a, b, qkd=QKDPair(fail_master=QKDUnavailable("KME down")), policy="preferred")
    assert isinstance(i, HandshakeResult) and i.qkd.status == "unavailable"
    assert (a.state(), b.state()) == before, "the QKD-fed key stays"


def test_reflection_never_moves_the_ratchet(tmp_path: Path, clock: list[float]) -> None:
    """A node connected to itself any number of times keeps the key its real peer holds."""
    init_ratchet(tmp_path / "n.ratchet", BOOT)
    init_ratchet(tmp_path / "p.ratchet", BOOT)
    node, peer = Side(tmp_path / "n.ratchet", "node", "peer", clock), Side(tmp_path / "p.ratchet", "peer", "node",
                                                                          clock)
    exchange(node, peer)
    before = node.state()
    for _ in range(3):
        i, r = exchange(node, node)
        assert not isinstance(i, HandshakeResult) and not isinstance(r, HandshakeResult)
    assert node.state() == before
    i, r = exchange(node, peer)
    assert isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult)


def test_missing_state_is_an_error_not_a_silent_bootstrap(tmp_path: Path) -> None:
    ratchet = AuthRatchet(tmp_path / "gone.ratchet", name="a", peer_name="b")
    with pytest.raises(ConfigError, match="ratchet-init"):
        ratchet.authenticator()


def test_reinit_needs_force(pair: tuple[Side, Side]) -> None:
    a, _ = pair
    exchange(*pair)
    with pytest.raises(ConfigError, match="--force"):
        init_ratchet(a.path, BOOT)
    init_ratchet(a.path, BOOT, force=True)
    assert a.ratchet.load().epoch == 0


def test_state_file_is_private_and_well_formed(pair: tuple[Side, Side]) -> None:
    a, b = pair
    exchange(a, b)
    assert stat.S_IMODE(os.stat(a.path).st_mode) == 0o600
    doc = json.loads(a.path.read_text())
    assert doc["type"] == "hybridkex-auth-ratchet" and doc["version"] == 2 and doc["epoch"] == 1


def test_corrupt_state_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.ratchet"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a valid authentication ratchet"):
        AuthRatchet(path, name="a", peer_name="b").load()
