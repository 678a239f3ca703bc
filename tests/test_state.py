"""The transition table: every (role, state, input) pair, on and off the table (after h2's state tests)."""

from __future__ import annotations

import itertools
import os
import uuid
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hybridkex._handshake as handshake_module
from hybridkex import (
    HandshakeComplete,
    HandshakeConfig,
    Initiator,
    LocalProtocolError,
    NeedQKDKeys,
    PSKAuthenticator,
    QKDKey,
    QKDUnavailable,
    RemoteProtocolError,
    Responder,
    SendMessage,
    get_backend,
)
from hybridkex._state import REMOTE_INPUTS, TRANSITIONS, Input, Role, State, allowed, transition

TERMINAL = frozenset({State.DONE, State.ERROR})
PAIRS = list(itertools.product(Role, State, Input))


def _pair_id(pair: tuple[Role, State, Input]) -> str:
    role, state, event = pair
    return f"{role.value}-{state.value}-{event.value}"


def _reachable(role: Role) -> set[State]:
    """States reachable from START through the table (ERROR is always reachable, by any failure)."""
    seen = {State.START}
    todo = deque([State.START])
    while todo:
        state = todo.popleft()
        for (r, s, _), targets in TRANSITIONS.items():
            if r is role and s is state:
                for t in targets - seen:
                    seen.add(t)
                    todo.append(t)
    return seen


def test_remote_inputs_are_the_wire_messages() -> None:
    assert REMOTE_INPUTS == frozenset(Input) - {Input.START, Input.QKD_KEYS}


def test_table_is_well_formed() -> None:
    for (role, state, event), targets in TRANSITIONS.items():
        assert targets, f"{role}, {state}, {event} leads nowhere"
        assert state not in TERMINAL, f"{state} is final but has a way out"
        assert State.START not in targets and State.ERROR not in targets
        # A role never acts on its own messages: the initiator receives Resp*, the responder Init*.
        if event in REMOTE_INPUTS:
            own = "Init" if role is Role.INITIATOR else "Resp"
            assert not event.value.startswith(own)


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_every_role_state_input(pair: tuple[Role, State, Input]) -> None:
    role, state, event = pair
    listed = TRANSITIONS.get(pair, frozenset())
    assert allowed(role, state, event) == listed
    # Failing is always possible and always ends in ERROR.
    assert transition(role, state, event, State.ERROR) is State.ERROR
    for target in State:
        if target is State.ERROR:
            continue
        if target in listed:
            assert transition(role, state, event, target) is target
            continue
        expected = RemoteProtocolError if event in REMOTE_INPUTS else LocalProtocolError
        with pytest.raises((RemoteProtocolError, LocalProtocolError)) as info:
            transition(role, state, event, target)
        assert type(info.value) is expected, (pair, target, info.value)
        assert role.value in str(info.value) and state.value in str(info.value) and event.value in str(info.value)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_no_dead_ends_and_done_reachable(role: Role) -> None:
    reachable = _reachable(role)
    assert State.DONE in reachable
    for state in reachable - TERMINAL:
        assert any(r is role and s is state for (r, s, _) in TRANSITIONS), f"{role.value} is stuck in {state.value}"
    # Every state the table lists for this role can actually be reached from START.
    sources = {s for (r, s, _) in TRANSITIONS if r is role}
    assert sources <= reachable


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_terminal_states_accept_nothing(role: Role) -> None:
    for state, event in itertools.product(TERMINAL, Input):
        assert allowed(role, state, event) == frozenset()


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(list(Role)), choices=st.lists(st.tuples(st.sampled_from(list(Input)),
                                                                    st.sampled_from(list(State))), max_size=12))
def test_random_walks_follow_the_table(role: Role, choices: list[tuple[Input, State]]) -> None:
    """Any sequence of inputs either follows the table or fails with the error its origin calls for."""
    state = State.START
    for event, target in choices:
        if state in TERMINAL:
            break
        if target is not State.ERROR and target in allowed(role, state, event):
            state = transition(role, state, event, target)
            continue
        if target is State.ERROR:
            state = transition(role, state, event, target)
            continue
        error = RemoteProtocolError if event in REMOTE_INPUTS else LocalProtocolError
        with pytest.raises(error):
            transition(role, state, event, target)
        state = State.ERROR
    assert state in _reachable(role) | {State.ERROR}


# -- the state machines ask the table for every step they take --------------------------------------------

BACKEND = get_backend("cryptography")
PSK = bytes(range(32))


def _drive(i_policy: str, r_policy: str, *, fail: str = "") -> tuple[Initiator, Responder]:
    ini = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), (1, 3), i_policy, backend=BACKEND))
    res = Responder(HandshakeConfig(PSKAuthenticator([PSK]), (1, 3), r_policy, backend=BACKEND))
    issued: dict[uuid.UUID, bytes] = {}
    queue: deque[tuple[Initiator | Responder, list[object]]] = deque([(ini, list(ini.initiate()))])
    while queue:
        who, events = queue.popleft()
        other: Initiator | Responder = res if who is ini else ini
        for ev in events:
            if isinstance(ev, SendMessage):
                queue.append((other, list(other.receive(ev.data))))
            elif isinstance(ev, NeedQKDKeys):
                if fail == ev.role:
                    queue.append((who, list(who.qkd_failed(QKDUnavailable("KME unreachable")))))
                elif ev.role == "master":
                    key = QKDKey(uuid.uuid4(), os.urandom(ev.size_bits // 8))
                    issued[key.key_id] = key.key
                    queue.append((who, list(who.qkd_keys([key]))))
                else:
                    queue.append((who, list(who.qkd_keys([QKDKey(k, issued[k]) for k in ev.key_ids]))))
            else:
                assert isinstance(ev, HandshakeComplete)
    return ini, res


def test_handshakes_take_every_listed_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real handshakes use only table entries, and between them they use every entry (no dead rows)."""
    taken: set[tuple[Role, State, Input, State]] = set()

    def recording(role: Role, state: State, event: Input, target: State) -> State:
        taken.add((role, state, event, target))
        return transition(role, state, event, target)

    monkeypatch.setattr(handshake_module, "transition", recording)
    for i_policy, r_policy, fail in [("off", "off", ""), ("required", "required", ""),
                                     ("preferred", "preferred", "master"), ("preferred", "preferred", "slave")]:
        ini, res = _drive(i_policy, r_policy, fail=fail)
        assert ini.state is State.DONE and res.state is State.DONE
    listed = {(r, s, e, t) for (r, s, e), targets in TRANSITIONS.items() for t in targets}
    assert taken == listed


def test_state_machine_refuses_off_table_local_inputs() -> None:
    ini = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND))
    ini.initiate()
    # START again: a local misuse, not the peer's fault, and no alert goes to the peer.
    with pytest.raises(LocalProtocolError, match="start"):
        ini.initiate()
    assert ini.state is State.ERROR and ini.error_alert is None


@pytest.mark.parametrize("method", ["qkd_keys", "qkd_failed"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_qkd_answers_without_a_request_are_local_errors(method: str, role: str) -> None:
    config = HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND)
    conn: Initiator | Responder = Initiator(config) if role == "initiator" else Responder(config)
    with pytest.raises(LocalProtocolError, match="no QKD keys were asked for"):
        if method == "qkd_keys":
            conn.qkd_keys([QKDKey(uuid.uuid4(), bytes(32))])
        else:
            conn.qkd_failed(QKDUnavailable("down"))
    assert conn.state is State.ERROR
