"""Fits where ``ssl`` fits: wrap_socket's parameters, ALPN, SNI with per-host peers, OSError errors, readiness."""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from hybridkex import HandshakeTimeout, HybridKexError

from hybridkex_tls import HybridTLSContext, HybridTLSSocket, TLSSetupError

from .conftest import LOOPBACK, TIMEOUT


def test_do_handshake_on_connect_false_defers_the_setup(keys: Any, server_ctx: HybridTLSContext,
                                                       run_server: Callable[..., Any]) -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server_ctx)
    raw = socket.create_connection(running.address)
    tls = client.wrap_socket(raw, server_side=False, do_handshake_on_connect=False, suppress_ragged_eofs=True,
                             server_hostname="localhost")
    assert tls.version() is None and tls.pending() == 0 and tls.server_hostname == "localhost"
    assert not tls.server_side
    tls.sendall(b"deferred")  # runs the setup first, as ssl does
    assert tls.recv(100) == b"deferred" and tls.version() == "TLSv1.3"
    tls.do_handshake()  # a no-op now
    tls.close()
    with pytest.raises(ValueError, match="server_side=True does not match this client context"):
        client.wrap_socket(socket.socket(), server_side=True)
    with pytest.raises(ValueError, match="server_hostname is only for client-side sockets"):
        server_ctx.wrap_socket(socket.socket(), server_hostname="x")


def test_alpn(keys: Any, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    server.set_alpn_protocols(["h2", "http/1.1"])
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    client.set_alpn_protocols(["http/1.1"])
    seen: list[str | None] = []

    def handler(tls: HybridTLSSocket) -> None:
        seen.append(tls.selected_alpn_protocol())
        tls.sendall(b"ok")

    running = run_server(server, handler)
    for _ in range(2):  # full, then resumed
        with socket.create_connection(running.address) as raw, client.wrap_socket(raw) as tls:
            assert tls.recv(10) == b"ok"
            assert tls.selected_alpn_protocol() == "http/1.1"
    assert seen == ["http/1.1", "http/1.1"]
    with pytest.raises(ValueError, match="ALPN"):
        client.set_alpn_protocols([""])


def test_per_hostname_expected_peers(keys: Any, run_server: Callable[..., Any]) -> None:
    """A client pinning two servers accepts each only under its own name."""
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT,
                                     host_peers={"good.example": [keys.server_pub],
                                                 "other.example": [keys.stranger_pub]})
    running = run_server(server)
    with socket.create_connection(running.address) as raw, \
            client.wrap_socket(raw, server_hostname="good.example") as tls:
        tls.sendall(b"x")
        assert tls.recv(10) == b"x" and tls.info()["server_name"] == "good.example"
    raw = socket.create_connection(running.address)
    with pytest.raises(HybridKexError) as info:  # the server drops an InitHello keyed for another server
        client.wrap_socket(raw, server_hostname="other.example")
    assert isinstance(info.value, OSError) and isinstance(info.value, TLSSetupError)
    assert "host_peers" in str(info.value)
    assert raw.fileno() == -1


def test_per_sni_credentials_on_the_server(keys: Any, run_server: Callable[..., Any]) -> None:
    from hybridkex import ExchangeSettings

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT,
                                     sni_settings={"psk.example": ExchangeSettings(psk_file=keys.psk, name="server",
                                                                                   peer_name="client")})
    psk_client = HybridTLSContext.client(psk_file=keys.psk, name="client", peer_name="server", timeout=TIMEOUT)
    running = run_server(server)
    with socket.create_connection(running.address) as raw, \
            psk_client.wrap_socket(raw, server_hostname="psk.example") as tls:
        tls.sendall(b"x")
        assert tls.recv(10) == b"x" and tls.info()["auth"] == "psk"
    raw = socket.create_connection(running.address)
    with pytest.raises(HybridKexError):
        psk_client.wrap_socket(raw)  # no name: the server's default credentials (ML-DSA) apply


def test_setup_errors_are_oserror_and_timeouts_timeouterror(keys: Any) -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=0.5)
    with socket.create_server((LOOPBACK, 0)) as silent:
        raw = socket.create_connection(silent.getsockname())
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            client.wrap_socket(raw)
        assert time.monotonic() - started < 3
    assert isinstance(info.value, HandshakeTimeout) and isinstance(info.value, HybridKexError)
    assert isinstance(info.value, OSError)


def test_api_errors_name_parameters_not_flags(keys: Any) -> None:
    from hybridkex import ConfigError

    with pytest.raises(ConfigError) as info:
        HybridTLSContext.client(external_psk=b"k" * 32, identity=keys.client_key)
    assert "--" not in str(info.value) and "external_psk" in str(info.value)
    with pytest.raises(ConfigError, match="session_lifetime"):
        HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], session_lifetime=-1)


def test_five_records_in_one_burst_give_five_readiness_events(client_ctx: HybridTLSContext,
                                                              server_ctx: HybridTLSContext,
                                                              run_server: Callable[..., Any]) -> None:
    """As with stdlib ssl (one record per read): every record still waiting keeps the socket readable."""

    def burst(tls: HybridTLSSocket) -> None:
        tls.recv(10)
        with tls._ssl_lock:  # five records, written to the network in one send
            for word in (b"one", b"two", b"three", b"four", b"five"):
                tls._engine.write(word)
            out = tls._engine.data_to_send()
        tls._sock.sendall(out)
        tls.recv(10)

    running = run_server(server_ctx, burst)
    with socket.create_connection(running.address) as raw, client_ctx.wrap_socket(raw) as tls:
        tls.sendall(b"go")
        time.sleep(0.3)  # all five records are in the kernel's buffer now
        got, events = [], 0
        with selectors.DefaultSelector() as sel:
            sel.register(tls, selectors.EVENT_READ)
            for _ in range(20):
                if len(got) == 5:
                    break
                ready = sel.select(timeout=2)
                if not ready:
                    break
                events += 1
                got.append(tls.recv(100))
                assert tls.pending() == 0
        assert got == [b"one", b"two", b"three", b"four", b"five"] and events == 5
        tls.sendall(b"done")


def test_pending_counts_a_partly_read_record(client_ctx: HybridTLSContext, server_ctx: HybridTLSContext,
                                             run_server: Callable[..., Any]) -> None:
    def send_one(tls: HybridTLSSocket) -> None:
        tls.recv(10)
        tls.sendall(b"0123456789")
        tls.recv(10)

    running = run_server(server_ctx, send_one)
    with socket.create_connection(running.address) as raw, client_ctx.wrap_socket(raw) as tls:
        tls.sendall(b"go")
        assert tls.recv(4) == b"0123"
        assert tls.pending() == 6
        assert tls.recv(100) == b"456789" and tls.pending() == 0
        tls.sendall(b"done")


def test_ssl_module_shape() -> None:
    """The methods code written for ssl.SSLSocket calls exist here too."""
    for name in ("recv", "recv_into", "send", "sendall", "pending", "do_handshake", "selected_alpn_protocol",
                 "version", "cipher", "shutdown", "close", "makefile", "fileno", "settimeout", "gettimeout",
                 "getpeername", "getsockname", "setsockopt", "session_reused"):
        assert hasattr(ssl.SSLSocket, name) and hasattr(HybridTLSSocket, name), name
