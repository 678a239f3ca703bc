"""HybridTLSSocket over real TCP on 127.0.0.1: hybrid exchange, then TLS keyed by it."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hybridkex import ExchangeSettings

from hybridkex_tls import HybridTLSContext, HybridTLSSocket
from hybridkex_tls._openssl import negotiated_group, session_reused

TIMEOUT = 5.0


def connect(ctx: HybridTLSContext, address: tuple[str, int]) -> HybridTLSSocket:
    raw = socket.create_connection(address, timeout=TIMEOUT)
    return ctx.wrap_socket(raw)


def openssl_view(tls: HybridTLSSocket) -> dict[str, Any]:
    """What OpenSSL itself says about the connection, bypassing the wrapper's own bookkeeping."""
    engine = tls._engine
    binding = engine._binding
    return {"reused": session_reused(engine._conn), "group": negotiated_group(engine._conn),
            "callback": binding.offered if engine.role == "client" else binding.accepted}


def test_round_trip_uses_the_psk_over_x25519mlkem768(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                                      keys: Any, run_server: Callable[..., Any]) -> None:
    seen: dict[str, Any] = {}

    def handler(tls: HybridTLSSocket) -> None:
        seen.update(openssl_view(tls), info=tls.info(), peer=tls.peer_identity())
        tls.sendall(b"hello, " + tls.recv(100))

    running = run_server(server_ctx, handler)
    with connect(client_ctx, running.address) as tls:
        tls.sendall(b"client")
        assert tls.recv(100) == b"hello, client"
        assert openssl_view(tls) == {"reused": True, "group": "X25519MLKEM768", "callback": True}
        assert tls.version() == "TLSv1.3"
        cipher = tls.cipher()
        assert cipher is not None and cipher[0] in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
        assert tls.group() == "X25519MLKEM768"
        assert tls.psk_used()
        assert tls.peer_identity() == keys.server_fingerprint
        assert tls.qkd_key_ids() == ()
        info = tls.info()
        assert info["mode"] == "hybrid" and info["external_psk"] is True
        assert info["hybrid_suite"] == "x25519+ml-kem-768/hkdf-sha256"
        assert info["qkd"] == "off" and info["qkd_key_ids"] == []
        summary = tls.hybrid_summary()
        assert summary is not None and summary["peer"] == keys.server_fingerprint
    assert seen["reused"] and seen["callback"] and seen["group"] == "X25519MLKEM768"
    assert seen["peer"] == keys.client_fingerprint
    # Both sides hold the same hybrid transcript, hence the same imported PSK identity.
    assert seen["info"]["transcript_hash"] == info["transcript_hash"]
    assert running.errors == []


def test_large_transfer_both_ways_and_half_close(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                                  run_server: Callable[..., Any],
                                                  echo: Callable[[HybridTLSSocket], None]) -> None:
    running = run_server(server_ctx, echo)
    payload = os.urandom(6 * 1024 * 1024 + 123)
    with connect(client_ctx, running.address) as tls:
        def send() -> None:
            tls.sendall(payload)
            tls.shutdown(socket.SHUT_WR)  # close_notify: the echo server sees EOF, and keeps sending

        sender = threading.Thread(target=send)
        sender.start()
        received = hashlib.sha256()
        count = 0
        while True:
            chunk = tls.recv(1 << 17)
            if not chunk:
                break
            received.update(chunk)
            count += len(chunk)
        sender.join(TIMEOUT)
        assert count == len(payload)
        assert received.digest() == hashlib.sha256(payload).digest()
        assert tls.recv(10) == b""  # still the end of the stream
    assert running.errors == []


def test_half_close_lets_the_server_answer_after_eof(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                                     run_server: Callable[..., Any]) -> None:
    def handler(tls: HybridTLSSocket) -> None:
        data = b""
        while chunk := tls.recv(1000):
            data += chunk
        tls.sendall(b"got %d bytes" % len(data))

    running = run_server(server_ctx, handler)
    with connect(client_ctx, running.address) as tls:
        tls.sendall(b"x" * 5000)
        tls.shutdown(socket.SHUT_WR)
        with pytest.raises(BrokenPipeError):
            tls.sendall(b"after close_notify")
        answer = b""
        while chunk := tls.recv(100):
            answer += chunk
        assert answer == b"got 5000 bytes"


def test_recv_into_makefile_and_timeouts(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                          run_server: Callable[..., Any],
                                          echo: Callable[[HybridTLSSocket], None]) -> None:
    running = run_server(server_ctx, echo)
    with connect(client_ctx, running.address) as tls:
        assert tls.gettimeout() == TIMEOUT  # the socket's own timeout is kept
        tls.settimeout(0.2)
        with pytest.raises(TimeoutError):
            tls.recv(10)
        tls.settimeout(TIMEOUT)
        tls.sendall(b"abc")
        buffer = bytearray(10)
        n = tls.recv_into(buffer)
        assert bytes(buffer[:n]) == b"abc"[:n] and n >= 1
        rest = 3 - n
        while rest:
            rest -= tls.recv_into(buffer, rest)
        writer = tls.makefile("wb")
        reader = tls.makefile("r", encoding="utf-8")
        writer.write(b"line one\nline two\n")
        writer.flush()
        assert reader.readline() == "line one\n"
        assert reader.readline() == "line two\n"
        writer.close()
        reader.close()
        assert tls.fileno() >= 0
        assert tls.getpeername()[:2] == running.address
        assert tls.getsockname()[0] == "127.0.0.1"
    assert tls.closed


