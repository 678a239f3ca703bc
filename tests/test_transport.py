"""The blocking and asyncio adapters over real loopback TCP: framing, timeouts, dead peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from hybridkex import ConfigError, HandshakeTimeout, RemoteProtocolError, TransportError, UnverifiedMessage
from hybridkex.backends import get_backend
from hybridkex.io import connect, listen, parse_address, run_handshake, run_handshake_async
from hybridkex.protocol import HandshakeConfig, Initiator, PSKAuthenticator, Responder, SendMessage

PSK = os.urandom(32)
#: A frame header of this version for an InitHello (magic, version 2, type 1).
HX_V2_INIT_HELLO = b"HX\x02\x01"
BACKEND = get_backend("cryptography")


def config(timeout: float = 10.0, *, role: str = "responder") -> HandshakeConfig:
    """PSK mode binds both names: the initiator is alice, the responder bob."""
    name, peer = ("alice", "bob") if role == "initiator" else ("bob", "alice")
    return HandshakeConfig(PSKAuthenticator([PSK], name=name, peer_name=peer), backend=BACKEND, timeout=timeout)


def iconfig(timeout: float = 10.0) -> HandshakeConfig:
    return config(timeout, role="initiator")


@contextlib.contextmanager
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = listen(("127.0.0.1", 0))
    client = connect(server.getsockname()[:2])
    peer, _ = server.accept()
    server.close()
    try:
        yield client, peer
    finally:
        client.close()
        peer.close()


def test_handshake_over_tcp() -> None:
    with pair() as (a, b):
        box: dict[str, object] = {}
        t = threading.Thread(target=lambda: box.setdefault("r", run_handshake(b, Responder(config()))))
        t.start()
        i = run_handshake(a, Initiator(iconfig()))
        t.join(10)
        r = box["r"]
        assert i.key() == r.key()  # type: ignore[attr-defined]


def _responder_error(raw: bytes, *, close: bool = True, timeout: float = 5.0) -> Exception:
    with pair() as (a, b):
        a.sendall(raw)
        if close:
            a.shutdown(socket.SHUT_WR)
        with pytest.raises(Exception) as info:
            run_handshake(b, Responder(config(timeout)), timeout=timeout)
        return info.value


def test_garbage_is_not_a_peer() -> None:
    err = _responder_error(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(err, RemoteProtocolError) and "not a hybridkex peer" in str(err)


def test_oversized_frame_rejected_from_header() -> None:
    err = _responder_error(HX_V2_INIT_HELLO + struct.pack(">I", 50_000_000), close=False)
    assert isinstance(err, RemoteProtocolError) and "oversized" in str(err)


def test_truncated_frame_then_close() -> None:
    err = _responder_error(HX_V2_INIT_HELLO + struct.pack(">I", 100) + b"x" * 10)
    assert isinstance(err, TransportError) and "after 10 of 100 bytes" in str(err)


def test_silent_peer_times_out_in_bounded_time() -> None:
    start = time.monotonic()
    err = _responder_error(b"", close=False, timeout=0.5)
    assert isinstance(err, HandshakeTimeout) and time.monotonic() - start < 3


def test_initiator_sees_responder_vanish() -> None:
    with pair() as (a, b):
        def read_then_close() -> None:
            b.recv(65536)
            b.close()
        t = threading.Thread(target=read_then_close)
        t.start()
        with pytest.raises(TransportError, match="closed the connection"):
            run_handshake(a, Initiator(iconfig()))
        t.join(5)


def test_initiator_with_wrong_names_gets_no_reply() -> None:
    # mac1 is keyed by the responder's name: an InitHello for another responder is dropped unanswered.
    with pair() as (a, b):
        box: dict[str, BaseException] = {}

        def respond() -> None:
            try:
                run_handshake(b, Responder(config(5.0)))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                box["r"] = exc
            b.shutdown(socket.SHUT_RDWR)

        t = threading.Thread(target=respond)
        t.start()
        stranger = HandshakeConfig(PSKAuthenticator([PSK], name="alice", peer_name="carol"), backend=BACKEND,
                                   timeout=5.0)
        with pytest.raises(TransportError, match="closed the connection"):
            run_handshake(a, Initiator(stranger))
        t.join(10)
    assert isinstance(box["r"], UnverifiedMessage)


def test_wrong_version_named() -> None:
    err = _responder_error(b"HX\x07\x01\x00\x00\x00\x00")
    assert isinstance(err, RemoteProtocolError) and "version 7" in str(err)


def test_connect_refused_and_retry() -> None:
    s = listen(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError, match="refused"):
        connect(("127.0.0.1", port), retry_for=0.3)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:7443") == ("127.0.0.1", 7443)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":80") == ("127.0.0.1", 80)
    for bad in ("nohost", "h:port", "h:70000", "[::1:80", 7443):
        with pytest.raises(ConfigError, match="--listen"):
            parse_address(bad, "--listen")


def test_asyncio_adapter() -> None:
    async def main() -> tuple[bytes, bytes]:
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            result = await run_handshake_async(reader, writer, Responder(config()))
            done.set_result(result.key())
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        result = await run_handshake_async(reader, writer, Initiator(iconfig()))
        writer.close()
        other = await asyncio.wait_for(done, 10)
        server.close()
        return result.key(), other

    a, b = asyncio.run(main())
    assert a == b


def test_asyncio_timeout() -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(2)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(HandshakeTimeout):
            await run_handshake_async(reader, writer, Initiator(iconfig()), timeout=0.3)
        writer.close()
        server.close()

    asyncio.run(main())


def _initiator_that_answers_the_last_message_with(answer: bytes | None, sock: socket.socket) -> None:
    """A real initiator over ``sock`` that, after the responder's last message, sends ``answer``
    (an alert: its check of that message failed) or closes (``None``: it accepted it)."""
    from hybridkex.io import read_frame

    conn = Initiator(iconfig())
    deadline = time.monotonic() + 10
    events = conn.initiate()
    while True:
        for event in events:
            if isinstance(event, SendMessage):
                sock.sendall(event.data)
        if conn.state.value == "done":
            break
        events = conn.receive(read_frame(sock, deadline))
    if answer is not None:
        sock.sendall(answer)
    sock.close()


@pytest.mark.parametrize("driver", ["blocking", "asyncio"])
@pytest.mark.parametrize("alert", [False, True], ids=["closed", "alert"])
def test_both_drivers_await_the_close_after_the_last_message(driver: str, alert: bool) -> None:
    """The one pump drives both adapters: with await_close, the responder (which sends the last
    message) keeps its key only when the initiator closes, and fails on the initiator's alert."""
    from hybridkex import PeerAlertError
    from hybridkex.protocol import Alert, AlertCode
    from hybridkex.protocol._wire import encode

    answer = encode(Alert(AlertCode.AUTH_FAILED)) if alert else None
    with pair() as (a, b):
        peer = threading.Thread(target=_initiator_that_answers_the_last_message_with, args=(answer, a))
        peer.start()
        try:
            if driver == "blocking":
                run = lambda: run_handshake(b, Responder(config()), await_close=True)  # noqa: E731
            else:
                async def main() -> object:
                    reader, writer = await asyncio.open_connection(sock=b.dup())
                    try:
                        return await run_handshake_async(reader, writer, Responder(config()), await_close=True)
                    finally:
                        writer.close()
                run = lambda: asyncio.run(main())  # noqa: E731
            if alert:
                with pytest.raises(PeerAlertError, match="after this side's last message"):
                    run()
            else:
                assert len(run().key()) == 32  # type: ignore[attr-defined]
        finally:
            peer.join(10)


def test_backoff_doubles_to_its_cap_with_bounded_jitter() -> None:
    from hybridkex.io import Backoff

    plain = Backoff(0.5, 4.0)
    assert [plain.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert plain.delay(10_000) == 4.0  # no overflow for a peer that has been down for days
    jittered = Backoff(1.0, 8.0, jitter=0.25)
    assert jittered.delay(2, lambda lo, hi: hi) == 2.5 and jittered.delay(2, lambda lo, hi: lo) == 2.0
    for bad in ((0.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError):
            Backoff(*bad)
