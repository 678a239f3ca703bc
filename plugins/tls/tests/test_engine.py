"""The sans-I/O TLS engine and the OpenSSL layer, two engines wired back to back (no network)."""

from __future__ import annotations

import pytest

from hybridkex_tls import ExternalPSK, TLSError, TLSHandshakeError, TLSPSKError, TLSUnavailable
from hybridkex_tls._engine import TLSEngine
from hybridkex_tls._importer import HYBRID_GROUPS, TLS_CIPHERSUITES
from hybridkex_tls._openssl import ContextHandle, negotiated_group, new_context, session_reused

KEY = b"\x11" * 32


@pytest.fixture(scope="module")
def handles() -> tuple[ContextHandle, ContextHandle]:
    return (new_context("client", groups=HYBRID_GROUPS, ciphersuites=TLS_CIPHERSUITES),
            new_context("server", groups=HYBRID_GROUPS, ciphersuites=TLS_CIPHERSUITES))


def pump(client: TLSEngine, server: TLSEngine, *, tamper_at: int | None = None) -> None:
    """Run both handshakes to the end; optionally flip one byte of the client's first flight."""
    client_done = server_done = False
    first = True
    for _ in range(10):
        client_done = client.do_handshake()
        out = client.data_to_send()
        if first and tamper_at is not None and out:
            out = out[:tamper_at] + bytes([out[tamper_at] ^ 0x01]) + out[tamper_at + 1:]
        first = False
        if out:
            server.receive_bytes(out)
        server_done = server.do_handshake()
        out = server.data_to_send()
        if out:
            client.receive_bytes(out)
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")


def engines(handles: tuple[ContextHandle, ContextHandle], client_psk: ExternalPSK, server_psk: ExternalPSK,
            group: str | None = HYBRID_GROUPS) -> tuple[TLSEngine, TLSEngine]:
    return (TLSEngine(handles[0], client_psk, expected_group=group),
            TLSEngine(handles[1], server_psk, expected_group=group))


def test_psk_dhe_handshake_over_x25519mlkem768(handles: tuple[ContextHandle, ContextHandle]) -> None:
    client, server = engines(handles, ExternalPSK(b"id", KEY), ExternalPSK(b"id", KEY))
    pump(client, server)
    for engine in (client, server):
        # Asked of OpenSSL directly: the PSK was used (SSL_session_reused) over the hybrid group.
        assert session_reused(engine._conn)
        assert negotiated_group(engine._conn) == "X25519MLKEM768"
        assert engine.facts is not None
        assert engine.facts.version == "TLSv1.3"
        assert engine.facts.cipher in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
    assert client._binding.offered and server._binding.accepted  # the PSK callbacks fired on both sides
    client.write(b"ping")
    server.receive_bytes(client.data_to_send())
    assert server.read(100) == b"ping"
    server.write(b"pong")
    client.receive_bytes(server.data_to_send())
    assert client.read(100) == b"pong"
    assert client.read(100) is None  # nothing more yet


def test_close_notify_ends_one_direction(handles: tuple[ContextHandle, ContextHandle]) -> None:
    client, server = engines(handles, ExternalPSK(b"id", KEY), ExternalPSK(b"id", KEY))
    pump(client, server)
    client.send_close_notify()
    server.receive_bytes(client.data_to_send())
    assert server.read(10) == b""
    server.write(b"still here")
    client.receive_bytes(server.data_to_send())
    assert client.read(100) == b"still here"


def test_different_keys_fail_the_binder_on_both_sides(handles: tuple[ContextHandle, ContextHandle]) -> None:
    client, server = engines(handles, ExternalPSK(b"id", KEY), ExternalPSK(b"id", b"\x22" * 32))
    client.do_handshake()
    server.receive_bytes(client.data_to_send())
    with pytest.raises(TLSPSKError, match="different TLS PSKs"):
        server.do_handshake()
    client.receive_bytes(server.data_to_send())  # OpenSSL's alert
    with pytest.raises(TLSPSKError, match="could not verify the PSK binder"):
        client.do_handshake()


