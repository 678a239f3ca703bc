"""Resumption: a second connection resumes TLS 1.3 with no hybrid exchange, no signature and no QKD key.

Each claim is checked through OpenSSL (SSL_session_reused, the group, the PSK callbacks)
and by counting what the core did (QKD keys drawn, ML-DSA signatures made).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hybridkex import HybridKexError, QKDKey, QKDKeySource

from hybridkex_tls import HybridTLSContext, HybridTLSSocket, TLSResumptionRefused
from hybridkex_tls._openssl import negotiated_group, session_reused

from .conftest import TIMEOUT


class CountingKeys(QKDKeySource):
    """Shared QKD keys for both sides, counting how many each side drew."""

    def __init__(self, store: dict[uuid.UUID, bytes], counts: dict[str, int], side: str) -> None:
        self.store, self.counts, self.side = store, counts, side

    def get_new_keys(self, number: int = 1, size_bits: int = 256) -> list[QKDKey]:
        self.counts[self.side] += number
        out = []
        for _ in range(number):
            key_id = uuid.uuid4()
            self.store[key_id] = bytes(uuid.uuid4().bytes * 2)[: size_bits // 8]
            out.append(QKDKey(key_id, self.store[key_id]))
        return out

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        self.counts[self.side] += len(key_ids)
        return [QKDKey(k, self.store.pop(k)) for k in key_ids]

    def describe(self) -> str:
        return "counting test source"


@pytest.fixture
def qkd_pair(keys: Any) -> tuple[HybridTLSContext, HybridTLSContext, dict[str, int]]:
    store: dict[uuid.UUID, bytes] = {}
    counts = {"client": 0, "server": 0}
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT,
                                     qkd_source=CountingKeys(store, counts, "server"))
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT,
                                     qkd_source=CountingKeys(store, counts, "client"))
    return client, server, counts


def talk(ctx: HybridTLSContext, address: tuple[str, int], **kwargs: Any) -> dict[str, Any]:
    with socket.create_connection(address, timeout=TIMEOUT) as raw, ctx.wrap_socket(raw, **kwargs) as tls:
        tls.sendall(b"ping")
        assert tls.recv(100) == b"ping"
        engine = tls._engine
        return {"openssl_reused": session_reused(engine._conn), "group": negotiated_group(engine._conn),
                "external_offered": engine._binding.offered, **tls.info()}


def test_second_connection_resumes_without_hybrid_exchange(qkd_pair: Any, run_server: Callable[..., Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client, server, counts = qkd_pair
    running = run_server(server)
    full = talk(client, running.address)
    assert not full["resumed"] and full["external_offered"] and full["qkd"] == "used"
    assert counts == {"client": 1, "server": 1}
    exchanges: list[Any] = []
    # Both sides' hybrid exchange (the only place that signs and draws QKD keys) must not run again.
    monkeypatch.setattr(HybridTLSContext, "exchange", lambda *a, **k: exchanges.append(a) or pytest.fail("exchange"))
    for n in (1, 2, 3):
        resumed = talk(client, running.address)
        assert resumed["openssl_reused"] and resumed["resumed"] and not resumed["external_offered"]
        assert resumed["group"] == "X25519MLKEM768"  # psk_dhe_ke: a fresh ML-KEM + X25519 share in TLS
        assert resumed["resumptions"] == n
        assert resumed["peer"] == full["peer"] and resumed["qkd_key_ids"] == full["qkd_key_ids"]
        assert 0 <= resumed["qkd_key_age"] < 60
    assert counts == {"client": 1, "server": 1}, "a resumed connection drew a QKD key"
    assert exchanges == []
    # The server saw the same: one full connection, three resumed ones, with the chain's peer.
    infos = [tls.info() for tls in running.connected]
    assert [i["resumed"] for i in infos] == [False, True, True, True]
    assert len({i["peer"] for i in infos}) == 1 and infos[0]["peer"] != full["peer"]


def test_max_resumptions_bounds_a_chain(keys: Any, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT,
                                     max_resumptions=2)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT,
                                     max_resumptions=2)
    running = run_server(server)
    seen = [talk(client, running.address)["resumed"] for _ in range(5)]
    assert seen == [False, True, True, False, True]


def test_server_refuses_what_it_does_not_know_and_the_client_recovers(keys: Any, run_server: Callable[..., Any]) \
        -> None:
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    first = run_server(HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT))
    talk(client, first.address)
    # A restarted server (a new context: new ticket keys, empty table) at the same name.
    second = run_server(HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT))
    with socket.create_connection(first.address) as raw:
        raw.close()
    cache_key = f"127.0.0.1:{second.address[1]}"
    session = client.client_sessions.take(f"127.0.0.1:{first.address[1]}")  # type: ignore[union-attr]
    assert session is not None
    client.client_sessions.put(cache_key, 0, *session)  # type: ignore[union-attr]
    with pytest.raises(TLSResumptionRefused, match="connect again") as info:
        talk(client, second.address)
    assert isinstance(info.value, OSError)
    assert "resumed no session" in str(second.wait_error())
    assert not talk(client, second.address)["resumed"]  # the entry was dropped: a full exchange
    assert talk(client, second.address)["resumed"]


def test_session_lifetime_zero_disables_resumption(keys: Any, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT,
                                     session_lifetime=0)
    running = run_server(server)
    assert [talk(client, running.address)["resumed"] for _ in range(3)] == [False, False, False]


def test_expired_chain_runs_a_full_exchange(keys: Any, run_server: Callable[..., Any]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    skew = [0.0]
    for table in (client.client_sessions, server.server_sessions):
        assert table is not None
        table.clock = lambda: time.monotonic() + skew[0]
    talk(client, running.address)
    skew[0] += 3590
    assert talk(client, running.address)["resumed"]
    skew[0] += 11  # past the hour since the hybrid exchange, though the last ticket is newer
    assert not talk(client, running.address)["resumed"]


def test_a_ticket_resumes_once(keys: Any, run_server: Callable[..., Any]) -> None:
    """Replaying a session to the server is refused: each resumption PSK is taken from the table."""
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    talk(client, running.address)
    cache = client.client_sessions
    assert cache is not None
    key = f"127.0.0.1:{running.address[1]}"
    entry = cache.take(key)
    assert entry is not None
    cache.put(key, 1, *entry)
    assert talk(client, running.address)["resumed"]
    cache.drop(key)
    cache.put(key, 1, *entry)  # the same session again
    with pytest.raises(TLSResumptionRefused):
        talk(client, running.address)


def test_concurrent_clients_never_share_a_ticket(keys: Any, run_server: Callable[..., Any],
                                                 echo: Callable[[HybridTLSSocket], None]) -> None:
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    for _ in range(3):
        talk(client, running.address)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            for _ in range(3):
                talk(client, running.address)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and running.errors == []


def _await_ticket(tls: HybridTLSSocket, cache: Any) -> None:
    """Read (nothing comes but tickets) until the client cached a ticket of this connection."""
    tls.settimeout(0.1)
    deadline = time.monotonic() + TIMEOUT
    while not len(cache) and time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            tls.recv(1)
    assert len(cache) == 1


def test_a_ticket_taken_the_moment_it_arrives_resumes(keys: Any, run_server: Callable[..., Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client may offer a ticket on its next connection the moment it arrives, and that ClientHello may reach
    another server thread while the thread that sent the ticket has not yet recorded its session (descheduled, or
    waiting for the GIL: seen in CI with six concurrent clients, where the session was then refused as unknown).
    Here every server thread stalls half a second just before it records its tickets' session: after a full
    handshake (memory BIOs: the tickets wait for the record) and after a resumed one (OpenSSL on the socket has
    sent them already: the lookup that misses waits for the record)."""
    from hybridkex_tls._engine import TLSEngine

    real = TLSEngine.session_key_id

    def stalled(self: TLSEngine) -> bytes:
        if self.role == "server":
            time.sleep(0.5)
        return real(self)

    monkeypatch.setattr(TLSEngine, "session_key_id", stalled)
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    assert server.server_sessions is not None
    server.server_sessions.issuing_wait = TIMEOUT  # longer than the stall: the stall stands for a short delay
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    cache = client.client_sessions
    assert cache is not None
    with socket.create_connection(running.address, timeout=TIMEOUT) as raw, client.wrap_socket(raw) as first:
        _await_ticket(first, cache)  # a full connection's ticket
        with socket.create_connection(running.address, timeout=TIMEOUT) as raw2, \
                client.wrap_socket(raw2) as second:
            assert second.session_reused()
            _await_ticket(second, cache)  # a resumed connection's ticket, its server thread still stalled
            assert talk(client, running.address)["resumed"] is True
    assert running.errors == []


