"""HybridTLSServer: concurrent clients, bounded concurrency, shutdown."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hybridkex_tls import HybridTLSContext, HybridTLSServer, HybridTLSSocket


def round_trip(ctx: HybridTLSContext, address: tuple[str, int], message: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(message)
        tls.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data


def test_concurrent_clients(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                            run_server: Callable[..., Any], echo: Callable[[HybridTLSSocket], None]) -> None:
    running = run_server(server_ctx, echo)
    messages = [f"client {i}".encode() * (i + 1) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda m: round_trip(client_ctx, running.address, m), messages))
    assert answers == messages
    assert running.server.connections_ok == 12 and running.errors == []


def test_connections_are_handled_at_the_same_time(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                                  run_server: Callable[..., Any]) -> None:
    inside = threading.Barrier(3, timeout=10)

    def handler(tls: HybridTLSSocket) -> None:
        inside.wait()  # only passes when three connections are in their handlers at once
        tls.sendall(b"together")

    running = run_server(server_ctx, handler)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: round_trip(client_ctx, running.address, b""), range(3)))
    assert answers == [b"together"] * 3


def test_max_connections_queues_the_rest(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                         run_server: Callable[..., Any]) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def handler(tls: HybridTLSSocket) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        tls.sendall(b"ok")

    running = run_server(server_ctx, handler, max_connections=2)
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: round_trip(client_ctx, running.address, b""), range(5)))
    assert answers == [b"ok"] * 5
    assert peak <= 2


def test_server_needs_a_server_context(client_ctx: HybridTLSContext) -> None:
    with pytest.raises(ValueError, match="server context"):
        HybridTLSServer(client_ctx, ("127.0.0.1", 0), lambda tls: None)


def test_shutdown_is_prompt(server_ctx: HybridTLSContext) -> None:
    server = HybridTLSServer(server_ctx, ("127.0.0.1", 0), lambda tls: None).start()
    address = server.server_address
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=1)
