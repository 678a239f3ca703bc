"""Benchmark: round trips to the first reply byte, CPU per connection, and bulk throughput.

Run with ``python -m hybridkex_tls.bench_rtt`` (``--help`` for options).  This kernel may
lack netem, so a userspace TCP relay on loopback holds every chunk a fixed time in each
direction (``--delay``, default 25 ms: a 50 ms round trip).  The relay models message
round trips, not TCP's own handshake (the client's connect() to the relay is local), so
"RTT" below counts round trips *past* TCP's.  Time to first reply byte runs from
connect() to the first byte of the server's reply to the client's first message.

Variants (all TLS 1.3 over X25519MLKEM768, through pyOpenSSL):

``hybrid_full``      hybrid exchange (ML-DSA-65 both sides, ML-KEM-768 + X25519), then TLS keyed by it
``hybrid_resumed``   resumption of the hybrid chain's TLS session: no hybrid exchange, no signature, no QKD
``plain_tls``        server-authenticated TLS with an ML-DSA-65 certificate, full handshake
``plain_resumed``    the same, resuming a ticket (the reference for resumed CPU)
``mtls_mldsa65``     mutual TLS with ML-DSA-65 certificates on both sides

CPU per connection is measured without the relay (both sides in this process).
Throughput sends ``--mib`` MiB over loopback through the blocking socket and the asyncio
streams, beside plain pyOpenSSL TLS 1.3 in the same run.  The last line printed is one
JSON object.  Goals: resumed at most 2 RTT, resumed CPU at most 1.2x plain resumption,
throughput at least 0.9x (blocking) and 0.8x (asyncio) of plain pyOpenSSL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hybridkex import generate_identity, write_identity

from ._context import HybridTLSContext
from ._importer import HYBRID_GROUPS
from ._openssl import SSL, session_reused, set_groups
from .bench import _write_pki

__all__ = ["main", "DelayRelay"]

ClientSide = Callable[[tuple[str, int]], float]
ServerSide = Callable[[socket.socket], None]


class DelayRelay:
    """A TCP relay on loopback that delivers every chunk ``delay`` seconds after it arrived, per direction."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        queue: list[tuple[float, int, bytes]] = []
        cond = threading.Condition()
        done = [False]

        def deliver() -> None:
            while True:
                with cond:
                    while not queue and not done[0]:
                        cond.wait()
                    if not queue and done[0]:
                        break
                    due, _, data = queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        cond.wait(wait)
                        continue
                    heapq.heappop(queue)
                try:
                    if data:
                        dst.sendall(data)
                    else:
                        dst.shutdown(socket.SHUT_WR)
                except OSError:
                    break

        sender = threading.Thread(target=deliver, daemon=True)
        sender.start()
        n = 0
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            with cond:
                n += 1
                heapq.heappush(queue, (time.monotonic() + self.delay, n, data))
                cond.notify()
            if not data:
                break
        with cond:
            done[0] = True
            cond.notify()
        sender.join(10)
        with contextlib.suppress(OSError):
            src.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


