"""Blocking and asyncio adapters: drive a sans-I/O handshake over a stream socket.

They read whole frames (header first, then exactly the announced body, never more than
the wire limit), feed them to the state machine, send what it produces, and answer its
QKD requests from a :class:`~hybridkex.qkd.QKDKeySource`.  On any failure they tell the
peer with an alert when the state machine prepared one, and raise; no key comes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from .._errors import HandshakeTimeout, HybridKexError, TransportError
from ..protocol._handshake import Connection, HandshakeResult
from ..protocol._qkd import QKDKeySource
from ..protocol._wire import HEADER_SIZE, parse_header
from ._backoff import Backoff
from ._pump import AWAIT_CLOSE_SECONDS, READ, AskQKD, Send, ask_qkd, pump

__all__ = ["run_handshake", "run_handshake_async", "connect", "listen", "read_frame", "recv_exact", "send_all"]


def recv_exact(sock: socket.socket, n: int, deadline: float, what: str) -> bytes:
    """Read exactly ``n`` bytes before ``deadline`` (a ``time.monotonic()`` value), or raise."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeTimeout(f"timed out waiting for the peer's {what}; the peer is down, stuck or too slow")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            raise HandshakeTimeout(f"timed out waiting for the peer's {what}; the peer is down, stuck or too slow") \
                from None
        except OSError as exc:
            raise TransportError(f"connection failed while reading the peer's {what}: {exc.strerror or exc}") \
                from None
        if not chunk:
            got = f" after {len(buf)} of {n} bytes" if buf else ""
            raise TransportError(f"the peer closed the connection while this side waited for its {what}{got}; "
                                 "see the peer's log for why")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, deadline: float) -> bytes:
    """Read one whole frame, checking the header before reading the body."""
    header = recv_exact(sock, HEADER_SIZE, deadline, "message header")
    _, length = parse_header(header)
    return header + recv_exact(sock, length, deadline, "message body")


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send all of ``data`` before ``deadline`` (a ``time.monotonic()`` value), or raise."""
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        sock.sendall(data)
    except TimeoutError:
        raise HandshakeTimeout("timed out sending to the peer; it is not reading") from None
    except OSError as exc:
        raise TransportError(f"connection failed while sending to the peer: {exc.strerror or exc}") from None


def _send_alert(sock: socket.socket, conn: Connection) -> None:
    if conn.error_alert:
        with contextlib.suppress(OSError, HybridKexError):
            send_all(sock, conn.error_alert, time.monotonic() + 1.0)


def _frame_or_close(sock: socket.socket, deadline: float) -> bytes | None:
    try:
        return read_frame(sock, deadline)
    except (TransportError, HandshakeTimeout):
        return None


def run_handshake(sock: socket.socket, conn: Connection, qkd_source: QKDKeySource | None = None, *,
                  timeout: float | None = None, await_close: bool = False) -> HandshakeResult:
    """Run ``conn`` (an Initiator or Responder) to completion over a connected socket.

    ``timeout`` bounds the whole handshake (default: the config's).  The socket is left
    open and blocking; the caller closes it.  ``await_close`` is the pump's (use it when
    nothing follows on the connection, as for ``hybridkex exchange``; the other side closes
    at once).  The steps are :func:`~hybridkex.io.pump`'s.
    """
    deadline = time.monotonic() + (timeout if timeout is not None else conn.config.timeout)
    previous_timeout = sock.gettimeout()
    steps = pump(conn, await_close=await_close)
    answer: object = None
    try:
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Send):
                send_all(sock, step.data, deadline)
                answer = None
            elif isinstance(step, AskQKD):
                answer = ask_qkd(qkd_source, step.request)
            elif step is READ:
                answer = read_frame(sock, deadline)
            else:  # AWAIT_CLOSE
                answer = _frame_or_close(sock, min(deadline, time.monotonic() + AWAIT_CLOSE_SECONDS))
    except HybridKexError:
        _send_alert(sock, conn)
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous_timeout)


#: Refused connections are retried quickly at first (the peer is starting), then every half second.
_CONNECT_RETRY = Backoff(0.05, 0.5, jitter=0.2)


def connect(address: tuple[str, int], timeout: float = 10.0, *, retry_for: float = 0.0) -> socket.socket:
    """Connect over TCP, retrying refused connections for ``retry_for`` seconds (peer still starting)."""
    give_up = time.monotonic() + retry_for
    attempt = 0
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() >= give_up:
                raise TransportError(f"connection to {address[0]}:{address[1]} refused; is the peer listening?") \
                    from None
            attempt += 1
            time.sleep(min(_CONNECT_RETRY.delay(attempt), max(0.0, give_up - time.monotonic())))
        except TimeoutError:
            raise TransportError(f"connecting to {address[0]}:{address[1]} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {address[0]}:{address[1]}: {exc.strerror or exc}") from None


def listen(address: tuple[str, int], backlog: int = 128) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, IPv4 or IPv6 by the host given)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}; is the port in "
                             "use or the address not local?") from None
    sock.listen(backlog)
    return sock


async def _read_frame_async(reader: asyncio.StreamReader) -> bytes:
    try:
        header = await reader.readexactly(HEADER_SIZE)
        _, length = parse_header(header)
        return header + await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TransportError("the peer closed the connection during the handshake; see the peer's log for why") \
            from exc
    except OSError as exc:
        raise TransportError(f"connection failed during the handshake: {exc.strerror or exc}") from None


async def _frame_or_close_async(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await asyncio.wait_for(_read_frame_async(reader), AWAIT_CLOSE_SECONDS)
    except (TransportError, TimeoutError):
        return None


async def run_handshake_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection,
                              qkd_source: QKDKeySource | None = None, *,
                              timeout: float | None = None, await_close: bool = False) -> HandshakeResult:
    """asyncio version of :func:`run_handshake`, the same pump.  QKD source calls (blocking HTTPS)
    run in the default executor."""

    async def drive() -> HandshakeResult:
        loop = asyncio.get_running_loop()
        steps = pump(conn, await_close=await_close)
        answer: object = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Send):
                writer.write(step.data)
                await writer.drain()
                answer = None
            elif isinstance(step, AskQKD):
                answer = await loop.run_in_executor(None, ask_qkd, qkd_source, step.request)
            elif step is READ:
                answer = await _read_frame_async(reader)
            else:  # AWAIT_CLOSE
                answer = await _frame_or_close_async(reader)

    try:
        return await asyncio.wait_for(drive(), timeout if timeout is not None else conn.config.timeout)
    except TimeoutError:
        raise HandshakeTimeout("the handshake timed out; the peer is down, stuck or too slow") from None
    except HybridKexError:
        if conn.error_alert:
            with contextlib.suppress(Exception):
                writer.write(conn.error_alert)
                await asyncio.wait_for(writer.drain(), 1.0)
        raise
