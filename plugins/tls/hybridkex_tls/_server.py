"""A threaded server: accept TCP connections, run the hybrid exchange and TLS on each in its own thread.

One failed handshake (wrong peer, tampered message, stalled client) is reported through
``on_error`` and logged, and the server goes on.  The server holds its ground against
clients that connect and say nothing:

- a client must authenticate (hybrid exchange, or resumption) within the context's
  ``pre_auth_timeout``, shorter than the whole setup's ``timeout``;
- at most ``max_pending_per_source`` connections from one address, and
  ``max_pending`` in all, may be unauthenticated at once: a new one evicts the oldest,
  so a flood of idle sockets cannot keep a legitimate client out;
- at most ``max_connections`` authenticated connections are served at once (others wait
  for a slot up to the context's ``timeout``), and an
  established connection that stays silent for the context's ``idle_timeout`` fails its
  read with :class:`TimeoutError`;
- running out of file descriptors (EMFILE) pauses accepting briefly instead of ending it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Any

from hybridkex.io import listen

from ._context import HybridTLSContext
from ._tlssocket import HybridTLSSocket

__all__ = ["HybridTLSServer"]

log = logging.getLogger("hybridkex_tls")

Address = tuple[Any, ...]
Handler = Callable[[HybridTLSSocket], None]
ErrorHook = Callable[[Address, BaseException], None]


class HybridTLSServer:
    """Serve ``handler(tls_socket)`` for every client that completes the hybrid exchange and TLS.

    ``handler`` runs in the connection's thread; the socket is closed when it returns.
    ``on_connect(tls_socket)`` and ``on_error(peer_address, exception)`` observe each
    connection (they must not raise).  Use as a context manager, or call
    :meth:`serve_forever` (blocking) or :meth:`start` (in a background thread), then
    :meth:`shutdown`.
    """

    def __init__(self, context: HybridTLSContext, address: tuple[str, int], handler: Handler, *,
                 backlog: int = 128, max_connections: int = 64, max_pending: int = 256,
                 max_pending_per_source: int = 32, on_error: ErrorHook | None = None,
                 on_connect: Handler | None = None) -> None:
        if context.role != "server":
            raise ValueError("HybridTLSServer needs a server context (HybridTLSContext.server(...))")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not 1 <= max_pending_per_source <= max_pending:
            raise ValueError("max_pending_per_source must be at least 1 and at most max_pending")
        self.context = context
        self.handler = handler
        self.on_error = on_error
        self.on_connect = on_connect
        self.max_pending = max_pending
        self.max_pending_per_source = max_pending_per_source
        self.socket = listen(address, backlog)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._pending: OrderedDict[socket.socket, str] = OrderedDict()
        self._pending_by_source: dict[str, int] = {}
        self._evicted: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.connections_ok = 0
        """Connections whose hybrid exchange (or resumption) and TLS handshake succeeded."""
        self.connections_failed = 0
        """Connections whose setup failed."""
        self.connections_evicted = 0
        """Unauthenticated connections closed to make room for newer ones (per-source or overall cap)."""
        self.connections_refused = 0
        """Authenticated connections closed because no ``max_connections`` slot freed up in time."""

    @property
    def server_address(self) -> tuple[str, int]:
        """The address actually bound (the real port when port 0 was asked for)."""
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Accept connections until :meth:`shutdown`."""
        self._done.clear()
        self.socket.settimeout(poll_interval)
        try:
            while not self._stop.is_set():
                try:
                    raw, peer = self.socket.accept()
                except (TimeoutError, BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # Out of descriptors or memory: the connection waits in the backlog; try again shortly.
                        log.warning("accept failed (%s); retrying in 0.1 s", exc.strerror or exc)
                        self._stop.wait(0.1)
                        continue
                    raise
                raw.settimeout(None)
                self._admit(raw, str(peer[0]))
                worker = threading.Thread(target=self._serve_one, args=(raw, peer), daemon=True,
                                          name=f"hybridkex-tls {peer[0]}:{peer[1]}")
                with self._lock:
                    self._workers.add(worker)
                try:
                    worker.start()
                except RuntimeError:  # no thread available: drop this connection, keep serving
                    with self._lock:
                        self._workers.discard(worker)
                    self._settled(raw)
                    raw.close()
        finally:
            self._done.set()

    def _admit(self, raw: socket.socket, source: str) -> None:
        """Register an unauthenticated connection, evicting the oldest one over a cap."""
        victims = []
        with self._lock:
            if self._pending_by_source.get(source, 0) >= self.max_pending_per_source:
                victims.append(next(s for s, src in self._pending.items() if src == source))
            elif len(self._pending) >= self.max_pending:
                victims.append(next(iter(self._pending)))
            for victim in victims:
                self._forget(victim)
                self._evicted.add(victim)
                self.connections_evicted += 1
            self._pending[raw] = source
            self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        for victim in victims:
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)  # wakes its thread, whose setup then fails

    def _forget(self, raw: socket.socket) -> None:
        source = self._pending.pop(raw, None)
        if source is not None:
            left = self._pending_by_source[source] - 1
            if left:
                self._pending_by_source[source] = left
            else:
                del self._pending_by_source[source]

    def _settled(self, raw: socket.socket) -> bool:
        """The connection left the unauthenticated set; True if it had been evicted."""
        with self._lock:
            self._forget(raw)
            if raw in self._evicted:
                self._evicted.discard(raw)
                return True
            return False

    @property
    def pending_connections(self) -> int:
        """Connections accepted and not yet authenticated."""
        with self._lock:
            return len(self._pending)

    def start(self) -> HybridTLSServer:
        """Run :meth:`serve_forever` in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="hybridkex-tls accept")
        self._thread.start()
        return self

    def _serve_one(self, raw: socket.socket, peer: Address) -> None:
        slot = False
        try:
            try:
                tls = self.context.wrap_socket(raw)
            except Exception as exc:
                evicted = self._settled(raw)
                with self._lock:
                    self.connections_failed += 1
                if evicted:
                    log.info("connection from %s: closed unauthenticated to make room for newer ones", _fmt(peer))
                else:
                    log.warning("connection from %s: setup failed: %s", _fmt(peer), exc)
                self._report(peer, exc)
                return
            self._settled(raw)
            # Authenticated clients beyond max_connections wait for a slot, up to the setup timeout.
            slot = self._slots.acquire(timeout=self.context.timeout)
            if not slot:
                with self._lock:
                    self.connections_refused += 1
                log.warning("connection from %s: closed after waiting %g s for one of the max_connections slots",
                            _fmt(peer), self.context.timeout)
                tls.close()
                return
            with self._lock:
                self.connections_ok += 1
            with tls:
                if self.on_connect is not None:
                    self.on_connect(tls)
                try:
                    self.handler(tls)
                except Exception as exc:
                    log.warning("connection from %s: handler failed: %s", _fmt(peer), exc)
                    self._report(peer, exc)
        finally:
            if slot:
                self._slots.release()
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _report(self, peer: Address, exc: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(peer, exc)
            except Exception:  # an observer must not take the server down
                log.exception("on_error hook failed")

    def shutdown(self, timeout: float | None = 5.0) -> None:
        """Stop accepting, close the listening socket, and wait up to ``timeout`` s for running connections."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._done.wait(timeout)
        self.socket.close()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)

    def close(self) -> None:
        """Same as :meth:`shutdown`."""
        self.shutdown()

    def __enter__(self) -> HybridTLSServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()


def _fmt(peer: Address) -> str:
    return f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)
