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

from ._errors import (
    HandshakeTimeout,
    HybridKexError,
    PeerAlertError,
    QKDError,
    QKDSourceMissing,
    RemoteProtocolError,
    TransportError,
)
from ._handshake import (
    Connection,
    Event,
    HandshakeComplete,
    HandshakeResult,
    Initiator,
    NeedChannelConfirmation,
    NeedQKDKeys,
    SendMessage,
)
from ._wire import HEADER_SIZE, Alert, decode, parse_header
from .qkd._source import QKDKey, QKDKeySource

__all__ = ["run_handshake", "run_handshake_async", "connect", "parse_address", "listen", "read_frame", "recv_exact",
           "send_all"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def _ask_qkd(source: QKDKeySource | None, request: NeedQKDKeys) -> list[QKDKey] | QKDError:
    if source is None:
        return QKDSourceMissing("no QKD key source is configured on this side")
    try:
        if request.role == "master":
            return source.get_new_keys(request.number, request.size_bits)
        if request.peer_sae_id:
            return source.get_keys_from(list(request.key_ids), request.peer_sae_id)
        return source.get_keys_by_id(list(request.key_ids))
    except QKDError as exc:
        return exc


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


def _await_close(sock: socket.socket, deadline: float) -> None:
    """After sending the last message: the peer either closes (it accepted the message) or sends an
    alert (its check of that message failed, so no key).  The close is not the proof of the peer's
    key (that came before); it only rules out the alert.  Silence until the deadline counts as closed."""
    try:
        frame = read_frame(sock, deadline)
    except (TransportError, HandshakeTimeout):
        return
    message = decode(frame)
    if isinstance(message, Alert):
        raise PeerAlertError(f"peer aborted the handshake after this side's last message: {message.text}",
                             int(message.code))
    raise RemoteProtocolError("peer sent data after the handshake instead of closing")


def run_handshake(sock: socket.socket, conn: Connection, qkd_source: QKDKeySource | None = None, *,
                  timeout: float | None = None, await_close: bool = False) -> HandshakeResult:
    """Run ``conn`` (an Initiator or Responder) to completion over a connected socket.

    ``timeout`` bounds the whole handshake (default: the config's).  The socket is left
    open and blocking; the caller closes it.  Each side returns only once it holds the
    peer's proof of the final session secret (a closed connection never counts as one).
    An initiator with channel confirmation returns at :class:`NeedChannelConfirmation`
    with the provisional result: the caller's channel (TLS) then confirms it.

    With ``await_close`` the side that sent the handshake's last message waits (up to 5 s) for
    the peer to close or to send an alert, so that altering that last message leaves neither
    side with a key (use it when nothing follows on the connection, as for ``hybridkex
    exchange``; the other side closes at once).
    """
    deadline = time.monotonic() + (timeout if timeout is not None else conn.config.timeout)
    previous_timeout = sock.gettimeout()
    try:
        events: list[Event] = conn.initiate() if isinstance(conn, Initiator) else []
        if not isinstance(conn, Initiator):
            events = conn.receive(read_frame(sock, deadline))
        while True:
            follow_up: list[Event] = []
            sent_last = False
            for event in events:
                if isinstance(event, SendMessage):
                    send_all(sock, event.data, deadline)
                    sent_last = True
                elif isinstance(event, NeedQKDKeys):
                    answer = _ask_qkd(qkd_source, event)
                    follow_up += conn.qkd_failed(answer) if isinstance(answer, QKDError) \
                        else conn.qkd_keys(answer)
                elif isinstance(event, (HandshakeComplete, NeedChannelConfirmation)):
                    if await_close and sent_last and isinstance(event, HandshakeComplete):
                        _await_close(sock, min(deadline, time.monotonic() + 5.0))
                    return event.result
            if follow_up:
                events = follow_up
                continue
            events = conn.receive(read_frame(sock, deadline))
    except HybridKexError:
        _send_alert(sock, conn)
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous_timeout)


def connect(address: tuple[str, int], timeout: float = 10.0, *, retry_for: float = 0.0) -> socket.socket:
    """Connect over TCP, retrying refused connections for ``retry_for`` seconds (peer still starting)."""
    give_up = time.monotonic() + retry_for
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() >= give_up:
                raise TransportError(f"connection to {address[0]}:{address[1]} refused; is the peer listening?") \
                    from None
            time.sleep(0.1)
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


async def run_handshake_async(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection,
                              qkd_source: QKDKeySource | None = None, *,
                              timeout: float | None = None) -> HandshakeResult:
    """asyncio version of :func:`run_handshake`.  QKD source calls (blocking HTTPS) run in a thread."""

    async def drive() -> HandshakeResult:
        loop = asyncio.get_running_loop()
        events: list[Event] = conn.initiate() if isinstance(conn, Initiator) else \
            conn.receive(await _read_frame_async(reader))
        while True:
            follow_up: list[Event] = []
            for event in events:
                if isinstance(event, SendMessage):
                    writer.write(event.data)
                    await writer.drain()
                elif isinstance(event, NeedQKDKeys):
                    answer = await loop.run_in_executor(None, _ask_qkd, qkd_source, event)
                    follow_up += conn.qkd_failed(answer) if isinstance(answer, QKDError) \
                        else conn.qkd_keys(answer)
                elif isinstance(event, (HandshakeComplete, NeedChannelConfirmation)):
                    return event.result
            events = follow_up or conn.receive(await _read_frame_async(reader))

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
