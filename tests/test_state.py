"""The state machines in every (role, state): real machines driven there, then fed anything (after h2).

Each test drives a real initiator/responder pair to a state, then hands the machine in that
state an input: garbage, any valid frame, a mutation of the real next frame, or a local call
(QKD keys, QKD failure, channel confirmation).  The property: the real next input moves it
along the table; anything else ends in ERROR with a typed error (the peer's fault for a
remote input, ours for a local call), no result, and an alert only where one is due.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from hybridkex_sim import Delivery, Pair, QKDPair
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_wire import any_bytes, frames

from hybridkex import (
    HybridKexError,
    LocalProtocolError,
    PeerAlertError,
    QKDKey,
    QKDUnavailable,
    RemoteProtocolError,
    UnverifiedMessage,
)
from hybridkex.backends import get_backend
from hybridkex.protocol import (
    HandshakeComplete,
    HandshakeConfig,
    Initiator,
    PSKAuthenticator,
    Responder,
    SendMessage,
)
from hybridkex.protocol._state import TRANSITIONS, Input, Role, State, lookup
from hybridkex.protocol._wire import HEADER_SIZE, MAC_SIZE, Alert, AlertCode, decode, encode

BACKEND = get_backend("cryptography")
PSK = bytes(range(32))
FUZZ_SM = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(300)

# (role, state, how to get there): "channel" uses channel confirmation, "fallback" makes the slave's KME fail.
REACHABLE = [
    (Role.INITIATOR, State.START, ""), (Role.INITIATOR, State.WAIT_RESP_HELLO, ""),
    (Role.INITIATOR, State.WAIT_QKD_MASTER, ""), (Role.INITIATOR, State.WAIT_RESP_FINISH, ""),
    (Role.INITIATOR, State.WAIT_CHANNEL, "channel"), (Role.INITIATOR, State.DONE, ""),
    (Role.RESPONDER, State.START, ""), (Role.RESPONDER, State.WAIT_INIT_FINISH, ""),
    (Role.RESPONDER, State.WAIT_QKD_SLAVE, ""), (Role.RESPONDER, State.WAIT_INIT_CONFIRM, "fallback"),
    (Role.RESPONDER, State.DONE, ""),
]


def _configs(channel: bool) -> tuple[HandshakeConfig, HandshakeConfig]:
    # Channel confirmation applies only where no responder fallback is possible: QKD required there.
    common = {"backend": BACKEND, "qkd_policy": "required" if channel else "preferred",
              "channel_confirmation": channel}
    return (HandshakeConfig(PSKAuthenticator([PSK], name="alice", peer_name="bob"), **common),  # type: ignore[arg-type]
            HandshakeConfig(PSKAuthenticator([PSK], name="bob", peer_name="alice"), **common))  # type: ignore[arg-type]


class Drive:
    """A real handshake paused when ``role`` reaches ``state``; ``next_input`` is what it was about to get.

    It is the shared pair driver (:class:`hybridkex_sim.Pair`), stopped before the first delivery
    after ``role`` reached ``state``; the channel confirmation is left to the test."""

    def __init__(self, role: Role, state: State, how: str) -> None:
        i_config, r_config = _configs(how == "channel")
        self.ini, self.res = Initiator(i_config), Responder(r_config)
        self.conn: Initiator | Responder = self.ini if role is Role.INITIATOR else self.res
        self.next_input: tuple[Input, object] | None = None
        self.frames: list[bytes] = []
        if self.conn.state is state:
            self.next_input = (Input.START, None) if role is Role.INITIATOR else None
            if role is Role.RESPONDER:
                self.next_input = (Input.INIT_HELLO, self._first_hello())
            return
        link = QKDPair(fail_slave=QKDUnavailable("KME down") if how == "fallback" else None)
        pair = Pair(self.ini, self.res, qkd=link, confirm_channel=False)
        outcome = pair.run(pause=lambda d: self.conn.state is state)
        self.frames = outcome.frames
        side = "i" if role is Role.INITIATOR else "r"
        if outcome.paused is not None and outcome.paused.to == side:
            self.next_input = self._as_input(outcome.paused)
        assert self.conn.state is state, f"could not reach {state}"

    def _first_hello(self) -> bytes:
        probe = Initiator(self.ini.config)
        first = probe.initiate()[0]
        assert isinstance(first, SendMessage)
        return first.data

    @staticmethod
    def _as_input(d: Delivery) -> tuple[Input, object]:
        if d.kind == "frame":
            message = decode(d.data)  # type: ignore[arg-type]
            return {"InitHello": Input.INIT_HELLO, "RespHello": Input.RESP_HELLO, "InitFinish": Input.INIT_FINISH,
                    "RespFinish": Input.RESP_FINISH, "InitConfirm": Input.INIT_CONFIRM}[type(message).__name__], d.data
        return Input.QKD_KEYS, d.data


def _check_refusal(conn: Initiator | Responder, call: Callable[[], object], remote: bool, was: State) -> None:
    try:
        call()
    except HybridKexError as exc:
        error: HybridKexError = exc
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"{type(exc).__name__} escaped the {conn.role.value}: {exc}") from exc
    else:  # pragma: no cover - the property under test
        raise AssertionError(f"the {conn.role.value} in {was.value} accepted an input it must refuse")
    assert conn.result is None or was is State.DONE
    if was in (State.DONE, State.ERROR):
        assert isinstance(error, LocalProtocolError) and conn.state is was  # nothing changes after the end
        return
    assert conn.state is State.ERROR
    if remote:
        assert isinstance(error, RemoteProtocolError), error
    else:
        assert isinstance(error, (LocalProtocolError, RemoteProtocolError, QKDUnavailable)), error
    if isinstance(error, (PeerAlertError, UnverifiedMessage)):
        assert conn.error_alert is None  # never answer an alert; tell a stranger nothing
    else:
        alert = decode(conn.error_alert or b"")
        assert isinstance(alert, Alert)
        if isinstance(error, LocalProtocolError):
            assert alert.code is AlertCode.INTERNAL  # our fault is not reported as the peer's


PAIR_IDS = [f"{r.value}-{s.value}" for r, s, _ in REACHABLE]


@pytest.mark.parametrize("role, state, how", REACHABLE, ids=PAIR_IDS)
@FUZZ_SM
@given(data=st.data())
def test_remote_input_in_every_state(role: Role, state: State, how: str, data: st.DataObject) -> None:
    drive = Drive(role, state, how)
    conn, real = drive.conn, drive.next_input
    real_frame = real[1] if real is not None and isinstance(real[1], bytes) else None
    choices = [any_bytes, frames]
    if real_frame is not None:  # mutations of the real next frame: a bit flipped, cut short, or grown
        n = len(real_frame)
        choices.append(st.builds(lambda pos, bit: _flip(real_frame, pos, bit), st.integers(0, n - 1),
                                 st.integers(0, 7)))
        choices.append(st.integers(HEADER_SIZE, n - 1).map(lambda cut: _reframe(real_frame[:cut])))
        choices.append(st.binary(min_size=1, max_size=8).map(lambda extra: _reframe(real_frame + extra)))
    frame = data.draw(st.one_of(*choices), label="frame")
    assume(frame != real_frame)
    if (role, state) == (Role.RESPONDER, State.START) and real_frame is not None \
            and len(frame) == len(real_frame) and frame[:-MAC_SIZE] == real_frame[:-MAC_SIZE]:
        return  # only mac2 differs: mac2 is checked under load only (test_handshake covers the cookie)
    _check_refusal(conn, lambda: conn.receive(frame), True, state)


def _reframe(frame: bytes) -> bytes:
    """The same header with a length that matches the (changed) body, so the body gets parsed."""
    return frame[:4] + (len(frame) - HEADER_SIZE).to_bytes(4, "big") + frame[HEADER_SIZE:]


def _flip(frame: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(frame)
    out[pos] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("role, state, how", REACHABLE, ids=PAIR_IDS)
@FUZZ_SM
@given(data=st.data())
def test_local_input_in_every_state(role: Role, state: State, how: str, data: st.DataObject) -> None:
    drive = Drive(role, state, how)
    conn = drive.conn
    kind = data.draw(st.sampled_from([Input.QKD_KEYS, Input.QKD_FAILED, Input.CHANNEL_CONFIRMED, Input.START]))
    size = data.draw(st.sampled_from([16, 32, 33]))
    if kind is Input.QKD_KEYS:
        def call() -> object:
            return conn.qkd_keys([QKDKey(uuid.uuid4(), os.urandom(size))])
    elif kind is Input.QKD_FAILED:
        def call() -> object:
            return conn.qkd_failed(QKDUnavailable("down"))
    elif kind is Input.CHANNEL_CONFIRMED:
        def call() -> object:
            return conn.channel_confirmed() if isinstance(conn, Initiator) else conn._run(
                lambda: conn._step(Input.CHANNEL_CONFIRMED))
    else:
        def call() -> object:
            return conn.initiate() if isinstance(conn, Initiator) else conn._run(lambda: conn._step(Input.START))
    on_table = (role, state, kind) in TRANSITIONS
    if not on_table:
        _check_refusal(conn, call, False, state)
        return
    # On the table: it acts, and ends where the table says (or fails cleanly).
    step = lookup(role, state, kind)
    try:
        call()
    except HybridKexError:
        assert conn.state is State.ERROR and conn.result is None
    else:
        assert conn.state in step.targets


def test_the_real_sequences_reach_done() -> None:
    for how in ("", "channel", "fallback"):
        drive = Drive(Role.RESPONDER, State.DONE, how)
        assert drive.res.result is not None
        if how == "channel":
            assert drive.ini.state is State.WAIT_CHANNEL
            events = drive.ini.channel_confirmed()
            assert isinstance(events[0], HandshakeComplete)
            assert events[0].result.key() == drive.res.result.key()
        else:
            if drive.ini.state is State.WAIT_RESP_FINISH:
                drive.ini.receive(drive.frames[-1])  # the RespFinish the responder sent as it finished
            assert drive.ini.state is State.DONE and drive.ini.result is not None
            assert drive.ini.result.key() == drive.res.result.key()


@pytest.mark.parametrize("role, state, how", REACHABLE, ids=PAIR_IDS)
def test_an_alert_ends_every_unfinished_state_and_none_after_the_end(role: Role, state: State, how: str) -> None:
    """A real alert frame fed to a real handshake paused in each reachable state: before the end
    it ends the handshake (ERROR, a PeerAlertError with the peer's code, no result, no alert of
    its own in answer); after the end nothing changes."""
    drive = Drive(role, state, how)
    conn = drive.conn
    alert = encode(Alert(AlertCode.AUTH_FAILED))
    if state is State.DONE:
        result = conn.result
        with pytest.raises(LocalProtocolError):
            conn.receive(alert)
        assert conn.state is State.DONE and conn.result is result
        return
    with pytest.raises(PeerAlertError) as raised:
        conn.receive(alert)
    assert raised.value.code == AlertCode.AUTH_FAILED
    assert conn.state is State.ERROR and conn.result is None and not conn.error_alert


def test_an_exception_inside_a_handler_ends_in_error_with_an_internal_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler (here: the KEM blowing up) is our fault: ERROR, a typed local error, an
    INTERNAL alert for the peer, no raw exception escaping."""
    ini, res = (Initiator(c) if i == 0 else Responder(c) for i, c in enumerate(_configs(False)))
    hello = ini.initiate()[0]
    assert isinstance(hello, SendMessage)
    kem_class = type(BACKEND.kem("ml-kem-768"))

    def broken(*args: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(kem_class, "encapsulate", broken)
    with pytest.raises(LocalProtocolError, match="internal error in the responder"):
        res.receive(hello.data)
    assert res.state is State.ERROR
    assert decode(res.error_alert or b"") == Alert(AlertCode.INTERNAL)


def test_channel_confirmation_is_only_for_the_initiator_waiting_on_its_channel() -> None:
    drive = Drive(Role.INITIATOR, State.WAIT_RESP_FINISH, "")
    with pytest.raises(LocalProtocolError, match="cannot handle channel-confirmed"):
        drive.ini.channel_confirmed()
