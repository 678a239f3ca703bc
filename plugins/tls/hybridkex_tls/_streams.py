"""asyncio helpers: :func:`open_connection` and :func:`start_server`, shaped like ``asyncio``'s own.

Everything runs on the event loop, without threads: the hybrid exchange through
:func:`hybridkex.io.run_handshake_async` (QKD key-source calls go to the default executor),
the TLS handshake and records through the sans-I/O engine.  The public-key operations of
a handshake (ML-DSA, ML-KEM, X25519; a few milliseconds of CPU) run on the loop and
briefly hold it, as any in-loop TLS handshake does.

The streams are pull-based: :class:`TLSStreamReader` reads and decrypts only when asked,
so a slow consumer slows the peer down through TCP flow control.

Once the handshake is done, and nothing is left in the raw stream's buffers, OpenSSL reads
and writes the socket itself (:class:`_DirectSocket`): no memory BIOs and no copy through the
transport's buffer, so application data costs what it costs a blocking socket, and the
event loop only says when the socket is ready.  Where that cannot be (bytes already
buffered, a transport without a socket, a loop without ``add_reader``) the records go
through the memory BIOs and the raw streams as during the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hybridkex import HybridKexError, TransportError
from hybridkex.io import peer_source, run_handshake_async
from hybridkex.protocol import Initiator, Responder

from ._context import HybridTLSContext
from ._engine import TLSEngine
from ._errors import TLSResumptionRefused, TLSSetupTimeout, TLSWrongService, as_oserror
from ._importer import psk_from_result
from ._resumption import ChainFacts, ClientSessionCache
from ._setup import (
    HTTP_400,
    PREAMBLE_HEADER,
    bound_config,
    cache_key,
    classify,
    full_chain,
    full_hook,
    parse_preamble_header,
    preamble,
    record_tickets,
    resume_hook,
    unknown_client_error,
)
from ._tlssocket import connection_info

__all__ = ["open_connection", "start_server", "wrap_streams", "TLSStreamReader", "TLSStreamWriter"]

log = logging.getLogger("hybridkex_tls")

_READ_CHUNK = 1 << 16
_DEFAULT_LIMIT = 1 << 16
#: The raw transport's write buffer limit once TLS is up (asyncio's default is 64 KiB).
_WRITE_HIGH_WATER = 1 << 19


class _DirectSocket:
    """After the handshake: OpenSSL reads and writes the socket itself; the event loop says when it is ready.

    The asyncio transport keeps the socket (it closes it at the end) but is paused and writes nothing
    more; OpenSSL works on a duplicate descriptor of it, which is what the loop watches (it refuses to
    watch a descriptor a transport owns).  Writes go to the socket at once; what the kernel does not
    take waits in :attr:`backlog` and goes out when the socket is writable, as a transport's buffer."""

    def __init__(self, engine: TLSEngine, transport: asyncio.Transport, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._transport = transport
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self.backlog = bytearray()
        self.error: Exception | None = None
        """The first error while writing (the socket's, or TLS's): the next drain() raises it."""
        self.closed = False
        self._eof_wanted = False
        self._close_wanted = False
        self._reading: list[asyncio.Future[None]] = []
        self._writable: list[asyncio.Future[None]] = []
        self._watching_writes = False
        self._finished: asyncio.Future[None] = loop.create_future()

    @classmethod
    def attach(cls, engine: TLSEngine, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> _DirectSocket | None:
        """Hand the connection's socket to OpenSSL, or None where that would lose or reorder a byte."""
        transport = writer.transport
        raw = transport.get_extra_info("socket")
        buffered = getattr(reader, "_buffer", None)  # StreamReader has no public "bytes buffered" query
        if raw is None or not isinstance(transport, asyncio.Transport) or transport.is_closing() or \
                transport.get_write_buffer_size() or buffered is None or len(buffered) or reader.at_eof() or \
                not engine.can_attach_socket():
            return None
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:
            return None
        try:
            loop.add_reader(sock.fileno(), _nothing)
            loop.remove_reader(sock.fileno())
        except (NotImplementedError, RuntimeError):  # e.g. a proactor loop
            sock.close()
            return None
        transport.pause_reading()
        engine.attach_socket(sock.fileno())
        return cls(engine, transport, sock, loop)

    # -- waiting for the socket --------------------------------------------------------------
    async def wait(self, writable: bool) -> None:
        """Until the socket is readable (or writable); raises TransportError once the connection is closed."""
        if self.closed:
            raise TransportError("the connection is closed")
        waiter: asyncio.Future[None] = self._loop.create_future()
        if writable:
            self._writable.append(waiter)
            self._watch_writes()
        else:
            if not self._reading:
                self._loop.add_reader(self._fd, self._on_readable)
            self._reading.append(waiter)
        await waiter

    def _on_readable(self) -> None:
        self._loop.remove_reader(self._fd)
        _wake(self._reading)

    def _watch_writes(self) -> None:
        if not self._watching_writes:
            self._loop.add_writer(self._fd, self._on_writable)
            self._watching_writes = True

    def _on_writable(self) -> None:
        self._flush()
        if not self.backlog or self.error is not None:
            self._loop.remove_writer(self._fd)
            self._watching_writes = False
            if self._close_wanted:
                self._finish()
        _wake(self._writable)

    # -- writing -----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None or self._close_wanted:
            return  # as a transport does: after an error or close(), writes are dropped (drain() raises)
        if self.backlog:
            self.backlog += data
            return
        view = memoryview(data).cast("B")
        try:
            sent = self._send(view)
        except OSError as exc:
            self.error = exc
            return
        if sent < len(view):
            self.backlog += view[sent:]
            self._watch_writes()

    def _send(self, view: memoryview | bytearray) -> int:
        """Hand ``view`` to OpenSSL until the socket is full: the count it took."""
        sent = 0
        while sent < len(view):
            taken = self._engine.write(memoryview(view)[sent:])
            if not taken:
                break
            sent += taken
        return sent

    def _flush(self) -> None:
        try:
            del self.backlog[:self._send(self.backlog)]
            if self._eof_wanted and not self.backlog:
                self._send_eof()
        except Exception as exc:  # called by the loop: keep it, stop watching, and let drain() raise it
            self.error = exc

    async def drain(self) -> None:
        """Until what waits in the backlog is on its way (as StreamWriter.drain); raises the socket's error."""
        while self.backlog and self.error is None and not self.closed:
            await self.wait(writable=True)
        if self.error is not None:
            raise self.error

    def write_eof(self) -> None:
        """close_notify, then a half-close of TCP, once the backlog is out."""
        self._eof_wanted = True
        if not self.backlog:
            self._send_eof()

    def _send_eof(self) -> None:
        if not self._engine.close_notify_sent and not self._engine.send_close_notify():
            self._watch_writes()  # the socket is full: again when it is writable
            return
        self._eof_wanted = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Send close_notify and close, after the backlog is out (as a transport flushes its buffer)."""
        if self._close_wanted:
            return
        self._close_wanted = True
        if not self.backlog or self.error is not None:
            self._finish()
        # else _on_writable finishes once the backlog is out

    def _finish(self) -> None:
        if self.closed:
            return
        if self.error is None and not self._engine.close_notify_sent:
            with contextlib.suppress(Exception):
                self._engine.send_close_notify()
        self.closed = True
        # Unread bytes in the kernel's receive buffer (session tickets, say) would make close() send a TCP
        # reset, and a reset makes the peer drop what it has not read yet: read them away first.
        with contextlib.suppress(OSError):
            for _ in range(64):  # at most 4 MiB: a peer that keeps sending gets its reset
                if not self._sock.recv(1 << 16):
                    break
        self._loop.remove_reader(self._fd)
        if self._watching_writes:
            self._loop.remove_writer(self._fd)
            self._watching_writes = False
        self._sock.close()  # the duplicate; the transport closes the socket itself
        self._transport.close()
        _wake(self._reading)
        _wake(self._writable)
        if not self._finished.done():
            self._finished.set_result(None)

    async def wait_closed(self) -> None:
        await self._finished


def _nothing() -> None:
    return None


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class TLSStreamReader:
    """Decrypted bytes from the peer, with the reading methods of :class:`asyncio.StreamReader`."""

    def __init__(self, engine: TLSEngine, raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter,
                 limit: int = _DEFAULT_LIMIT) -> None:
        self._engine = engine
        self._raw_reader = raw_reader
        self._raw_writer = raw_writer
        self._buffer = bytearray()
        self._eof = False
        self._limit = limit
        self._busy = False
        self._tickets: tuple[ClientSessionCache, str, ChainFacts] | None = None
        self._tickets_wanted = 0
        self._direct: _DirectSocket | None = None

    def keep_tickets(self, cache: ClientSessionCache, key: str, chain: ChainFacts) -> None:
        """Client: put one session ticket the server sends (the session after the first read that brought one)
        into ``cache`` under ``key``."""
        self._tickets = (cache, key, chain)
        self._tickets_wanted = 1

    async def _fill(self) -> bool:
        """Decrypt at least one more byte into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        if self._busy:
            raise RuntimeError("TLSStreamReader is already being read by another task")
        self._busy = True
        try:
            direct = self._direct
            while True:
                if direct is not None and direct.closed:
                    self._eof = True
                    return False
                try:
                    data = self._engine.read(_READ_CHUNK)
                except OSError as exc:
                    if self._engine.failed and self._tickets is not None:
                        self._tickets[0].discard(self._tickets[1], id(self))
                    if isinstance(exc, HybridKexError):
                        raise
                    raise TransportError(f"the connection failed: {exc.strerror or exc}") from None
                if self._tickets_wanted > 0 and self._tickets is not None:
                    session = self._engine.new_session()
                    if session is not None:
                        self._tickets_wanted -= 1
                        self._tickets[0].put(self._tickets[1], id(self), session, self._tickets[2])
                out = self._engine.data_to_send()
                if out and not self._raw_writer.is_closing():
                    self._raw_writer.write(out)
                if data is None and direct is not None:
                    await direct.wait(self._engine.want_write)
                    continue
                if data is None:
                    try:
                        raw = await self._raw_reader.read(_READ_CHUNK)
                    except OSError as exc:
                        raise TransportError(f"the connection failed: {exc.strerror or exc}") from None
                    if raw:
                        self._engine.receive_bytes(raw)
                    else:
                        self._engine.receive_eof()
                    continue
                if not data:
                    self._eof = True
                    return False
                self._buffer += data
                return True
        finally:
            self._busy = False

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: everything until the end of the stream); ``b""`` at the end."""
        if n == 0:
            return b""
        if n < 0:
            while await self._fill():
                pass
            return self._take(len(self._buffer))
        if not self._buffer:
            await self._fill()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`asyncio.IncompleteReadError` at an early end of stream."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, n)
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator`` (errors as :meth:`asyncio.StreamReader.readuntil`)."""
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        start = 0
        while True:
            index = self._buffer.find(separator, start)
            if index >= 0:
                end = index + len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError("separator is found, but chunk is longer than limit", index)
                return self._take(end)
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("separator is not found, and chunk exceed the limit",
                                                len(self._buffer))
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """One line including ``\\n``; the rest of the stream at its end."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def at_eof(self) -> bool:
        """True when the buffer is empty and the peer closed its sending direction."""
        return self._eof and not self._buffer

    def __aiter__(self) -> TLSStreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class TLSStreamWriter:
    """Encrypting writer with the methods of :class:`asyncio.StreamWriter`."""

    def __init__(self, engine: TLSEngine, raw_writer: asyncio.StreamWriter, summary: dict[str, object] | None,
                 chain: ChainFacts | None = None) -> None:
        self._engine = engine
        self._raw = raw_writer
        self._summary = summary
        self._chain = chain
        self._direct: _DirectSocket | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and queue it; ``await drain()`` to wait for the network."""
        if self._direct is not None:
            self._direct.write(data)
            return
        view = memoryview(data).cast("B")
        while view:
            taken = self._engine.write(view)
            view = view[taken:]
            self._raw.write(self._engine.data_to_send())

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait until the kernel buffer has room (flow control), as StreamWriter.drain."""
        if self._direct is not None:
            await self._direct.drain()
            return
        await self._raw.drain()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send the TLS close_notify and half-close TCP; the peer reads end-of-stream, reading goes on here."""
        if self._direct is not None:
            self._direct.write_eof()
            return
        if not self._engine.close_notify_sent:
            self._engine.send_close_notify()
            out = self._engine.data_to_send()
            if out:
                self._raw.write(out)
        if self._raw.can_write_eof():
            self._raw.write_eof()

    def close(self) -> None:
        """Send close_notify (if not yet sent) and close the connection."""
        if self._direct is not None:
            self._direct.close()
            self._engine.close()
            return
        if not self._raw.is_closing():
            with contextlib.suppress(Exception):
                if not self._engine.close_notify_sent:
                    self._engine.send_close_notify()
                    self._raw.write(self._engine.data_to_send())
        self._engine.close()
        self._raw.close()

    def is_closing(self) -> bool:
        return self._raw.is_closing() or (self._direct is not None and self._direct.closed)

    async def wait_closed(self) -> None:
        if self._direct is not None:
            await self._direct.wait_closed()
        with contextlib.suppress(OSError):
            await self._raw.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``tls_version``, ``cipher``, ``group``, ``external_psk``, ``peer``, ``qkd_key_ids``, ``hybridkex``
        (the hybrid summary), ``info`` (all of them); anything else from the TCP transport (``peername``...)."""
        info = connection_info(self._engine, self._summary, self._chain)
        if name == "info":
            return info
        if name == "hybridkex":
            return dict(self._summary) if self._summary else None
        if name in info:
            return info[name]
        if name == "socket":
            return default  # reading or writing the raw socket would corrupt the TLS stream
        return self._raw.get_extra_info(name, default)


async def _tls_handshake(engine: TLSEngine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                done = engine.do_handshake()
            finally:
                out = engine.data_to_send()  # includes OpenSSL's alert on failure
                if out:
                    writer.write(out)
                    with contextlib.suppress(OSError):
                        await writer.drain()
            if done:
                return
            data = await reader.read(_READ_CHUNK)
            if data:
                engine.receive_bytes(data)
            else:
                engine.receive_eof()
    except OSError as exc:
        if isinstance(exc, HybridKexError):
            raise
        raise TransportError(f"the connection failed during the TLS handshake: {exc.strerror or exc}") from None


async def _read_first(reader: asyncio.StreamReader) -> bytes:
    """Server: the client's first bytes, enough to classify them (a byte at a time from the stream's buffer)."""
    first = b""
    while classify(first) == "more" and len(first) < 8:
        chunk = await reader.read(1)
        if not chunk:
            raise TransportError("the client closed the connection before sending anything")
        first += chunk
    return first


async def _client_setup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: HybridTLSContext,
                        server_hostname: str | None, suppress_ragged_eofs: bool) \
        -> tuple[TLSEngine, dict[str, object], ChainFacts, str]:
    name = server_hostname
    key = cache_key(name, lambda: writer.get_extra_info("peername"))
    cache = context.client_sessions
    entry = cache.take(key) if cache is not None else None
    if entry is not None and cache is not None:
        session, chain = entry
        engine = context.new_engine(None, suppress_ragged_eofs=suppress_ragged_eofs, session=session,
                                    server_hostname=name)
        try:
            async with asyncio.timeout(context.pre_auth_timeout):
                await _tls_handshake(engine, reader, writer)
        except TLSResumptionRefused:
            cache.drop(key)
            raise
        except BaseException:
            engine.close()
            raise
        return engine, chain.summary, chain.next(), key
    config = bound_config(context.config_for(name), name)
    async with context.async_setup_lock() or contextlib.nullcontext():
        writer.write(preamble(name))
        conn = Initiator(config) if context.role == "client" else Responder(config)
        source, owned = context.open_qkd_source()
        try:
            result = await run_handshake_async(reader, writer, conn, source, timeout=context.timeout)
        finally:
            if owned and source is not None:
                source.close()
        psk, summary = psk_from_result(result)
        done = time.monotonic()
        engine = context.new_engine(psk, suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=name)
        try:
            await _tls_handshake(engine, reader, writer)
        except BaseException:
            engine.close()
            raise
        context.after_success(result)  # the TLS Finished messages proved both sides hold the key
        del result
    return engine, summary, full_chain(summary, done, name), key


async def _server_setup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: HybridTLSContext,
                        suppress_ragged_eofs: bool) -> tuple[TLSEngine, dict[str, object], ChainFacts]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(context.pre_auth_timeout):
            first = await _read_first(reader)
    except TimeoutError:
        raise TLSSetupTimeout(f"timed out waiting for the client's first message (pre-authentication timeout "
                              f"{context.pre_auth_timeout:g} s); it is stuck, too slow, or holding a slot") from None
    kind = classify(first)
    if kind == "http":
        writer.write(HTTP_400)
        with contextlib.suppress(OSError):
            await writer.drain()
        raise TLSWrongService("a plain HTTP client connected; it was answered with HTTP 400")
    table = context.server_sessions
    if kind == "tls":
        found: list[ChainFacts] = []
        engine = context.new_engine(None, suppress_ragged_eofs=suppress_ragged_eofs,
                                    on_hello=resume_hook(table, found),
                                    on_done=record_tickets(table, lambda: found[0]))
        engine.receive_bytes(first)
        try:
            async with asyncio.timeout(max(0.001, started + context.pre_auth_timeout - time.monotonic())):
                await _tls_handshake(engine, reader, writer)
        except BaseException:
            engine.close()
            raise
        summary, chain = found[0].summary, found[0]
    elif kind == "full":
        async with asyncio.timeout(max(0.001, started + context.pre_auth_timeout - time.monotonic())):
            header = first[:PREAMBLE_HEADER] + await reader.readexactly(max(0, PREAMBLE_HEADER - len(first)))
            size = parse_preamble_header(header)
            extra = first[PREAMBLE_HEADER:]
            raw_name = extra + await reader.readexactly(size - len(extra)) if size > len(extra) else extra[:size]
        name = raw_name.decode("ascii", "replace") or None
        config = bound_config(context.config_for(name), name)
        async with context.async_setup_lock() or contextlib.nullcontext():
            conn = Responder(config, guard=context.dos_guard, source=peer_source(writer.get_extra_info("peername")))
            source, owned = context.open_qkd_source()
            try:
                result = await run_handshake_async(reader, writer, conn, source, timeout=max(
                    0.001, started + context.pre_auth_timeout - time.monotonic()))
            finally:
                if owned and source is not None:
                    source.close()
            psk, summary = psk_from_result(result)
            chain = full_chain(summary, time.monotonic(), name)
            engine = context.new_engine(psk, suppress_ragged_eofs=suppress_ragged_eofs, on_hello=full_hook(psk, name),
                                        on_done=record_tickets(table, lambda: chain))
            try:
                await _tls_handshake(engine, reader, writer)
            except BaseException:
                engine.close()
                raise
            context.after_success(result)
            del result
    else:
        raise unknown_client_error(first)
    return engine, summary, chain


async def wrap_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: HybridTLSContext, *,
                       limit: int = _DEFAULT_LIMIT, suppress_ragged_eofs: bool = True,
                       server_hostname: str | None = None) -> tuple[TLSStreamReader, TLSStreamWriter]:
    """Set up TLS keyed by the hybrid exchange (or resume a session) over connected streams (role from the
    context); closes them on failure.  Errors are :class:`OSError` subclasses that are also
    :class:`hybridkex.HybridKexError` (timeouts :class:`TimeoutError`)."""
    chain: ChainFacts | None = None
    key: str | None = None
    try:
        async with asyncio.timeout(context.timeout):
            if context.static_psk is not None:
                summary: dict[str, object] | None = None
                engine = context.new_engine(context.static_psk, suppress_ragged_eofs=suppress_ragged_eofs)
                try:
                    await _tls_handshake(engine, reader, writer)
                except BaseException:
                    engine.close()
                    raise
            elif context.role == "client":
                engine, summary, chain, key = await _client_setup(reader, writer, context, server_hostname,
                                                                  suppress_ragged_eofs)
            else:
                engine, summary, chain = await _server_setup(reader, writer, context, suppress_ragged_eofs)
    except BaseException as exc:
        writer.close()
        if isinstance(exc, TimeoutError) and not isinstance(exc, HybridKexError):
            raise TLSSetupTimeout(f"the hybrid exchange and TLS handshake did not finish within "
                                  f"{context.timeout:g} s; the peer is down, stuck or too slow") from None
        converted = as_oserror(exc)
        if converted is not exc:
            raise converted from None
        raise
    tickets = context.client_sessions if context.role == "client" and chain is not None and key is not None \
        and context.client_sessions is not None and context.client_sessions.usable(chain, time.monotonic()) \
        else None
    transport = writer.transport
    if isinstance(transport, asyncio.WriteTransport):
        # One write() of the TLS writer hands the transport up to 256 KiB of ciphertext; with asyncio's default
        # high-water mark (64 KiB) every such write paused the writer until the buffer was down to 16 KiB.
        if transport.get_write_buffer_limits()[1] < _WRITE_HIGH_WATER:
            transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
    tls_reader = TLSStreamReader(engine, reader, writer, limit)
    if tickets is not None and key is not None and chain is not None:
        tls_reader.keep_tickets(tickets, key, chain)
    tls_writer = TLSStreamWriter(engine, writer, summary, chain)
    tls_reader._direct = tls_writer._direct = _DirectSocket.attach(engine, reader, writer)
    return tls_reader, tls_writer


async def open_connection(host: str, port: int, context: HybridTLSContext, *, limit: int = _DEFAULT_LIMIT,
                          server_hostname: str | None = None, **kwargs: Any) -> tuple[TLSStreamReader, TLSStreamWriter]:
    """Connect, run the hybrid exchange and TLS; like :func:`asyncio.open_connection` (extra kwargs go to it)."""
    if context.role != "client":
        raise ValueError("open_connection needs a client context (HybridTLSContext.client(...))")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, **kwargs), context.timeout)
    except TimeoutError:
        raise TLSSetupTimeout(f"connecting to {host}:{port} timed out after {context.timeout:g} s") from None
    except OSError as exc:
        raise as_oserror(TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}")) from None
    return await wrap_streams(reader, writer, context, limit=limit, server_hostname=server_hostname)


ClientConnected = Callable[[TLSStreamReader, TLSStreamWriter], Awaitable[None] | None]


async def start_server(client_connected_cb: ClientConnected, host: str | None, port: int,
                       context: HybridTLSContext, *, limit: int = _DEFAULT_LIMIT,
                       on_error: Callable[[Any, BaseException], None] | None = None,
                       **kwargs: Any) -> asyncio.Server:
    """Like :func:`asyncio.start_server`: ``client_connected_cb(reader, writer)`` runs for every client whose
    hybrid exchange and TLS handshake succeeded.  Failed setups go to ``on_error(peer, exc)`` and the log;
    the server goes on.  The writer is closed when the callback returns."""
    if context.role != "server":
        raise ValueError("start_server needs a server context (HybridTLSContext.server(...))")

    async def handle(raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter) -> None:
        peer = raw_writer.get_extra_info("peername")
        try:
            tls_reader, tls_writer = await wrap_streams(raw_reader, raw_writer, context, limit=limit)
        except Exception as exc:
            log.warning("connection from %s: setup failed: %s", peer, exc)
            if on_error is not None:
                on_error(peer, exc)
            return
        try:
            outcome = client_connected_cb(tls_reader, tls_writer)
            if outcome is not None:
                await outcome
        except Exception as exc:
            log.warning("connection from %s: handler failed: %s", peer, exc)
            if on_error is not None:
                on_error(peer, exc)
        finally:
            tls_writer.close()

    return await asyncio.start_server(handle, host, port, **kwargs)