@contextlib.contextmanager
def _server(handler: ServerSide) -> Iterator[tuple[str, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_quiet, args=(handler, raw), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        listener.close()


@contextlib.contextmanager
def _server_process(handler: ServerSide) -> Iterator[tuple[str, int]]:
    """:func:`_server` in a forked child process (ended by its PID afterwards)."""
    import multiprocessing
    import os
    import signal

    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]

    def serve() -> None:
        while True:
            raw, _ = listener.accept()
            _quiet(handler, raw)

    child = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
    child.start()
    listener.close()
    try:
        yield address
    finally:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        child.join(10)


def _quiet(handler: ServerSide, raw: socket.socket) -> None:
    try:
        handler(raw)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports failures on the client side
        print(f"server side failed: {exc}", file=sys.stderr)
    finally:
        raw.close()


# -- variants -----------------------------------------------------------------------------------------
def _hybrid_pair(directory: Path) -> tuple[HybridTLSContext, HybridTLSContext]:
    paths = {}
    for role in ("server", "client"):
        paths[role] = write_identity(generate_identity("ml-dsa-65"), directory / role)
    server = HybridTLSContext.server(identity=paths["server"][0], peers=[paths["client"][1]],
                                     max_resumptions=1_000_000)
    client = HybridTLSContext.client(identity=paths["client"][0], peers=[paths["server"][1]],
                                     max_resumptions=1_000_000)
    return server, client


def _hybrid_sides(server: HybridTLSContext, client: HybridTLSContext, resume: bool) \
        -> tuple[ServerSide, ClientSide]:
    def server_side(raw: socket.socket) -> None:
        with server.wrap_socket(raw) as tls:
            tls.recv(1)
            tls.sendall(b"s")

    seen: set[tuple[str, int]] = set()

    def client_side(address: tuple[str, int]) -> float:
        if not resume and client.client_sessions is not None:
            client.client_sessions.drop(f"{address[0]}:{address[1]}")
        started = time.perf_counter()
        raw = socket.create_connection(address)
        with client.wrap_socket(raw) as tls:
            tls.sendall(b"c")
            tls.recv(1)
            elapsed = time.perf_counter() - started
            if tls.session_reused() != (resume and address in seen):  # a resumed chain starts with a full one
                raise RuntimeError(f"expected resumed={resume}, got {tls.session_reused()}")
        seen.add(address)
        return elapsed

    return server_side, client_side


def _pki_sides(directory: Path, mutual: bool, resume: bool) -> tuple[ServerSide, ClientSide]:
    def context(role: str) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if role == "server" else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        if role == "server" or mutual:
            ctx.use_certificate_file(str(directory / f"{role}.pem"))
            ctx.use_privatekey_file(str(directory / f"{role}.key"))
        ctx.load_verify_locations(str(directory / "ca.pem"))
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mutual or role == "client"
                       else SSL.VERIFY_NONE)
        set_groups(ctx, HYBRID_GROUPS)
        if not resume:
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        else:
            ctx.set_session_id(b"bench")
        return ctx

    server_ctx, client_ctx = context("server"), context("client")
    session: list[Any] = []

    def server_side(raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(server_ctx, raw)
        conn.set_accept_state()
        conn.do_handshake()
        conn.recv(1)
        conn.sendall(b"s")
        conn.shutdown()

    def client_side(address: tuple[str, int]) -> float:
        started = time.perf_counter()
        raw = socket.create_connection(address)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(client_ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        if resume and session:
            conn.set_session(session[0])
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"c")
        conn.recv(1)
        elapsed = time.perf_counter() - started
        if resume:
            if session and not session_reused(conn):
                raise RuntimeError("the plain TLS session did not resume")
            session[:] = [conn.get_session()]
        conn.shutdown()
        raw.close()
        return elapsed

    return server_side, client_side


# -- measurements -------------------------------------------------------------------------------------
def _rtts(server_side: ServerSide, client_side: ClientSide, delay: float, count: int, warm: int) -> float:
    with _server(server_side) as address:
        relay = DelayRelay(address, delay)
        try:
            for _ in range(warm):
                client_side(relay.address)
            samples = [client_side(relay.address) for _ in range(count)]
        finally:
            relay.close()
    return statistics.median(samples) / (2 * delay)


def _cpu(server_side: ServerSide, client_side: ClientSide, count: int, warm: int) -> float:
    with _server(server_side) as address:
        for _ in range(warm):
            client_side(address)
        started = time.process_time()
        for _ in range(count):
            client_side(address)
        time.sleep(0.05)  # the last server thread finishes its close
        return (time.process_time() - started) * 1000 / count


def _throughput(server: HybridTLSContext, client: HybridTLSContext, directory: Path, mib: int) \
        -> dict[str, float]:
    total = mib << 20
    chunk = b"x" * (1 << 16)

    def sink_hybrid(raw: socket.socket) -> None:
        with server.wrap_socket(raw) as tls:
            buffer = bytearray(1 << 16)
            while tls.recv_into(buffer):
                pass
            tls.sendall(b"k")

    def plain_ctx(role: str) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if role == "server" else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        if role == "server":
            ctx.use_certificate_file(str(directory / "server.pem"))
            ctx.use_privatekey_file(str(directory / "server.key"))
        set_groups(ctx, HYBRID_GROUPS)
        return ctx

    plain_server, plain_client = plain_ctx("server"), plain_ctx("client")

    def sink_plain(raw: socket.socket) -> None:
        conn = SSL.Connection(plain_server, raw)
        conn.set_accept_state()
        conn.do_handshake()
        buffer = bytearray(1 << 16)
        with contextlib.suppress(SSL.ZeroReturnError):
            while conn.recv_into(buffer):
                pass
        conn.sendall(b"k")

    def blocking_hybrid(address: tuple[str, int]) -> float:
        raw = socket.create_connection(address)
        with client.wrap_socket(raw) as tls:
            started = time.perf_counter()
            for _ in range(total // len(chunk)):
                tls.sendall(chunk)
            tls.shutdown(socket.SHUT_WR)
            tls.recv(1)
            return time.perf_counter() - started

    def blocking_plain(address: tuple[str, int]) -> float:
        raw = socket.create_connection(address)
        conn = SSL.Connection(plain_client, raw)
        conn.set_connect_state()
        conn.do_handshake()
        started = time.perf_counter()
        for _ in range(total // len(chunk)):
            conn.sendall(chunk)
        conn.shutdown()
        with contextlib.suppress(SSL.Error):
            conn.recv(1)
        elapsed = time.perf_counter() - started
        raw.close()
        return elapsed

    def asyncio_hybrid(address: tuple[str, int]) -> float:
        from ._streams import open_connection

        async def run() -> float:
            reader, writer = await open_connection(address[0], address[1], client)
            started = time.perf_counter()
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            await reader.read(1)
            elapsed = time.perf_counter() - started
            writer.close()
            return elapsed

        return asyncio.run(run())

    results: dict[str, list[float]] = {"blocking": [], "asyncio": [], "plain": []}
    # The receiving side runs in its own process (as a real peer does), so the two sides do not share a GIL.
    with _server_process(sink_hybrid) as hybrid_address, _server_process(sink_plain) as plain_address:
        for _ in range(3):  # interleaved, best of three each
            results["plain"].append(blocking_plain(plain_address))
            results["blocking"].append(blocking_hybrid(hybrid_address))
            results["asyncio"].append(asyncio_hybrid(hybrid_address))
    rate = {name: mib / min(times) for name, times in results.items()}
    return {"plain_mib_s": round(rate["plain"], 1), "blocking_mib_s": round(rate["blocking"], 1),
            "asyncio_mib_s": round(rate["asyncio"], 1),
            "blocking_ratio": round(rate["blocking"] / rate["plain"], 3),
            "asyncio_ratio": round(rate["asyncio"] / rate["plain"], 3)}


def _connect_under_flood(server: HybridTLSContext, client: HybridTLSContext, idle: int = 500) -> float:
    """Seconds a real client needs to connect (full hybrid exchange) while ``idle`` silent sockets from the same
    address are open against a :class:`~hybridkex_tls.HybridTLSServer`."""
    from ._server import HybridTLSServer

    def echo(tls: Any) -> None:
        tls.sendall(tls.recv(10))

    import logging

    sockets: list[socket.socket] = []
    quiet = logging.getLogger("hybridkex_tls")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # 500 "closed before sending anything" lines say nothing here
    with contextlib.ExitStack() as restore, HybridTLSServer(server, ("127.0.0.1", 0), echo) as running:
        restore.callback(quiet.setLevel, level)
        running.start()
        try:
            for _ in range(idle):
                sockets.append(socket.create_connection(running.server_address, timeout=5))
            time.sleep(0.5)  # let the accept loop take them all in
            if client.client_sessions is not None:
                client.client_sessions.drop(f"127.0.0.1:{running.server_address[1]}")
            started = time.perf_counter()
            with socket.create_connection(running.server_address, timeout=10) as raw, \
                    client.wrap_socket(raw) as tls:
                tls.sendall(b"x")
                tls.recv(10)
            return time.perf_counter() - started
        finally:
            for sock in sockets:
                sock.close()


def run(delay: float = 0.025, count: int = 10, cpu_count: int = 50, mib: int = 64) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write_pki(directory)
        server, client = _hybrid_pair(directory)
        variants = {
            "hybrid_full": _hybrid_sides(server, client, resume=False),
            "hybrid_resumed": _hybrid_sides(server, client, resume=True),
            "plain_tls": _pki_sides(directory, mutual=False, resume=False),
            "plain_resumed": _pki_sides(directory, mutual=False, resume=True),
            "mtls_mldsa65": _pki_sides(directory, mutual=True, resume=False),
        }
        rtt: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name, (server_side, client_side) in variants.items():
            rtt[name] = round(_rtts(server_side, client_side, delay, count, warm=2), 2)
            cpu[name] = round(_cpu(server_side, client_side, cpu_count, warm=3), 3)
            print(f"{name:15s} first reply byte after {rtt[name]:.2f} RTT past TCP; {cpu[name]:.2f} ms CPU "
                  "per connection (both sides)", flush=True)
        flood = _connect_under_flood(server, client)
        print(f"a full connection with 500 idle sockets from the same address open: {flood:.3f} s", flush=True)
        throughput = _throughput(server, client, directory, mib)
        print(f"throughput, {mib} MiB: plain pyOpenSSL {throughput['plain_mib_s']} MiB/s, hybrid blocking "
              f"{throughput['blocking_mib_s']} ({throughput['blocking_ratio']}x), asyncio "
              f"{throughput['asyncio_mib_s']} ({throughput['asyncio_ratio']}x)", flush=True)
    return {"delay_ms": delay * 1000, "rtt": rtt, "cpu_ms": cpu,
            "resumed_cpu_ratio": round(cpu["hybrid_resumed"] / cpu["plain_resumed"], 3),
            "connect_under_500_idle_s": round(flood, 3), **throughput}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridkex_tls.bench_rtt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=25.0, help="ms the relay holds data per direction")
    parser.add_argument("--count", type=int, default=10, help="timed connections per variant through the relay")
    parser.add_argument("--cpu-count", type=int, default=50, help="connections per variant for CPU time")
    parser.add_argument("--mib", type=int, default=64, help="MiB sent for each throughput figure")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.delay / 1000, args.count, args.cpu_count, args.mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
