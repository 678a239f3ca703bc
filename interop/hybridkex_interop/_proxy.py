"""A TCP proxy that misbehaves on purpose, and a server that never answers.

:class:`FaultProxy` sits between an initiator and a responder on loopback and forwards
bytes both ways, except that one :class:`Fault` applies to one direction from a byte offset
on: it delays, drops (black-holes), truncates (closes), duplicates, corrupts or resets (TCP
RST) the stream.  The offset is counted in bytes of that direction, so "reset when the
responder starts answering" is ``Fault("reset", "s2c", at=0)``: independent of how the
kernel splits the stream into reads.

:class:`SilentServer` accepts connections, reads what arrives and never sends a byte: a
responder that hangs.

Both run in daemon threads of the calling process and are context managers.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["Fault", "FaultProxy", "SilentServer", "FAULT_KINDS"]

FaultKind = Literal["pass", "delay", "drop", "truncate", "duplicate", "corrupt", "reset"]
Direction = Literal["c2s", "s2c"]
FAULT_KINDS: tuple[FaultKind, ...] = ("pass", "delay", "drop", "truncate", "duplicate", "corrupt", "reset")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one direction of each connection."""

    kind: FaultKind = "pass"
    """``pass`` forward untouched; ``delay`` hold every chunk ``delay`` seconds; ``drop`` discard every
    byte (the connection stays open); ``truncate`` forward up to the offset, then close both sides
    (FIN); ``duplicate`` send the chunk holding the offset twice; ``corrupt`` flip the byte at the
    offset; ``reset`` forward up to the offset, then reset both sides (RST)."""
    direction: Direction = "c2s"
    """``c2s``: initiator to responder; ``s2c``: responder to initiator."""
    at: int = 0
    """Byte offset in that direction where the fault starts."""
    delay: float = 0.0
    """Seconds, for ``delay``."""
    connections: int | None = None
    """Apply to the first N connections only (None: to all), e.g. to test a retry."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        if self.direction not in ("c2s", "s2c"):
            raise ValueError("direction must be 'c2s' or 's2c'")
        if self.at < 0 or self.delay < 0:
            raise ValueError("at and delay must not be negative")

    def describe(self) -> str:
        where = "initiator→responder" if self.direction == "c2s" else "responder→initiator"
        what = f"{self.kind} {self.delay:g}s" if self.kind == "delay" else self.kind
        return f"{what} {where} from byte {self.at}"


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Listener:
    """A loopback listening socket served by a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._server = socket.create_server((host, port))
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.connections = 0
        """Connections accepted so far."""

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> None:
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"{type(self).__name__}-accept")
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                index = self.connections
            t = threading.Thread(target=self._serve, args=(conn, index), daemon=True,
                                 name=f"{type(self).__name__}-{index}")
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        for t in self._threads:
            t.join(timeout=5)


class FaultProxy(_Listener):
    """Forward connections on ``host:port`` (port 0: any free port) to ``target``, applying ``fault``."""

    def __init__(self, target: tuple[str, int], fault: Fault | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.target = target
        self.fault = fault or Fault()
        self.triggered = threading.Event()
        """Set once the fault was applied to some connection."""
        self.bytes = {"c2s": 0, "s2c": 0}
        """Bytes read from each side so far (all connections)."""

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, client: socket.socket, index: int) -> None:
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        fault = self.fault if self.fault.connections is None or index <= self.fault.connections else Fault()
        _Pump(self, client, server, fault).run()


class _Pump:
    """Both directions of one proxied connection, in one thread (select)."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket, fault: Fault) -> None:
        self.proxy = proxy
        self.fault = fault
        self.socks: dict[Direction, tuple[socket.socket, socket.socket]] = {"c2s": (client, server),
                                                                           "s2c": (server, client)}
        self.offset: dict[Direction, int] = {"c2s": 0, "s2c": 0}
        self.open: set[Direction] = {"c2s", "s2c"}
        self.done = False
        self.hit = False

    def run(self) -> None:
        client, server = self.socks["c2s"]
        try:
            while self.open and not self.done and not self.proxy._stop.is_set():
                sources = {self.socks[d][0]: d for d in self.open}
                readable, _, _ = select.select(list(sources), [], [], 0.1)
                for sock in readable:
                    if self.done:
                        break
                    self._pump(sources[sock])
        except OSError:
            for s in (client, server):
                _reset(s)
            return
        if not self.done:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()

    def _end(self, *, rst: bool) -> None:
        self.done = True
        for s in self.socks["c2s"]:
            if rst:
                _reset(s)
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _pump(self, direction: Direction) -> None:
        src, dst = self.socks[direction]
        try:
            data = src.recv(_CHUNK)
        except ConnectionResetError:
            self._end(rst=True)  # pass the reset on
            return
        if not data:
            self.open.discard(direction)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            return
        off = self.offset[direction]
        self.offset[direction] = off + len(data)
        self.proxy.bytes[direction] += len(data)
        f = self.fault
        if f.kind == "pass" or f.direction != direction or off + len(data) <= f.at:
            dst.sendall(data)
            return
        cut = max(0, f.at - off)  # bytes of this chunk before the fault's offset
        first, self.hit = not self.hit, True  # offsets are contiguous: the first hit holds the offset
        self.proxy.triggered.set()
        if f.kind == "delay":
            time.sleep(f.delay)
            dst.sendall(data)
        elif f.kind == "drop":
            if cut:
                dst.sendall(data[:cut])
        elif f.kind == "truncate":
            if cut:
                dst.sendall(data[:cut])
            self._end(rst=False)
        elif f.kind == "reset":
            if cut:
                dst.sendall(data[:cut])
            self._end(rst=True)
        elif f.kind == "duplicate":
            dst.sendall(data)
            if first:
                dst.sendall(data)
        elif f.kind == "corrupt":
            if first:
                buf = bytearray(data)
                buf[f.at - off] ^= 0xFF
                data = bytes(buf)
            dst.sendall(data)


class SilentServer(_Listener):
    """Accept connections, read and discard what arrives, never answer; close on :meth:`close`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.received = 0
        """Bytes received so far."""
        self._conns: list[socket.socket] = []

    def __enter__(self) -> SilentServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, conn: socket.socket, index: int) -> None:
        self._conns.append(conn)
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = conn.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def close(self) -> None:
        super().close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
