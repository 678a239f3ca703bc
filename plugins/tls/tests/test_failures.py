"""Every failure ends in a clear error on both sides and a closed socket; the server goes on serving."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hybridkex import (
    AuthenticationError,
    HandshakeTimeout,
    HybridKexError,
    PeerAlertError,
    RemoteProtocolError,
    TransportError,
    exchange_over_socket,
)
from hybridkex.io import recv_exact

from hybridkex_tls import HybridTLSContext, HybridTLSSocket, TLSConnectionClosed, TLSHandshakeError, TLSPSKError
from hybridkex_tls._setup import PREAMBLE_HEADER, bound_config, preamble

LOOPBACK = "127.0.0.1"
SHORT = 1.0


def attempt(ctx: HybridTLSContext, address: tuple[str, int]) -> tuple[BaseException, socket.socket]:
    """Connect and wrap; return the error and the raw socket (which must be closed by then)."""
    raw = socket.create_connection(address, timeout=10)
    with pytest.raises(HybridKexError) as info:
        ctx.wrap_socket(raw)
    return info.value, raw


def assert_clear(exc: BaseException) -> None:
    """One line that says what happened; no key material can be in it (no long hex or base64 runs)."""
    text = str(exc)
    assert text and "\n" not in text
    assert not any(len(word) > 64 for word in text.split())


def test_wrong_peer_pin(keys: Any, server_ctx: HybridTLSContext, run_server: Callable[..., Any]) -> None:
    running = run_server(server_ctx)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.stranger_pub], timeout=5)
    exc, raw = attempt(client, running.address)
    # The v2 responder drops an InitHello keyed for another responder without a word (mac1, docs/protocol.md
    # §5.5); the client says what to check.
    assert isinstance(exc, TransportError) and isinstance(exc, OSError) and "peers" in str(exc)
    assert raw.fileno() == -1
    server_error = running.wait_error()
    assert "mac1" in str(server_error)
    assert_clear(exc)
    assert_clear(server_error)


def test_server_does_not_pin_the_client(keys: Any, client_ctx: HybridTLSContext,
                                        run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.stranger_pub], timeout=5)
    running = run_server(server)
    exc, raw = attempt(client_ctx, running.address)
    assert isinstance(exc, PeerAlertError) and raw.fileno() == -1
    assert isinstance(running.wait_error(), AuthenticationError)


def test_wrong_hybrid_psk(keys: Any, run_server: Callable[..., Any]) -> None:
    running = run_server(HybridTLSContext.server(psk_file=keys.psk, name="server", peer_name="client", timeout=5))
    exc, raw = attempt(HybridTLSContext.client(psk_file=keys.other_psk, name="client", peer_name="server",
                                               timeout=5), running.address)
    assert isinstance(exc, (AuthenticationError, PeerAlertError)) and raw.fileno() == -1
    assert isinstance(running.wait_error(), (AuthenticationError, PeerAlertError))
    assert_clear(exc)


def test_wrong_static_tls_psk(keys: Any, run_server: Callable[..., Any]) -> None:
    running = run_server(HybridTLSContext.server(external_psk=keys.tls_psk.read_bytes(), psk_identity="id"))
    client = HybridTLSContext.client(external_psk=keys.other_tls_psk.read_bytes(), psk_identity="id")
    exc, raw = attempt(client, running.address)
    assert isinstance(exc, TLSPSKError) and "binder" in str(exc) and raw.fileno() == -1
    server_error = running.wait_error()
    assert isinstance(server_error, TLSPSKError) and "binder" in str(server_error)


def test_wrong_static_psk_identity(keys: Any, run_server: Callable[..., Any]) -> None:
    key = keys.tls_psk.read_bytes()
    running = run_server(HybridTLSContext.server(external_psk=key, psk_identity="server-id"))
    exc, raw = attempt(HybridTLSContext.client(external_psk=key, psk_identity="client-id"), running.address)
    assert isinstance(exc, TLSPSKError) and raw.fileno() == -1
    server_error = running.wait_error()
    assert isinstance(server_error, TLSPSKError) and "identity" in str(server_error)


@contextlib.contextmanager
def flipping_proxy(target: tuple[str, int], direction: str, offset: int,
                   after: re.Pattern[bytes] | None = None) -> Iterator[tuple[str, int]]:
    """A loopback TCP proxy that flips one bit of byte ``offset`` of one direction (``c2s`` or ``s2c``);
    with ``after``, ``offset`` counts from the first match of that pattern in the stream."""
    listener = socket.create_server((LOOPBACK, 0))
    threads: list[threading.Thread] = []

    def pipe(src: socket.socket, dst: socket.socket, flip: bool) -> None:
        stream = bytearray()
        target_at: int | None = None if after else offset
        try:
            while data := src.recv(65536):
                start = len(stream)
                stream += data
                if flip and target_at is None and after is not None and (match := after.search(stream)):
                    target_at = match.start() + offset
                if flip and target_at is not None and start <= target_at < len(stream):
                    i = target_at - start
                    data = data[:i] + bytes([data[i] ^ 0x04]) + data[i + 1:]
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            client, _ = listener.accept()
            upstream = socket.create_connection(target)
            for src, dst, flip in ((client, upstream, direction == "c2s"), (upstream, client, direction == "s2c")):
                t = threading.Thread(target=pipe, args=(src, dst, flip), daemon=True)
                t.start()
                threads.append(t)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        acceptor.join(5)
        for t in threads:
            t.join(5)


@pytest.mark.parametrize(("direction", "offset"), [("c2s", 40), ("c2s", 700), ("s2c", 40), ("s2c", 2500)])
def test_tampered_hybrid_message(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                 run_server: Callable[..., Any], direction: str, offset: int) -> None:
    running = run_server(server_ctx)
    with flipping_proxy(running.address, direction, offset) as proxy:
        exc, raw = attempt(client_ctx, proxy)
    # AuthenticationError, NegotiationError, PeerAlertError ..., or a silent close by the responder (v2, §7.1)
    assert isinstance(exc, (RemoteProtocolError, TransportError)), exc
    assert raw.fileno() == -1
    server_error = running.wait_error()
    assert isinstance(server_error, (RemoteProtocolError, TransportError)), server_error
    assert_clear(exc)
    assert_clear(server_error)


# TLS handshake records: ClientHello (record type 22, legacy version 3.1, handshake type 1) and ServerHello
# (version 3.3, handshake type 2).  They follow the hybrid exchange on the same connection.
CLIENT_HELLO = re.compile(rb"\x16\x03\x01..\x01", re.DOTALL)
SERVER_HELLO = re.compile(rb"\x16\x03\x03..\x02", re.DOTALL)


@pytest.mark.parametrize(("direction", "after"), [("c2s", CLIENT_HELLO), ("s2c", SERVER_HELLO)],
                         ids=["ClientHello", "ServerHello"])
def test_tampered_tls_handshake(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                run_server: Callable[..., Any], direction: str, after: re.Pattern[bytes]) -> None:
    running = run_server(server_ctx)
    with flipping_proxy(running.address, direction, 200, after) as proxy:
        exc, raw = attempt(client_ctx, proxy)
    assert isinstance(exc, TLSHandshakeError), exc
    assert raw.fileno() == -1
    server_error = running.wait_error()
    assert isinstance(server_error, TLSHandshakeError), server_error
    assert_clear(exc)
    assert_clear(server_error)


def test_client_that_stalls_mid_handshake_times_out_and_the_server_goes_on(
        keys: Any, client_ctx: HybridTLSContext, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=SHORT)
    running = run_server(server)
    staller = socket.create_connection(running.address)
    staller.sendall(b"HXT")  # part of the preamble, then nothing
    error = running.wait_error(SHORT + 5)
    assert isinstance(error, HandshakeTimeout)
    assert "timed out" in str(error)
    staller.settimeout(5)
    rest = b""
    with contextlib.suppress(ConnectionResetError):  # closed with the partial preamble unread: a reset
        while chunk := staller.recv(4096):
            rest += chunk
    staller.close()
    # The next client is served normally.
    with socket.create_connection(running.address) as raw, client_ctx.wrap_socket(raw) as tls:
        tls.sendall(b"still serving")
        assert tls.recv(100) == b"still serving"
    assert running.server.connections_failed == 1 and running.server.connections_ok == 1


@contextlib.contextmanager
def fake_server(behaviour: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    listener = socket.create_server((LOOPBACK, 0))

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                behaviour(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        thread.join(10)


def test_server_that_stalls_mid_handshake(keys: Any) -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=SHORT)
    seen = []

    def stall(conn: socket.socket) -> None:
        seen.append(conn.recv(100))
        conn.settimeout(SHORT + 5)
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):  # reads the client's alert, then sees its close
                seen.append(chunk)

    with fake_server(stall) as address:
        started = time.monotonic()
        exc, raw = attempt(client, address)
    assert isinstance(exc, HandshakeTimeout) and raw.fileno() == -1
    assert time.monotonic() - started < SHORT + 2
    assert seen and seen[0].startswith(b"HX")


def test_server_that_stops_after_the_hybrid_exchange(keys: Any, server_ctx: HybridTLSContext) -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=SHORT)
    closed = threading.Event()

    def hybrid_then_stall(conn: socket.socket) -> None:
        assert recv_exact(conn, PREAMBLE_HEADER, time.monotonic() + 5, "preamble") == preamble(None)
        exchange_over_socket(conn, "responder", bound_config(server_ctx.handshake_config, None))
        conn.settimeout(SHORT + 5)
        with contextlib.suppress(OSError):
            while conn.recv(65536):  # the ClientHello; then nothing is answered
                pass
        closed.set()

    with fake_server(hybrid_then_stall) as address:
        exc, raw = attempt(client, address)
        assert closed.wait(5), "the client did not close its socket"
    assert isinstance(exc, HandshakeTimeout) and "TLS handshake" in str(exc)
    assert raw.fileno() == -1


def test_client_that_closes_after_the_hybrid_exchange(client_ctx: HybridTLSContext, server_ctx: HybridTLSContext,
                                                      run_server: Callable[..., Any]) -> None:
    running = run_server(server_ctx)
    with socket.create_connection(running.address) as raw:
        raw.sendall(preamble(None))
        exchange_over_socket(raw, "initiator", bound_config(client_ctx.handshake_config, None))
    error = running.wait_error()
    assert isinstance(error, TLSConnectionClosed) and "closed the connection during the TLS handshake" in str(error)


def test_peer_that_is_not_tls(keys: Any) -> None:
    client = HybridTLSContext.client(external_psk=keys.tls_psk.read_bytes(), timeout=SHORT)

    def plain(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 4)

    with fake_server(plain) as address:
        exc, raw = attempt(client, address)
    assert raw.fileno() == -1
    assert_clear(exc)


def test_handler_errors_do_not_stop_the_server(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                               run_server: Callable[..., Any]) -> None:
    calls = []

    def handler(tls: HybridTLSSocket) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("handler bug")
        tls.sendall(b"ok")

    running = run_server(server_ctx, handler)
    for _ in range(2):
        with socket.create_connection(running.address) as raw, client_ctx.wrap_socket(raw) as tls:
            data = tls.recv(10)
    assert data == b"ok"
    assert isinstance(running.wait_error(), ValueError)
