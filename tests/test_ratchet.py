"""QKD-replenished authentication: the PSK ratchet survives a crash at every step."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from handshake_harness import QKDPair, run

from hybridkex import ConfigError, HandshakeResult, HybridKexError
from hybridkex._ratchet import AuthRatchet

BOOT = os.urandom(32)


class Crash(Exception):
    """Stands for a process dying at this point."""


def exchange(a: AuthRatchet, b: AuthRatchet, *, a_initiates: bool = True, crash_at: int | None = None,
             no_write: str = "", qkd: bool = True) -> tuple[object, object]:
    """One exchange between ratchets a and b; ``crash_at`` drops message N, ``no_write`` names a side
    that dies after confirming the key but before saving its ratchet state."""
    ini, res = (a, b) if a_initiates else (b, a)

    def tamper(index: int, frame: bytes) -> bytes:
        if index == crash_at:
            raise Crash
        return frame

    policy = "required" if qkd else "off"
    try:
        o = run(ini.authenticator(), res.authenticator(), i_policy=policy, r_policy=policy, qkd=QKDPair(),
                tamper=tamper)
        outcome = (o.initiator, o.responder)
    except Crash:
        outcome = (Crash(), Crash())
    for side, ratchet, result in (("i", ini, outcome[0]), ("r", res, outcome[1])):
        if isinstance(result, HandshakeResult) and no_write != side:
            ratchet.advance(result)
    return outcome


@pytest.fixture
def ratchets(tmp_path: Path) -> tuple[AuthRatchet, AuthRatchet]:
    return AuthRatchet(tmp_path / "a.ratchet", BOOT), AuthRatchet(tmp_path / "b.ratchet", BOOT)


def test_ratchet_replaces_bootstrap_with_qkd_fed_keys(ratchets: tuple[AuthRatchet, AuthRatchet]) -> None:
    a, b = ratchets
    i, r = exchange(a, b)
    assert isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult)
    sa, sb = a.load(), b.load()
    assert sa.epoch == sb.epoch == 1 and sa.keys == sb.keys and sa.qkd_fed
    assert sa.keys[1] == BOOT and sa.keys[0] != BOOT
    exchange(a, b, a_initiates=False)
    assert BOOT not in a.load().keys and BOOT not in b.load().keys, "bootstrap PSK dropped once the new key is proven"
    assert stat.S_IMODE(a.path.stat().st_mode) == 0o600
    raw = a.path.read_text()
    assert BOOT.hex() not in raw and json.loads(raw)["epoch"] == 2


STEPS = [("drop", n) for n in range(4)] + [("no-write", "i"), ("no-write", "r")]


@pytest.mark.parametrize("step", STEPS, ids=[f"{k}-{v}" for k, v in STEPS])
@pytest.mark.parametrize("warm", [0, 2], ids=["from-bootstrap", "after-2-epochs"])
def test_crash_at_every_step_no_lockout_no_reuse(ratchets: tuple[AuthRatchet, AuthRatchet], step: tuple[str, object],
                                                 warm: int) -> None:
    a, b = ratchets
    seen_auth_keys: set[bytes] = set()
    seen_session: set[bytes] = set()

    def record(*results: object) -> None:
        for res in results:
            if isinstance(res, HandshakeResult):
                seen_session.add(res.key())

    for n in range(warm):
        record(*exchange(a, b, a_initiates=n % 2 == 0))
    seen_auth_keys.update(a.load().keys)
    kind, value = step
    record(*(exchange(a, b, crash_at=int(value)) if kind == "drop"  # type: ignore[call-overload]
             else exchange(a, b, no_write=str(value))))
    # Whatever happened, the next exchanges (in both directions) succeed: no lockout.
    for a_first in (True, False, True):
        i, r = exchange(a, b, a_initiates=a_first)
        assert isinstance(i, HandshakeResult) and isinstance(r, HandshakeResult), (i, r)
        assert i.key() == r.key()
        assert i.key() not in seen_session, "a session key repeated"
        seen_session.add(i.key())
        new_key = a.load().keys[0]
        assert a.load().keys == b.load().keys
        assert new_key not in seen_auth_keys, "an authentication key was reused"
        seen_auth_keys.add(new_key)


def test_diverged_beyond_recovery_is_a_clear_error(tmp_path: Path) -> None:
    a, b = AuthRatchet(tmp_path / "a", BOOT), AuthRatchet(tmp_path / "b", os.urandom(32))
    i, r = exchange(a, b)
    assert isinstance(i, HybridKexError) and isinstance(r, HybridKexError)
    assert "pre-shared key" in str(r)


def test_missing_state_without_bootstrap(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--psk-file"):
        AuthRatchet(tmp_path / "none").load()


def test_corrupt_state_file(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_text("{not json")
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match="not a valid authentication ratchet"):
        AuthRatchet(p, BOOT).load()
