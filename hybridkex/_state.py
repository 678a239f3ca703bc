"""Rule 1: everything that decides which handshake step may happen next lives here.

The table maps (role, state, input) to the states that input may lead to.  The handshake
module asks :func:`transition` before acting on any input; an input that is not in the
table is a protocol error and the connection ends in ``ERROR``.
"""

from __future__ import annotations

from enum import Enum

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Role", "State", "Input", "TRANSITIONS", "transition", "REMOTE_INPUTS"]


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(Enum):
    START = "start"
    WAIT_RESP_HELLO = "wait-resp-hello"          # initiator sent InitHello
    WAIT_QKD_MASTER = "wait-qkd-master"          # initiator asked its QKD source for fresh keys
    WAIT_RESP_FINISH = "wait-resp-finish"        # initiator sent InitFinish
    WAIT_INIT_FINISH = "wait-init-finish"        # responder sent RespHello
    WAIT_QKD_SLAVE = "wait-qkd-slave"            # responder asked its QKD source for keys by key_ID
    DONE = "done"
    ERROR = "error"


class Input(Enum):
    START = "start"                      # local: begin as initiator
    INIT_HELLO = "InitHello"
    RESP_HELLO = "RespHello"
    INIT_FINISH = "InitFinish"
    RESP_FINISH = "RespFinish"
    ALERT = "Alert"
    QKD_KEYS = "qkd-keys"                # local: the QKD source answered (keys or failure)


REMOTE_INPUTS = frozenset({Input.INIT_HELLO, Input.RESP_HELLO, Input.INIT_FINISH, Input.RESP_FINISH, Input.ALERT})

_I, _R = Role.INITIATOR, Role.RESPONDER
TRANSITIONS: dict[tuple[Role, State, Input], frozenset[State]] = {
    (_I, State.START, Input.START): frozenset({State.WAIT_RESP_HELLO}),
    # RespHello leads to a QKD fetch when both sides agreed on QKD, else straight to InitFinish.
    (_I, State.WAIT_RESP_HELLO, Input.RESP_HELLO): frozenset({State.WAIT_QKD_MASTER, State.WAIT_RESP_FINISH}),
    (_I, State.WAIT_QKD_MASTER, Input.QKD_KEYS): frozenset({State.WAIT_RESP_FINISH}),
    (_I, State.WAIT_RESP_FINISH, Input.RESP_FINISH): frozenset({State.DONE}),
    (_R, State.START, Input.INIT_HELLO): frozenset({State.WAIT_INIT_FINISH}),
    # InitFinish carries QKD key_IDs when the initiator got keys: the responder fetches them by ID.
    (_R, State.WAIT_INIT_FINISH, Input.INIT_FINISH): frozenset({State.WAIT_QKD_SLAVE, State.DONE}),
    (_R, State.WAIT_QKD_SLAVE, Input.QKD_KEYS): frozenset({State.DONE}),
}


def allowed(role: Role, state: State, event: Input) -> frozenset[State]:
    """The states ``event`` may lead to, or an empty set when it is not allowed."""
    return TRANSITIONS.get((role, state, event), frozenset())


def transition(role: Role, state: State, event: Input, target: State) -> State:
    """Check that ``event`` in ``state`` may lead to ``target`` and return ``target``.

    A remote input off the table is the peer's fault (RemoteProtocolError); a local one is
    ours (LocalProtocolError).  Alerts are always accepted before DONE and lead to ERROR.
    """
    if target is State.ERROR:
        return target
    if target in allowed(role, state, event):
        return target
    if event in REMOTE_INPUTS:
        raise RemoteProtocolError(f"unexpected {event.value} while the {role.value} is in state {state.value}")
    raise LocalProtocolError(f"cannot handle {event.value} while the {role.value} is in state {state.value}")
