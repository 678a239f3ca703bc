"""The rotation messages around the hybridkex handshake, version 2.

One rotation is one TCP connection::

    initiator                                                     responder
    Request (both WireGuard keys, installed epoch + proof, highest epoch, interval, deadline) ->
                                   <- Accept (status, highest epoch, interval, deadline)
    ======== hybridkex handshake, context = label || keys || epoch ========
    [initiator installs the new PSK]
    Commit (epoch, MAC)            ->
                                   [responder installs the new PSK]
                                   <- Done (status, epoch, MAC)

Frame: ``"HW" | version u8 | type u8 | fixed-size body``.  Every body has a fixed size,
so a reader knows exactly how much to read after the 4-byte header and never reads into
the next message.  Request and Accept are unauthenticated: what they carry is either
bound into the handshake context (keys, epoch) or checked with a MAC (the proof), and the
receiver acts on none of it before the handshake succeeds.  Version 2 adds the announced
interval and deadline (milliseconds, u32) so both ends can use the stricter.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from hybridkex import RemoteProtocolError
from hybridkex.io import recv_exact, send_all

__all__ = [
    "VERSION", "MAGIC", "MessageType", "AcceptStatus", "DoneStatus", "Request", "Accept", "Commit", "Done",
    "Message", "encode", "decode", "read_message", "send_message", "TAG_SIZE",
]

MAGIC = b"HW"
VERSION = 2
HEADER = struct.Struct(">2sBB")
TAG_SIZE = 32
_KEY = 32


class MessageType(IntEnum):
    REQUEST = 1
    ACCEPT = 2
    COMMIT = 3
    DONE = 4


class AcceptStatus(IntEnum):
    """The responder's answer to a Request."""

    OK = 0
    UNKNOWN_PEER = 1
    """No such (interface key, peer key) pair in the responder's configuration."""
    BUSY = 2
    """A rotation for this peer is already running; retry later."""
    ROLE_CONFLICT = 3
    """The responder is configured to initiate for this pair: both sides think they connect."""
    EPOCH_REFUSED = 4
    """The Request's highest epoch is implausibly far beyond the responder's (forged or confused)."""


class DoneStatus(IntEnum):
    INSTALLED = 0
    INSTALL_FAILED = 1
    """The responder could not install the key (and restored the previous one)."""


@dataclass(frozen=True)
class Request:
    initiator_public: bytes
    responder_public: bytes
    installed_epoch: int
    """Epoch of the shared key the initiator has installed; 0 for none (or a stale random key)."""
    highest_epoch: int
    """Highest epoch the initiator has used; the new epoch is max(both highest) + 1."""
    proof: bytes = field(repr=False)
    """MAC under the installed epoch's confirmation key (zeros with installed_epoch 0)."""
    interval_ms: int = 0
    """The initiator's rotation interval in milliseconds (0: not announced)."""
    deadline_ms: int = 0
    """The initiator's deadline in milliseconds (0: not announced)."""


@dataclass(frozen=True)
class Accept:
    status: AcceptStatus
    highest_epoch: int
    interval_ms: int = 0
    """The responder's rotation interval in milliseconds (0: not announced)."""
    deadline_ms: int = 0
    """The responder's deadline in milliseconds (0: not announced)."""


@dataclass(frozen=True)
class Commit:
    epoch: int
    tag: bytes = field(repr=False)


@dataclass(frozen=True)
class Done:
    status: DoneStatus
    epoch: int
    tag: bytes = field(repr=False)


Message = Request | Accept | Commit | Done

_BODIES: dict[MessageType, struct.Struct] = {
    MessageType.REQUEST: struct.Struct(f">{_KEY}s{_KEY}sQQ{TAG_SIZE}sII"),
    MessageType.ACCEPT: struct.Struct(">BQII"),
    MessageType.COMMIT: struct.Struct(f">Q{TAG_SIZE}s"),
    MessageType.DONE: struct.Struct(f">BQ{TAG_SIZE}s"),
}


def encode(message: Message) -> bytes:
    """Serialize one message (header + body)."""
    if isinstance(message, Request):
        kind, body = MessageType.REQUEST, _BODIES[MessageType.REQUEST].pack(
            message.initiator_public, message.responder_public, message.installed_epoch, message.highest_epoch,
            message.proof, message.interval_ms, message.deadline_ms)
        if len(message.initiator_public) != _KEY or len(message.responder_public) != _KEY or \
                len(message.proof) != TAG_SIZE:
            raise ValueError("Request fields have the wrong length")
    elif isinstance(message, Accept):
        kind, body = MessageType.ACCEPT, _BODIES[MessageType.ACCEPT].pack(message.status, message.highest_epoch,
                                                                           message.interval_ms, message.deadline_ms)
    elif isinstance(message, Commit):
        if len(message.tag) != TAG_SIZE:
            raise ValueError("Commit tag has the wrong length")
        kind, body = MessageType.COMMIT, _BODIES[MessageType.COMMIT].pack(message.epoch, message.tag)
    elif isinstance(message, Done):
        if len(message.tag) != TAG_SIZE:
            raise ValueError("Done tag has the wrong length")
        kind, body = MessageType.DONE, _BODIES[MessageType.DONE].pack(message.status, message.epoch, message.tag)
    else:
        raise TypeError(f"not a rotation message: {type(message).__name__}")
    return HEADER.pack(MAGIC, VERSION, kind) + body


def _parse_header(header: bytes) -> MessageType:
    magic, version, kind = HEADER.unpack(header)
    if magic != MAGIC:
        raise RemoteProtocolError("the peer did not speak the WireGuard rotation protocol (bad magic); is the "
                                  "endpoint a 'hybridkex wg' listener?")
    if version != VERSION:
        raise RemoteProtocolError(f"the peer speaks rotation protocol version {version}, this side {VERSION}; "
                                  "upgrade the older side")
    try:
        return MessageType(kind)
    except ValueError:
        raise RemoteProtocolError(f"unknown rotation message type {kind}") from None


def decode(data: bytes) -> Message:
    """Parse one whole message; the length must match its type exactly."""
    if len(data) < HEADER.size:
        raise RemoteProtocolError("truncated rotation message")
    kind = _parse_header(data[:HEADER.size])
    body = data[HEADER.size:]
    layout = _BODIES[kind]
    if len(body) != layout.size:
        raise RemoteProtocolError(f"{kind.name.lower()} message is {len(body)} bytes, expected {layout.size}")
    values = layout.unpack(body)
    try:
        if kind is MessageType.REQUEST:
            return Request(*values)
        if kind is MessageType.ACCEPT:
            return Accept(AcceptStatus(values[0]), *values[1:])
        if kind is MessageType.COMMIT:
            return Commit(*values)
        return Done(DoneStatus(values[0]), values[1], values[2])
    except ValueError:
        raise RemoteProtocolError(f"{kind.name.lower()} message has an unknown status code") from None


def read_message(sock: socket.socket, deadline: float, expected: type[Message], what: str) -> Message:
    """Read exactly one message of type ``expected`` (header first, then its fixed-size body)."""
    header = recv_exact(sock, HEADER.size, deadline, what)
    kind = _parse_header(header)
    body = recv_exact(sock, _BODIES[kind].size, deadline, what)
    message = decode(header + body)
    if not isinstance(message, expected):
        raise RemoteProtocolError(f"expected the peer's {what}, got a {kind.name.lower()} message")
    return message


def send_message(sock: socket.socket, message: Message, deadline: float) -> None:
    """Send one message before ``deadline`` (a ``time.monotonic()`` value)."""
    send_all(sock, encode(message), deadline)