def test_unknown_identity_is_refused(handles: tuple[ContextHandle, ContextHandle]) -> None:
    client, server = engines(handles, ExternalPSK(b"mine", KEY), ExternalPSK(b"yours", KEY))
    client.do_handshake()
    server.receive_bytes(client.data_to_send())
    with pytest.raises(TLSPSKError, match="identity this server does not expect"):
        server.do_handshake()
    assert server._binding.unknown_identity
    client.receive_bytes(server.data_to_send())
    with pytest.raises(TLSPSKError):
        client.do_handshake()


@pytest.mark.parametrize("offset", [60, 200, 400])
def test_tampered_client_hello_fails(handles: tuple[ContextHandle, ContextHandle], offset: int) -> None:
    client, server = engines(handles, ExternalPSK(b"id", KEY), ExternalPSK(b"id", KEY))
    with pytest.raises(TLSHandshakeError):
        pump(client, server, tamper_at=offset)


def test_no_common_group_is_refused() -> None:
    client_handle = new_context("client", groups="X25519", ciphersuites=TLS_CIPHERSUITES)
    server_handle = new_context("server", groups=HYBRID_GROUPS, ciphersuites=TLS_CIPHERSUITES)
    client = TLSEngine(client_handle, ExternalPSK(b"id", KEY))
    server = TLSEngine(server_handle, ExternalPSK(b"id", KEY), expected_group=HYBRID_GROUPS)
    with pytest.raises(TLSHandshakeError):
        pump(client, server)


def test_group_other_than_expected_is_refused() -> None:
    client_handle = new_context("client", groups="X25519", ciphersuites=TLS_CIPHERSUITES)
    server_handle = new_context("server", groups="X25519", ciphersuites=TLS_CIPHERSUITES)
    client = TLSEngine(client_handle, ExternalPSK(b"id", KEY), expected_group=HYBRID_GROUPS)
    server = TLSEngine(server_handle, ExternalPSK(b"id", KEY))
    with pytest.raises(TLSHandshakeError, match="instead of X25519MLKEM768"):
        pump(client, server)


def test_unknown_group_names_the_versions_needed() -> None:
    with pytest.raises(TLSUnavailable, match="pyOpenSSL >= "):
        new_context("client", groups="NoSuchGroup768", ciphersuites=TLS_CIPHERSUITES)


def test_no_data_before_the_handshake(handles: tuple[ContextHandle, ContextHandle]) -> None:
    client = TLSEngine(handles[0], ExternalPSK(b"id", KEY))
    with pytest.raises(TLSError, match="has not finished"):
        client.write(b"early")


def test_the_psk_binding_is_forgotten_after_the_handshake_or_when_dropped(
        handles: tuple[ContextHandle, ContextHandle]) -> None:
    """The callbacks' table of PSKs holds a connection's key only while its handshake may need it."""
    import gc

    from hybridkex_tls import _openssl

    client, server = engines(handles, ExternalPSK(b"id", KEY), ExternalPSK(b"id", KEY))
    assert client._conn._ssl in _openssl._bindings and server._conn._ssl in _openssl._bindings
    pump(client, server)
    assert client._conn._ssl not in _openssl._bindings and server._conn._ssl not in _openssl._bindings
    assert client._binding.psk is None and server._binding.psk is None
    # An engine abandoned before its handshake (no close()) drops its binding when it is collected.
    abandoned = TLSEngine(handles[1], ExternalPSK(b"id", KEY))
    before = len(_openssl._bindings)
    del abandoned
    gc.collect()
    assert len(_openssl._bindings) == before - 1


def test_on_done_runs_before_the_last_flight_is_handed_out(handles: tuple[ContextHandle, ContextHandle]) -> None:
    # The server records its tickets' session in on_done: by then the tickets must still be in the engine.
    seen: list[int] = []
    client = TLSEngine(handles[0], ExternalPSK(b"id", KEY), expected_group=HYBRID_GROUPS)
    server = TLSEngine(handles[1], ExternalPSK(b"id", KEY), expected_group=HYBRID_GROUPS,
                       on_done=lambda engine: seen.append(len(engine.data_to_send())))
    pump(client, server)
    assert len(seen) == 1 and seen[0] > 0  # it ran once, with the tickets not yet taken out
    with pytest.raises(TLSError, match="memory BIOs"):
        TLSEngine(handles[1], ExternalPSK(b"id", KEY), on_done=lambda engine: None, fd=0)