def test_makefile_keeps_the_socket_open_until_closed(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                                     run_server: Callable[..., Any],
                                                     echo: Callable[[HybridTLSSocket], None]) -> None:
    running = run_server(server_ctx, echo)
    tls = connect(client_ctx, running.address)
    stream = tls.makefile("rwb", buffering=0)
    tls.close()  # deferred: the file object still uses the connection
    stream.write(b"ping")
    assert stream.read(4) == b"ping"
    fd = stream.fileno()
    stream.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_close_sends_close_notify(server_ctx: HybridTLSContext, client_ctx: HybridTLSContext,
                                  run_server: Callable[..., Any]) -> None:
    result: list[bytes] = []
    done = threading.Event()

    def handler(tls: HybridTLSSocket) -> None:
        result.append(tls.recv(100))
        done.set()

    running = run_server(server_ctx, handler)
    with connect(client_ctx, running.address):
        pass
    assert done.wait(TIMEOUT)
    assert result == [b""]  # a clean end of stream, not an error
    assert running.errors == []


def test_exchange_settings_and_psk_authentication(keys: Any, run_server: Callable[..., Any],
                                                  echo: Callable[[HybridTLSSocket], None]) -> None:
    server = HybridTLSContext.server(ExchangeSettings(psk_file=keys.psk, kem="ml-kem-1024", timeout=TIMEOUT,
                                                      name="server", peer_name="client"))
    client = HybridTLSContext.client(psk_file=str(keys.psk), kem="ml-kem-1024", timeout=TIMEOUT, name="client",
                                     peer_name="server")
    running = run_server(server, echo)
    with connect(client, running.address) as tls:
        tls.sendall(b"psk mode")
        assert tls.recv(100) == b"psk mode"
        info = tls.info()
        assert info["auth"] == "psk" and str(info["peer"]).startswith("psk:")
        assert "ml-kem-1024" in str(info["hybrid_suite"])
        assert tls.group() == "X25519MLKEM768"


def test_static_mode_without_hybrid_exchange(keys: Any, run_server: Callable[..., Any],
                                             echo: Callable[[HybridTLSSocket], None]) -> None:
    key = keys.tls_psk.read_bytes()
    running = run_server(HybridTLSContext.server(external_psk=key, psk_identity="me"), echo)
    client = HybridTLSContext.client(external_psk=key, psk_identity=b"me")
    with connect(client, running.address) as tls:
        tls.sendall(b"static")
        assert tls.recv(100) == b"static"
        assert tls.info()["mode"] == "static-psk"
        assert tls.peer_identity() is None and tls.hybrid_summary() is None
        assert openssl_view(tls)["reused"]
        assert tls.group() == "X25519MLKEM768"  # OpenSSL's preference when both ends offer it


def test_options_are_checked(keys: Any) -> None:
    from hybridkex import ConfigError

    with pytest.raises(TypeError, match="unknown option"):
        HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], colour="blue")
    with pytest.raises(ConfigError, match="always uses the group"):
        HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], groups="X25519")
    with pytest.raises(ConfigError, match="static key"):
        HybridTLSContext.client(identity=keys.client_key, external_psk=b"k" * 32)
    with pytest.raises(ConfigError, match="no peer pinned"):
        HybridTLSContext.client(identity=keys.client_key)
    with pytest.raises(ConfigError):
        HybridTLSContext.client(identity=keys.client_key.parent / "missing.key", peers=[keys.server_pub])


def test_psk_ratchet_advances_after_each_connection(keys: Any, tmp_path: Any, run_server: Callable[..., Any],
                                                    echo: Callable[[HybridTLSSocket], None]) -> None:
    from hybridkex._ratchet import AuthRatchet

    server_state, client_state = tmp_path / "server.ratchet", tmp_path / "client.ratchet"
    from hybridkex._ratchet import init_ratchet

    for state in (server_state, client_state):
        init_ratchet(state, keys.psk.read_bytes())
    # The ratchet advances with each hybrid exchange; resumed connections run none, so resumption is off here.
    server = HybridTLSContext.server(psk_file=keys.psk, psk_ratchet=server_state, timeout=TIMEOUT, session_lifetime=0,
                                     name="server", peer_name="client")
    client = HybridTLSContext.client(psk_file=keys.psk, psk_ratchet=str(client_state), timeout=TIMEOUT,
                                     session_lifetime=0, name="client", peer_name="server")
    running = run_server(server, echo)
    peers = []
    for expected_epoch in (1, 2, 3):
        with connect(client, running.address) as tls:
            tls.sendall(b"ratchet")
            assert tls.recv(100) == b"ratchet"
            peers.append(tls.peer_identity())
        assert AuthRatchet(client_state, name="client", peer_name="server").load().epoch == expected_epoch
    for _ in range(50):  # the server advances in its own thread, right after the handshake
        if AuthRatchet(server_state, name="server", peer_name="client").load().epoch == 3:
            break
        threading.Event().wait(0.05)
    assert AuthRatchet(server_state, name="server", peer_name="client").load().epoch == 3
    server_keys = AuthRatchet(server_state, name="server", peer_name="client").load()
    client_keys = AuthRatchet(client_state, name="client", peer_name="server").load()
    assert server_keys.current.key == client_keys.current.key != keys.psk.read_bytes()
    assert set(peers) == {"psk:server"}  # v2 names the peer; the ratchet's key changes underneath
    assert running.errors == []
