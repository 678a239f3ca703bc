"""The rotation messages: round trips and every way a peer can send garbage."""

from __future__ import annotations

import socket
import time

import pytest
from hybridkex import HandshakeTimeout, RemoteProtocolError, TransportError

from hybridkex_wg._wire import (
    Accept,
    AcceptStatus,
    Commit,
    Done,
    DoneStatus,
    Message,
    Request,
    decode,
    encode,
    read_message,
    send_message,
)

MESSAGES: list[Message] = [
    Request(b"a" * 32, b"b" * 32, 7, 9, b"p" * 32),
    Accept(AcceptStatus.OK, 12),
    Accept(AcceptStatus.ROLE_CONFLICT, 0),
    Commit(13, b"t" * 32),
    Done(DoneStatus.INSTALL_FAILED, 13, b"d" * 32),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def test_reprs_hide_tags() -> None:
    assert "ppp" not in repr(MESSAGES[0]) and "ttt" not in repr(MESSAGES[3])


@pytest.mark.parametrize("data, match", [
    (b"", "truncated"),
    (b"HX\x01\x02" + bytes(9), "bad magic"),
    (b"HW\x01\x02" + bytes(9), "version 1"),
    (b"HW\x02\x09" + bytes(17), "unknown rotation message type"),
    (b"HW\x02\x02" + bytes(16), "expected 17"),
    (b"HW\x02\x02" + bytes(18), "expected 17"),
    (b"HW\x02\x02\x07" + bytes(16), "unknown status"),
])
def test_malformed_messages_are_remote_protocol_errors(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(data)


def test_encode_checks_lengths() -> None:
    with pytest.raises(ValueError):
        encode(Request(b"a" * 31, b"b" * 32, 0, 0, bytes(32)))
    with pytest.raises(ValueError):
        encode(Commit(1, b"short"))


def test_read_message_over_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        deadline = time.monotonic() + 2
        send_message(a, MESSAGES[0], deadline)
        send_message(a, MESSAGES[3], deadline)
        assert read_message(b, deadline, Request, "Request") == MESSAGES[0]
        with pytest.raises(RemoteProtocolError, match="expected the peer's Done"):
            read_message(b, deadline, Done, "Done")
        with pytest.raises(HandshakeTimeout):
            read_message(b, time.monotonic() + 0.1, Done, "Done")
        a.close()
        with pytest.raises(TransportError, match="closed"):
            read_message(b, time.monotonic() + 1, Done, "Done")
