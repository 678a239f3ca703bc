"""A threaded server: accept TCP connections, run the hybrid exchange and TLS on each in its own thread.

One failed handshake (wrong peer, tampered message, stalled client) is reported through
``on_error`` and logged, and the server goes on.  Each setup is bounded by the context's
timeout; at most ``max_connections`` run at once, further clients wait in the backlog.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from hybridkex import listen

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
                 backlog: int = 128, max_connections: int = 64, on_error: ErrorHook | None = None,
                 on_connect: Handler | None = None) -> None:
        if context.role != "server":
            raise ValueError("HybridTLSServer needs a server context (HybridTLSContext.server(...))")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.context = context
        self.handler = handler
        self.on_error = on_error
        self.on_connect = on_connect
        self.socket = listen(address, backlog)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._thread: threading.Thread | None = None
        self.connections_ok = 0
        """Connections whose hybrid exchange and TLS handshake succeeded."""
        self.connections_failed = 0
        """Connections whose setup failed."""

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
                if not self._slots.acquire(timeout=poll_interval):
                    continue
                try:
                    raw, peer = self.socket.accept()
                except (TimeoutError, BlockingIOError):
                    self._slots.release()
                    continue
                except OSError:
                    self._slots.release()
                    if self._stop.is_set():
                        break
                    raise
                raw.settimeout(None)
                worker = threading.Thread(target=self._serve_one, args=(raw, peer), daemon=True,
                                          name=f"hybridkex-tls {peer[0]}:{peer[1]}")
                with self._lock:
                    self._workers.add(worker)
                worker.start()
        finally:
            self._done.set()

    def start(self) -> HybridTLSServer:
        """Run :meth:`serve_forever` in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="hybridkex-tls accept")
        self._thread.start()
        return self

    def _serve_one(self, raw: socket.socket, peer: Address) -> None:
        try:
            try:
                tls = self.context.wrap_socket(raw)
            except Exception as exc:
                with self._lock:
                    self.connections_failed += 1
                log.warning("connection from %s: setup failed: %s", _fmt(peer), exc)
                self._report(peer, exc)
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
