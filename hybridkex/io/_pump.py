"""The event pump: one loop that drives a sans-I/O handshake, whatever does the I/O.

:func:`pump` is a generator.  It runs the state machine and yields what it needs done --
:class:`Send` bytes, :data:`READ` one frame, :class:`AskQKD` for keys, :data:`AWAIT_CLOSE`
after the last message -- and is sent back the answer (the frame, the keys or the QKD error,
the frame after the last message or None).  The blocking adapter (:func:`run_handshake`) and
the asyncio adapter (:func:`run_handshake_async`) only perform those steps, so the two cannot
drift apart.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Final

from .._errors import PeerAlertError, QKDError, QKDSourceMissing, RemoteProtocolError
from ..protocol._handshake import (
    Connection,
    Event,
    HandshakeComplete,
    HandshakeResult,
    Initiator,
    NeedChannelConfirmation,
    NeedQKDKeys,
    SendMessage,
)
from ..protocol._qkd import QKDKey, QKDKeySource
from ..protocol._wire import Alert, decode

__all__ = ["pump", "Send", "AskQKD", "READ", "AWAIT_CLOSE", "Step", "ask_qkd", "AWAIT_CLOSE_SECONDS"]

#: How long the side that sent the last message waits for the peer's close or alert.
AWAIT_CLOSE_SECONDS = 5.0


@dataclass(frozen=True)
class Send:
    """Send these bytes to the peer."""

    data: bytes


@dataclass(frozen=True)
class AskQKD:
    """Ask the QKD key source; answer with the keys or the :class:`QKDError` it raised."""

    request: NeedQKDKeys


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Read one whole frame and answer with its bytes.
READ: Final = _Marker("READ")
#: Wait (at most :data:`AWAIT_CLOSE_SECONDS`) for the peer to close or to send one more frame;
#: answer with that frame, or None when the peer closed, reset or stayed silent.
AWAIT_CLOSE: Final = _Marker("AWAIT_CLOSE")

Step = Send | AskQKD | _Marker


def ask_qkd(source: QKDKeySource | None, request: NeedQKDKeys) -> list[QKDKey] | QKDError:
    """Answer a :class:`NeedQKDKeys` from ``source`` (a blocking call: asyncio runs it in a thread)."""
    if source is None:
        return QKDSourceMissing("no QKD key source is configured on this side")
    try:
        if request.role == "master":
            return source.get_new_keys(request.number, request.size_bits)
        if request.peer_sae_id:
            return source.get_keys_from(list(request.key_ids), request.peer_sae_id)
        return source.get_keys_by_id(list(request.key_ids))
    except QKDError as exc:
        return exc


def pump(conn: Connection, *, await_close: bool = False) -> Generator[Step, object, HandshakeResult]:
    """Drive ``conn`` (an Initiator or Responder) to its result; see the module docstring.

    Each side returns only once it holds the peer's proof of the final session secret (a
    closed connection never counts as one).  An initiator with channel confirmation returns at
    :class:`NeedChannelConfirmation` with the provisional result: the caller's channel (TLS)
    then confirms it.  With ``await_close`` the side that sent the handshake's last message
    yields :data:`AWAIT_CLOSE` before returning, so that an altered last message (the peer
    answers with an alert) leaves neither side with a key.
    """
    events: list[Event] = conn.initiate() if isinstance(conn, Initiator) else conn.receive(_frame((yield READ)))
    while True:
        follow_up: list[Event] = []
        sent_last = False
        for event in events:
            if isinstance(event, SendMessage):
                yield Send(event.data)
                sent_last = True
            elif isinstance(event, NeedQKDKeys):
                answer = yield AskQKD(event)
                follow_up += conn.qkd_failed(answer) if isinstance(answer, QKDError) \
                    else conn.qkd_keys(answer)  # type: ignore[arg-type]
            elif isinstance(event, (HandshakeComplete, NeedChannelConfirmation)):
                if await_close and sent_last and isinstance(event, HandshakeComplete):
                    _after_last((yield AWAIT_CLOSE))
                return event.result
        events = follow_up or conn.receive(_frame((yield READ)))


def _frame(answer: object) -> bytes:
    if not isinstance(answer, bytes):
        raise TypeError(f"the pump expected a frame, got {type(answer).__name__}")
    return answer


def _after_last(frame: object) -> None:
    """The peer either closes (it accepted the message) or sends an alert (its check of that
    message failed, so no key).  The close is not the proof of the peer's key (that came
    before); it only rules out the alert."""
    if frame is None:
        return
    message = decode(_frame(frame))
    if isinstance(message, Alert):
        raise PeerAlertError(f"peer aborted the handshake after this side's last message: {message.text}",
                             int(message.code))
    raise RemoteProtocolError("peer sent data after the handshake instead of closing")
