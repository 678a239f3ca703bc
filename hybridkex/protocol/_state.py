"""Rule 1: everything that decides which handshake step may happen next lives here.

The table maps (role, state, input) to the handler that acts on that input and the states
it may lead to (``docs/protocol.md`` §7).  The handshake decodes a frame, maps it to an
:class:`Input`, looks the triple up here and only then calls the handler; an input that is
not in the table is a protocol error and the connection ends in ``ERROR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Role", "State", "Input", "Step", "TRANSITIONS", "REMOTE_INPUTS", "lookup"]


class _Member(Enum):
    """Members are singletons compared by identity: hash them by identity too (C), not by name (Python),
    since every step looks up a (role, state, input) key and checks its target."""

    __hash__ = object.__hash__


class Role(_Member):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(_Member):
    START = "start"
    WAIT_RESP_HELLO = "wait-resp-hello"          # initiator sent InitHello
    WAIT_QKD_MASTER = "wait-qkd-master"          # initiator asked its QKD source for a fresh key
    WAIT_RESP_FINISH = "wait-resp-finish"        # initiator sent InitFinish
    WAIT_CHANNEL = "wait-channel"                # initiator sent InitFinish; the channel (TLS) confirms
    WAIT_INIT_FINISH = "wait-init-finish"        # responder sent RespHello
    WAIT_QKD_SLAVE = "wait-qkd-slave"            # responder asked its QKD source for the key by key_ID
    WAIT_INIT_CONFIRM = "wait-init-confirm"      # responder fell back without QKD and waits for the proof
    DONE = "done"
    ERROR = "error"


class Input(_Member):
    START = "start"                      # local: begin as initiator
    INIT_HELLO = "InitHello"
    RESP_HELLO = "RespHello"
    INIT_FINISH = "InitFinish"
    RESP_FINISH = "RespFinish"
    INIT_CONFIRM = "InitConfirm"
    COOKIE_REPLY = "CookieReply"
    ALERT = "Alert"
    QKD_KEYS = "qkd-keys"                # local: the QKD source delivered
    QKD_FAILED = "qkd-failed"            # local: the QKD source failed
    CHANNEL_CONFIRMED = "channel-confirmed"  # local: the channel above (TLS Finished) proved the peer's key


REMOTE_INPUTS = frozenset({Input.INIT_HELLO, Input.RESP_HELLO, Input.INIT_FINISH, Input.RESP_FINISH,
                           Input.INIT_CONFIRM, Input.COOKIE_REPLY, Input.ALERT})


@dataclass(frozen=True)
class Step:
    """What an input does in a state: the handler method that acts, and where it may lead."""

    handler: str
    targets: frozenset[State]


def _step(handler: str, *targets: State) -> Step:
    return Step(handler, frozenset(targets))


_I, _R = Role.INITIATOR, Role.RESPONDER
TRANSITIONS: dict[tuple[Role, State, Input], Step] = {
    (_I, State.START, Input.START): _step("_initiate", State.WAIT_RESP_HELLO),
    # A CookieReply makes the initiator send its InitHello again, with mac2 (once).
    (_I, State.WAIT_RESP_HELLO, Input.COOKIE_REPLY): _step("_on_cookie_reply", State.WAIT_RESP_HELLO),
    # RespHello leads to a QKD fetch when both sides agreed on QKD, else straight to InitFinish.
    (_I, State.WAIT_RESP_HELLO, Input.RESP_HELLO): _step("_on_resp_hello", State.WAIT_QKD_MASTER,
                                                         State.WAIT_RESP_FINISH, State.WAIT_CHANNEL),
    (_I, State.WAIT_QKD_MASTER, Input.QKD_KEYS): _step("_on_qkd_keys", State.WAIT_RESP_FINISH, State.WAIT_CHANNEL),
    (_I, State.WAIT_QKD_MASTER, Input.QKD_FAILED): _step("_on_qkd_failed", State.WAIT_RESP_FINISH,
                                                         State.WAIT_CHANNEL),
    (_I, State.WAIT_RESP_FINISH, Input.RESP_FINISH): _step("_on_resp_finish", State.DONE),
    # With channel confirmation the responder sends RespFinish only when it fell back without QKD.
    (_I, State.WAIT_CHANNEL, Input.RESP_FINISH): _step("_on_resp_finish", State.DONE),
    (_I, State.WAIT_CHANNEL, Input.CHANNEL_CONFIRMED): _step("_on_channel_confirmed", State.DONE),
    # InitHello: RespHello, or (under load, no valid mac2) a CookieReply and stay in START.
    (_R, State.START, Input.INIT_HELLO): _step("_on_init_hello", State.START, State.WAIT_INIT_FINISH),
    # InitFinish carries the QKD key_IDs when the initiator got a key: the responder fetches it by key_ID.
    (_R, State.WAIT_INIT_FINISH, Input.INIT_FINISH): _step("_on_init_finish", State.WAIT_QKD_SLAVE, State.DONE),
    (_R, State.WAIT_QKD_SLAVE, Input.QKD_KEYS): _step("_on_qkd_keys", State.DONE),
    (_R, State.WAIT_QKD_SLAVE, Input.QKD_FAILED): _step("_on_qkd_failed", State.WAIT_INIT_CONFIRM),
    (_R, State.WAIT_INIT_CONFIRM, Input.INIT_CONFIRM): _step("_on_init_confirm", State.DONE),
}
# An alert is accepted in every state before the end, and always ends in ERROR.
for (_role, _state, _input) in list(TRANSITIONS):
    TRANSITIONS.setdefault((_role, _state, Input.ALERT), _step("_on_alert", State.ERROR))


def lookup(role: Role, state: State, event: Input) -> Step:
    """The step for ``event`` in ``state``, or the error that says why there is none.

    A remote input off the table is the peer's fault (RemoteProtocolError); a local one is
    ours (LocalProtocolError).
    """
    step = TRANSITIONS.get((role, state, event))
    if step is not None:
        return step
    if state in (State.DONE, State.ERROR):
        raise LocalProtocolError(f"the handshake is already {state.value}; start a new one")
    if event in REMOTE_INPUTS:
        raise RemoteProtocolError(f"unexpected {event.value} while the {role.value} is in state {state.value}")
    raise LocalProtocolError(f"cannot handle {event.value} while the {role.value} is in state {state.value}")