def test_a_ticket_taken_the_moment_it_arrives_resumes_on_the_asyncio_server(keys: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, for the asyncio server: there the first connection's task waits after its handshake while the
    event loop serves the second connection."""
    from hybridkex_tls import _streams, start_server

    from .test_streams import echo

    real = _streams._tls_handshake

    async def descheduled(engine: Any, reader: Any, writer: Any) -> None:
        await real(engine, reader, writer)
        if engine.role == "server":
            await asyncio.sleep(0.5)

    monkeypatch.setattr(_streams, "_tls_handshake", descheduled)
    server_ctx = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    cache = client.client_sessions
    assert cache is not None

    def clients(address: tuple[str, int]) -> list[bool]:
        with socket.create_connection(address, timeout=TIMEOUT) as raw, client.wrap_socket(raw) as first:
            first.settimeout(0.3)
            with pytest.raises(TimeoutError):
                first.recv(1)
            assert len(cache) == 1
            return [talk(client, address)["resumed"], talk(client, address)["resumed"]]

    async def main() -> list[bool]:
        server = await start_server(echo, "127.0.0.1", 0, server_ctx)
        async with server:
            return await asyncio.to_thread(clients, server.sockets[0].getsockname()[:2])

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [True, True]


def test_a_connection_waiting_for_data_already_left_its_ticket(keys: Any, run_server: Callable[..., Any]) -> None:
    """The tickets arrive right after the handshake: a client blocked in recv() on a quiet server has already
    cached one, so a second connection made meanwhile resumes instead of spending a new QKD key."""
    release = threading.Event()

    def quiet(tls: HybridTLSSocket) -> None:
        tls.recv(1)
        release.wait(TIMEOUT)  # says nothing until the test is done
        tls.sendall(b"x")

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server, quiet)
    cache = client.client_sessions
    assert cache is not None
    with socket.create_connection(running.address, timeout=TIMEOUT) as raw, client.wrap_socket(raw) as first:
        first.sendall(b"c")
        first.settimeout(0.5)
        with pytest.raises(TimeoutError):
            first.recv(1)  # nothing comes: only the tickets were read
        assert len(cache) == 1
        with socket.create_connection(running.address, timeout=TIMEOUT) as raw2, client.wrap_socket(raw2) as second:
            assert second.session_reused()
            second.sendall(b"c")
        release.set()


def test_every_connection_ends_with_one_ticket(keys: Any, run_server: Callable[..., Any]) -> None:
    """What the resumption design rests on (docs/protocol.md §10.1): OpenSSL sends one ticket after a PSK
    handshake, and every handshake here is one, full (the external PSK of the hybrid exchange) or resumed.  The
    server remembers the session of the last ticket it sent and the client keeps the first it receives, which
    are then the same; a TLS library that sent several would need the server to accept any one of them."""
    from OpenSSL import SSL

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    counted: list[int] = []

    def count(conn: SSL.Connection, where: int, _ret: int) -> None:
        # One loop step per ticket read ("SSLv3/TLS read server session ticket").
        if where & SSL.SSL_CB_LOOP and b"session ticket" in conn.get_state_string():
            counted.append(1)

    client._handle.context.set_info_callback(count)  # before the context's first connection (pyOpenSSL)
    seen = []
    for _ in range(3):
        counted.clear()
        with socket.create_connection(running.address, timeout=TIMEOUT) as raw, client.wrap_socket(raw) as tls:
            tls.sendall(b"c")
            assert tls.recv(1) == b"c"  # the server's data comes after its tickets: every ticket was read
            seen.append((tls.session_reused(), len(counted)))
    assert seen == [(False, 1), (True, 1), (True, 1)]


def test_a_lookup_waits_for_issuing_connections_and_no_longer() -> None:
    from hybridkex_tls._resumption import ChainFacts, ServerSessionTable

    table = ServerSessionTable(60.0, 10, issuing_wait=5.0)
    facts = ChainFacts({}, time.monotonic())
    assert table.take(b"unknown") is None  # nobody issuing: a miss is answered at once
    entered, release = threading.Event(), threading.Event()

    def issue(key: bytes | None) -> None:
        with table.issuing():
            entered.set()
            release.wait(10)
            if key is not None:
                table.put(key, facts)

    recorder = threading.Thread(target=issue, args=(b"sent",))
    recorder.start()
    entered.wait(10)
    threading.Timer(0.2, release.set).start()
    assert table.take(b"sent") == facts  # the ticket was out before its record: found once recorded
    recorder.join(10)

    entered.clear()
    release.clear()
    idle = threading.Thread(target=issue, args=(None,))
    idle.start()
    entered.wait(10)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    assert table.take(b"unknown") is None  # an unknown session: no longer than the issuing step lasts
    assert time.monotonic() - started < 2.0
    idle.join(10)

    table.issuing_wait = 0.2
    entered.clear()
    release.clear()
    stuck = threading.Thread(target=issue, args=(None,))
    stuck.start()
    entered.wait(10)
    started = time.monotonic()
    assert table.take(b"unknown") is None  # an issuing step that lasts: the wait is bounded
    assert 0.15 < time.monotonic() - started < 2.0
    release.set()
    stuck.join(10)


def test_two_lookups_in_issuing_steps_do_not_wait_for_each_other() -> None:
    # Each connection's ClientHello check runs inside its own handshake step: two that miss at once must not
    # each wait out the bound for the other, which is looking a session up, not sending tickets.
    from hybridkex_tls._resumption import ServerSessionTable

    table = ServerSessionTable(60.0, 10, issuing_wait=3.0)
    results: list[object] = []
    both = threading.Barrier(2)

    def connection(key: bytes) -> None:
        with table.issuing():
            both.wait(10)
            results.append(table.take(key))

    other = threading.Thread(target=connection, args=(b"one",))
    other.start()
    started = time.monotonic()
    connection(b"two")
    other.join(10)
    assert results == [None, None] and time.monotonic() - started < 1.5


def test_a_ticket_stays_usable_when_its_connection_is_dropped_without_close(keys: Any,
                                                                            run_server: Callable[..., Any]) -> None:
    """The client keeps OpenSSL's session object, not a DER copy: freeing a connection that sent no close_notify
    would mark that object not resumable, and the next connection would offer nothing and be refused."""
    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server)
    talk(client, running.address)
    raw = socket.create_connection(running.address, timeout=TIMEOUT)
    tls = client.wrap_socket(raw)
    tls.sendall(b"ping")
    assert tls.recv(100) == b"ping" and tls.session_reused()
    assert len(client.client_sessions) == 1  # type: ignore[arg-type]
    del tls  # dropped, never closed: no close_notify
    gc.collect()
    raw.close()
    assert talk(client, running.address)["resumed"]


def test_a_connection_ended_by_a_tls_alert_leaves_no_unusable_ticket(keys: Any,
                                                                     run_server: Callable[..., Any]) -> None:
    """A forged record after the reply: the client's OpenSSL sends a fatal alert, which marks the connection's
    session (the ticket it cached) not resumable; the cache forgets that ticket, so the next connection is not
    refused for offering it but runs a full exchange."""
    def forge(tls: HybridTLSSocket) -> None:
        tls.sendall(tls.recv(100))
        tls._sock.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))  # an application-data record no key produced

    server = HybridTLSContext.server(identity=keys.server_key, peers=[keys.client_pub], timeout=TIMEOUT)
    client = HybridTLSContext.client(identity=keys.client_key, peers=[keys.server_pub], timeout=TIMEOUT)
    running = run_server(server, forge)
    with socket.create_connection(running.address, timeout=TIMEOUT) as raw, client.wrap_socket(raw) as tls:
        tls.sendall(b"ping")
        assert tls.recv(100) == b"ping"
        assert len(client.client_sessions) == 1  # type: ignore[arg-type]
        with pytest.raises(HybridKexError, match="integrity check|tampered"):
            tls.recv(100)
    assert len(client.client_sessions) == 0  # type: ignore[arg-type]
    assert not talk(client, running.address)["resumed"]
