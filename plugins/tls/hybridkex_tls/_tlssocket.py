"""The blocking driver: :class:`HybridTLSSocket`, which behaves like :class:`ssl.SSLSocket`.

It owns the TCP socket and a :class:`~hybridkex_tls._engine.TLSEngine`.  One thread may
receive while another sends (as with ``ssl`` sockets, not two receivers or two senders at
once): OpenSSL calls are serialized by one lock, and ciphertext goes out under a second
lock in the order OpenSSL produced it.  Socket timeouts (``settimeout``) apply to every
network read and write and raise :class:`TimeoutError`, as ``ssl`` sockets do.

The setup runs over the engine's memory BIOs (a resumption: over the socket from the
start).  Once the handshake is done and nothing waits in the memory BIOs or the send queue,
OpenSSL takes the socket itself ("direct mode"): the socket is non-blocking underneath, no
lock is held while waiting, and a record costs one OpenSSL call from Python.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn, cast

from hybridkex import HybridKexError, PeerAlertError, RemoteProtocolError, TransportError
from hybridkex.io import recv_exact
from hybridkex.protocol import HEADER_SIZE, MAGIC, Alert, decode, parse_header

from ._engine import TLSEngine
from ._errors import TLSResumptionRefused, TLSSetupTimeout, TLSWrongService, as_oserror
from ._importer import psk_from_result
from ._resumption import ChainFacts, ServerSessionTable
from ._setup import (
    HTTP_400,
    PREAMBLE_HEADER,
    SILENT_CLOSE,
    Kind,
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
    wrong_service,
)

if TYPE_CHECKING:
    from ._context import HybridTLSContext

__all__ = ["HybridTLSSocket", "RecordReader", "connection_info"]

_CLOSE_NOTIFY_TIMEOUT = 1.0
_RECORD_HEADER = 5
_ENCRYPTED = 23  # TLS 1.3 outer content type of every encrypted record (application_data)


class RecordReader:
    """Reads TLS records off a socket one at a time, as stdlib ``ssl`` does (no read-ahead).

    Each read asks for the rest of the current record plus the next record's 5-byte header,
    so bytes of later records stay in the kernel: ``select()`` and selectors still report
    the socket readable while records wait, one readiness event per record.
    """

    __slots__ = ("_header", "_body_left", "_type", "handshake")

    def __init__(self) -> None:
        self._header = bytearray()
        self._body_left = 0
        self._type = 0
        self.handshake = False
        """Server handshake: an encrypted record (the client's Finished: no certificates, no early data here)
        is the last one of the handshake, so its read stops at its end and the next header stays in the kernel."""

    def want(self) -> int:
        """How many bytes to ask the socket for."""
        if self._body_left:
            if self.handshake and self._type == _ENCRYPTED:
                return self._body_left
            return self._body_left + _RECORD_HEADER
        return _RECORD_HEADER - len(self._header)


    def consumed(self, data: bytes | memoryview) -> None:
        """Account for ``data`` read from the socket."""
        n = len(data)
        body_left = self._body_left
        if body_left and n == body_left + _RECORD_HEADER:  # the usual read: a record's rest and the next header
            self._body_left = int.from_bytes(data[n - 2:n], "big")
            self._type = data[n - 5]
            return
        i = 0
        while i < n:
            if self._body_left:
                take = min(self._body_left, n - i)
                self._body_left -= take
                i += take
                continue
            take = min(_RECORD_HEADER - len(self._header), n - i)
            self._header += data[i:i + take]
            i += take
            if len(self._header) == _RECORD_HEADER:
                self._body_left = int.from_bytes(self._header[3:5], "big")
                self._type = self._header[0]
                self._header.clear()


def _send_before(sock: socket.socket, data: bytes | bytearray, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    sock.sendall(data)


def _poll(sock: socket.socket, writing: bool, deadline: float | None) -> None:
    """Block until ``sock`` is readable (or writable); TimeoutError at ``deadline`` (None: no limit)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT if writing else select.POLLIN)
    if deadline is None:
        ready = poller.poll()
    else:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        ready = poller.poll(max(1, math.ceil(remaining * 1000)))
    if not ready:
        raise TimeoutError("timed out")


def _send_now(sock: socket.socket, data: bytes | bytearray, deadline: float) -> None:
    """sendall on a non-blocking socket, waiting (until ``deadline``) only while the kernel buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            _poll(sock, True, deadline)


def _recv_now(sock: socket.socket, size: int, deadline: float) -> bytes:
    """recv on a non-blocking socket, waiting (until ``deadline``) only when nothing has arrived."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            _poll(sock, False, deadline)


def _hybrid_answer(sock: socket.socket, data: bytes, deadline: float) -> NoReturn:
    """Client: the server answered our InitFinish + ClientHello flight with a hybridkex frame instead of
    TLS (a TLS record never starts with "H"): its Alert says why the exchange failed."""
    while len(data) < HEADER_SIZE:
        data += recv_exact(sock, HEADER_SIZE - len(data), deadline, "alert header")
    _, length = parse_header(data[:HEADER_SIZE])
    if len(data) < HEADER_SIZE + length:
        data += recv_exact(sock, HEADER_SIZE + length - len(data), deadline, "alert")
    message = decode(data[:HEADER_SIZE + length])
    if isinstance(message, Alert):
        raise PeerAlertError(f"peer aborted the handshake: {message.text}", int(message.code))
    raise RemoteProtocolError(f"the server sent a hybridkex {type(message).__name__} where TLS was due")


def _raise_handshake_failure(exc: OSError, timeout: float) -> NoReturn:
    """Raise a TLS handshake's failure as the socket API raises it: TLSSetupTimeout (a TimeoutError), or a
    TransportError that is an OSError; hybridkex's own errors go on as they are."""
    if isinstance(exc, TimeoutError):
        raise TLSSetupTimeout(f"the TLS handshake did not finish within {timeout:g} s; the peer is down, stuck or "
                              "too slow") from None
    if not isinstance(exc, HybridKexError):
        raise as_oserror(TransportError(f"the connection failed during the TLS handshake: {exc.strerror or exc}")) \
            from None
    raise exc


def _tls_handshake(sock: socket.socket, engine: TLSEngine, records: RecordReader, deadline: float,
                   timeout: float) -> None:
    """Drive the TLS handshake over ``sock`` until done or ``deadline``.

    The client reads whatever has arrived (nothing can follow the server's Finished before
    the client's own Finished is sent); the server reads a record at a time, since the
    client's first application records may arrive with its Finished and must stay visible
    to select().
    """
    greedy = engine.role == "client"
    first = True
    starved = not greedy  # a server has nothing to say before the ClientHello: read it first
    records.handshake = not greedy
    try:
        # Non-blocking for the handshake and after it (the caller sets the final mode): a send or a read that
        # can go ahead costs one system call, not a timeout change and a poll() before it as well.
        if sock.gettimeout() != 0.0:
            sock.settimeout(0.0)
        while True:
            try:
                done = not starved and engine.do_handshake()
            except HybridKexError:
                # Let the peer read OpenSSL's alert, so both sides report the same cause.
                alert = engine.data_to_send()
                if alert:
                    try:
                        _send_now(sock, alert, min(deadline, time.monotonic() + _CLOSE_NOTIFY_TIMEOUT))
                    except OSError:
                        pass
                raise
            out = engine.data_to_send()
            if out:
                _send_now(sock, out, deadline)
            if done:
                return
            starved = False
            data = _recv_now(sock, 1 << 16 if greedy else records.want(), deadline)
            if greedy and first and data[:1] == MAGIC[:1]:
                _hybrid_answer(sock, data, deadline)
            first = False
            if data:
                records.consumed(data)
                engine.receive_bytes(data)
            else:
                engine.receive_eof()
    except OSError as exc:
        _raise_handshake_failure(exc, timeout)
    finally:
        records.handshake = False


#: A resuming server's session table and the ``on_done`` that records its tickets' session (:func:`record_tickets`).
_Tickets = tuple[ServerSessionTable, Callable[[TLSEngine], None]]


def _direct_handshake(sock: socket.socket, engine: TLSEngine, deadline: float, timeout: float,
                      tickets: _Tickets | None = None) -> None:
    """The TLS handshake with OpenSSL reading and writing ``sock`` (non-blocking) itself, until ``deadline``.

    OpenSSL reads a record at a time without read-ahead, so records after the handshake stay in the
    kernel (visible to select()); its alerts go straight to the peer.  Server resuming, with ``tickets``
    (the session table, and what records the new tickets' session once the handshake is done): OpenSSL sends the
    new tickets itself in the step that ends the handshake, before their session can be recorded, so
    each step runs under :meth:`ServerSessionTable.issuing`, and a lookup (on another connection) that
    misses meanwhile waits for the record instead of refusing a ticket this server has just sent."""
    try:
        if sock.gettimeout() != 0.0:
            sock.settimeout(0.0)
        if not engine.direct:
            engine.attach_socket(sock.fileno())
        if tickets is None:
            while not engine.do_handshake():
                _poll(sock, engine.want_write, deadline)
            return
        # Any step may end the handshake, the first too: after writing its flight OpenSSL reads on, and the
        # client's Finished may be there already.
        table, record = tickets
        issuing = table.issuing()
        while True:
            with issuing:
                if engine.do_handshake():
                    record(engine)
                    return
            _poll(sock, engine.want_write, deadline)
    except OSError as exc:
        _raise_handshake_failure(exc, timeout)


class _Recorder:
    """The socket as the core's exchange sees it, keeping the first bytes the peer sent (to name a wrong service)."""

    def __init__(self, sock: socket.socket, preamble: bytes) -> None:
        self._sock = sock
        self._preamble = preamble
        self.first = b""
        self.reset = False

    def sendall(self, data: bytes, flags: int = 0) -> None:
        # The preamble goes out with the first hybrid message, in one segment.
        data, self._preamble = self._preamble + data, b""
        self._sock.sendall(data, flags)

    def peek_reply(self) -> None:
        """After a failure: the bytes the peer had sent, if nothing was read yet (e.g. a TLS alert before a reset)."""
        if self.first:
            return
        with contextlib.suppress(OSError):
            self._sock.settimeout(0.2)
            self.first = self._sock.recv(16, socket.MSG_PEEK)

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            data = self._sock.recv(size, flags)
        except ConnectionResetError:
            self.reset = not self.first
            raise
        if len(self.first) < 16:
            self.first += data[:16 - len(self.first)]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _peek(sock: socket.socket, deadline: float) -> tuple[bytes, Kind]:
    """The client's first bytes, left in the socket, and what they say it is (waits for more while ambiguous)."""
    if sock.gettimeout() != 0.0:  # non-blocking: a peek at bytes that have arrived is one system call
        sock.settimeout(0.0)
    while True:
        # Wait first: a connection just accepted has rarely received its first bytes yet, and when they are
        # there poll() returns at once (cheaper than a failed recv() and its exception).
        _poll(sock, False, deadline)
        try:
            first = sock.recv(8, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not first:
            raise as_oserror(TransportError("the client closed the connection before sending anything"))
        kind = classify(first)
        if kind != "more":
            return first, kind
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))  # a prefix so far: look again shortly
        if time.monotonic() >= deadline:
            raise TimeoutError


def connection_info(engine: TLSEngine, summary: dict[str, object] | None,
                    chain: ChainFacts | None = None) -> dict[str, object]:
    """Secret-free facts about an established connection (the ``--json`` line)."""
    facts = engine.facts
    assert facts is not None
    info: dict[str, object] = {
        "tls_version": facts.version,
        "cipher": facts.cipher,
        "group": facts.group,
        "external_psk": facts.psk_used and not facts.resumed,
        "resumed": facts.resumed,
        "alpn": facts.alpn,
        "server_name": facts.server_name,
        "mode": "hybrid" if summary is not None else "static-psk",
    }
    if summary is not None:
        info.update({
            "hybrid_suite": summary["suite"],
            "auth": summary["auth"],
            "peer": summary["peer"],
            "qkd": summary["qkd"],
            "qkd_key_ids": summary["qkd_key_ids"],
            "transcript_hash": summary["transcript_hash"],
        })
    if chain is not None:
        info["resumptions"] = chain.resumptions
        info["qkd_key_age"] = round(chain.age(time.monotonic()), 3)
    return info


class HybridTLSSocket:
    """A TLS 1.3 connection keyed by the hybrid exchange, with the :class:`ssl.SSLSocket` methods that matter.

    Create it with :meth:`HybridTLSContext.wrap_socket`.
    """

    # Per-connection state that starts out empty: class attributes until first set, so that a connection (many are
    # short: a resumption is a handful of records) does not pay for assigning each of them.
    _engine_or_none: TLSEngine | None = None
    _summary: dict[str, object] | None = None
    _chain: ChainFacts | None = None
    _cache_key: str | None = None
    _tickets_wanted = 0
    _records_or_none: RecordReader | None = None
    _inbox_buffer: memoryview | None = None
    _closed = False
    """close() was called (the TCP socket closes once no makefile() object is left)."""
    _released = False
    _io_refs = 0
    _timeout: float | None = None
    """Direct mode: the timeout of each network wait (the TCP socket itself is non-blocking then)."""

    def __init__(self, sock: socket.socket, context: HybridTLSContext, *, server_hostname: str | None = None,
                 suppress_ragged_eofs: bool = True) -> None:
        self._sock = sock
        self._context = context
        self._server_hostname = server_hostname
        self._suppress_ragged_eofs = suppress_ragged_eofs
        self._setup_lock = threading.Lock()
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._outgoing: deque[bytes | bytearray] = deque()

    @property
    def _records(self) -> RecordReader:
        """The record reader of the memory-BIO path (a connection that resumes over the socket never needs one)."""
        records = self._records_or_none
        if records is None:
            records = self._records_or_none = RecordReader()
        return records

    @property
    def _engine(self) -> TLSEngine:
        engine = self._engine_or_none
        if engine is None:
            self.do_handshake()
            engine = self._engine_or_none
            assert engine is not None
        return engine

    # -- setup ---------------------------------------------------------------------------------
    def do_handshake(self) -> None:
        """Run the setup (hybrid exchange or resumption, then TLS) now; a no-op once done.

        On failure the TCP socket is closed and an :class:`OSError` that is also a
        :class:`hybridkex.HybridKexError` is raised (:class:`TimeoutError` for timeouts).
        """
        with self._setup_lock:
            if self._engine_or_none is not None:
                return
            self._check_open()
            context = self._context
            sock = self._sock
            start = time.monotonic()
            previous_timeout = sock.gettimeout()
            try:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass  # TCP only (not on a Unix socket)
                if context.static_psk is not None:
                    engine = context.new_engine(context.static_psk, suppress_ragged_eofs=self._suppress_ragged_eofs)
                    self._handshake(engine, start + context.timeout)
                elif context.role == "client":
                    self._client_setup(start)
                else:
                    self._server_setup(start)
                idle = context.idle_timeout
                timeout = idle if idle is not None else previous_timeout or None
                if not self._try_direct(timeout):
                    sock.settimeout(timeout)
            except BaseException as exc:
                if self._engine_or_none is not None:
                    self._engine_or_none.close()
                    self._engine_or_none = None
                self._released = True
                sock.close()
                if isinstance(exc, TimeoutError) and not isinstance(exc, HybridKexError):
                    raise TLSSetupTimeout(f"the connection's setup did not finish within {context.timeout:g} s; "
                                          "the peer is down, stuck or too slow") from None
                converted = as_oserror(exc)
                if converted is not exc:
                    raise converted from None
                raise

    def _handshake(self, engine: TLSEngine, deadline: float, direct: bool = False,
                   tickets: _Tickets | None = None) -> None:
        """The TLS handshake; ``direct``: over the socket itself from the start (a resumption, whose first
        bytes are TLS: nothing else can arrive in place of the peer's TLS records), with ``tickets`` as
        :func:`_direct_handshake` takes them."""
        try:
            if direct:
                _direct_handshake(self._sock, engine, deadline, self._context.timeout, tickets)
            else:
                _tls_handshake(self._sock, engine, self._records, deadline, self._context.timeout)
        except BaseException:
            engine.close()
            raise
        self._engine_or_none = engine

    def _client_setup(self, start: float) -> None:
        context = self._context
        name = self._server_hostname
        cache = context.client_sessions
        key = self._cache_key = cache_key(name, self._sock.getpeername)
        entry = cache.take(key) if cache is not None else None
        if entry is not None and cache is not None:
            session, chain = entry
            engine = context.new_engine(None, suppress_ragged_eofs=self._suppress_ragged_eofs, session=session,
                                        server_hostname=name, fd=self._sock.fileno())
            try:
                self._handshake(engine, start + context.pre_auth_timeout, direct=True)
            except TLSResumptionRefused:
                cache.drop(key)
                raise
            self._summary = chain.summary
            self._chain = chain.next()
        else:
            config = bound_config(context.config_for(name), name)
            deadline = start + context.timeout
            with context.setup_lock or contextlib.nullcontext():
                recorder = _Recorder(self._sock, preamble(name))
                try:
                    result = context.exchange(cast(socket.socket, recorder), config,
                                              timeout=max(0.001, deadline - time.monotonic()))
                except HybridKexError as exc:
                    recorder.peek_reply()
                    better = wrong_service(recorder.first, exc, recorder.reset)
                    if better is not None:
                        raise better from None
                    if isinstance(exc, TransportError) and not recorder.first and not recorder.reset:
                        raise as_oserror(TransportError(SILENT_CLOSE)) from None
                    raise
                psk, summary = psk_from_result(result)
                done = time.monotonic()
                engine = context.new_engine(psk, suppress_ragged_eofs=self._suppress_ragged_eofs,
                                            server_hostname=name)
                self._handshake(engine, deadline)
                # The TLS Finished messages proved that both sides hold the hybrid key.
                context.after_success(result)
                del result
            self._summary = summary
            self._chain = full_chain(summary, done, name)
        if cache is not None and cache.usable(self._chain, time.monotonic()):
            self._tickets_wanted = 1  # one ticket is kept (OpenSSL sends one after a PSK handshake)

    def _server_setup(self, start: float) -> None:
        context = self._context
        sock = self._sock
        pre_auth = start + context.pre_auth_timeout
        try:
            first, kind = _peek(sock, pre_auth)
        except TimeoutError:
            raise TLSSetupTimeout(f"timed out waiting for the client's first message (pre-authentication timeout "
                                  f"{context.pre_auth_timeout:g} s); it is stuck, too slow, or holding a slot") \
                from None
        if kind == "http":
            with contextlib.suppress(OSError):
                _send_before(sock, HTTP_400, time.monotonic() + _CLOSE_NOTIFY_TIMEOUT)
                sock.shutdown(socket.SHUT_WR)
            raise TLSWrongService("a plain HTTP client connected; it was answered with HTTP 400")
        table = context.server_sessions
        if kind == "tls":
            found: list[ChainFacts] = []
            engine = context.new_engine(None, suppress_ragged_eofs=self._suppress_ragged_eofs,
                                        on_hello=resume_hook(table, found), fd=sock.fileno())
            record = record_tickets(table, lambda: found[0])
            self._handshake(engine, pre_auth, direct=True,
                            tickets=(table, record) if table is not None and record is not None else None)
            self._summary = found[0].summary
            self._chain = found[0]
        elif kind == "full":
            header = recv_exact(sock, PREAMBLE_HEADER, pre_auth, "hybridkex-tls preamble")
            size = parse_preamble_header(header)
            raw_name = recv_exact(sock, size, pre_auth, "server name") if size else b""
            name = raw_name.decode("ascii", "replace") or None
            config = bound_config(context.config_for(name), name)
            with context.setup_lock or contextlib.nullcontext():
                result = context.exchange(sock, config, timeout=max(0.001, pre_auth - time.monotonic()))
                psk, summary = psk_from_result(result)
                chain = full_chain(summary, time.monotonic(), name)
                engine = context.new_engine(psk, suppress_ragged_eofs=self._suppress_ragged_eofs,
                                            on_hello=full_hook(psk, name), on_done=record_tickets(table, lambda: chain))
                self._handshake(engine, start + context.timeout)
                context.after_success(result)
                del result
            self._summary = summary
            self._chain = chain
        else:
            raise unknown_client_error(first)

    def _harvest_ticket(self, got_data: bool = False) -> None:
        """Client: keep one session ticket of the connection for a later connection, the session after the
        first read that brought one (call with the SSL lock held); a server that sends several accepts any
        one of them, once (docs/protocol.md §10.1).

        ``got_data``: the read before this call returned application data.  The server sends its
        tickets right after the handshake, ahead of any data it writes, and TLS keeps the order: once
        data has been read and no ticket came, none will."""
        engine = self._engine_or_none
        cache = self._context.client_sessions
        if engine is None or cache is None or self._cache_key is None or self._chain is None:
            self._tickets_wanted = 0
            return
        session = engine.new_session()
        if session is not None:
            self._tickets_wanted -= 1
            cache.put(self._cache_key, id(self), session, self._chain)
        if got_data:
            self._tickets_wanted = 0

    # -- network plumbing --------------------------------------------------------------------
    def _collect_output(self) -> None:
        """Move the engine's output to the queue (call with the SSL lock held)."""
        out = self._engine.data_to_send()
        if out:
            self._outgoing.append(out)

    def _send_queued(self) -> None:
        """Send everything queued (call with the send lock held)."""
        while True:
            with self._ssl_lock:
                if not self._outgoing:
                    return
                outgoing = self._outgoing
                if len(outgoing) == 1:
                    data = outgoing.popleft()
                else:
                    data = b"".join(outgoing)
                    outgoing.clear()
            self._sock.sendall(data)

    def _flush_later(self) -> None:
        """Send queued output unless a sender holds the send lock (it re-checks the queue after releasing)."""
        while True:
            with self._ssl_lock:
                if not self._outgoing:
                    return
            if not self._send_lock.acquire(blocking=False):
                return
            try:
                self._send_queued()
            finally:
                self._send_lock.release()

    def _await_input(self, engine: TLSEngine) -> None:
        """The engine needs input: wait for the socket (direct mode), switch to direct mode, or read a record
        into the memory BIO."""
        if engine.direct:
            self._wait(engine.want_write)
        elif not self._try_direct():
            self._fill()

    def _try_direct(self, timeout: float | None | Literal["keep"] = "keep") -> bool:
        """Let OpenSSL read and write the socket itself from now on, if nothing waits in the memory BIOs or the
        send queue and no sender is busy; the socket becomes non-blocking and the timeout applies to waits.

        The memory BIOs carry the handshake (the server must look at the client's first bytes before it
        commits to a kind of setup); afterwards every record costs far less without Python in its path."""
        engine = self._engine_or_none
        if engine is not None and engine.direct:
            if timeout != "keep":
                self._timeout = timeout
            return True
        if engine is None or self._outgoing:
            return False
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            with self._ssl_lock:
                if self._outgoing or not engine.can_attach_socket():
                    return False
                engine.attach_socket(self._sock.fileno())
                self._timeout = self._sock.gettimeout() if timeout == "keep" else timeout
                self._sock.settimeout(0.0)
                return True
        finally:
            self._send_lock.release()

    def _wait(self, writing: bool) -> None:
        """Direct mode: block until the socket is readable (or writable); TimeoutError after the timeout.

        The TCP socket stays non-blocking (as OpenSSL needs) and the timeout is this object's: one poll(),
        then OpenSSL's own read or write.  OpenSSL holds the descriptor's number: once close() ran (in
        another thread) it must not be used again, since a new socket may have taken it."""
        if not self._released:
            timeout = self._timeout
            _poll(self._sock, writing, None if timeout is None else time.monotonic() + timeout)
        if self._released:
            raise OSError(errno.EBADF, "the TLS socket was closed")

    def _fill(self) -> None:
        records = self._records
        view = self._inbox_buffer
        if view is None:  # a TLS record is at most 2^14 + 256 bytes, plus the next header
            view = self._inbox_buffer = memoryview(bytearray(_RECORD_HEADER + (1 << 15)))
        count = self._sock.recv_into(view, min(records.want(), len(view)))
        with self._ssl_lock:
            if count:
                data = view[:count]
                records.consumed(data)
                self._engine.receive_bytes(data)
            else:
                self._engine.receive_eof()

    def _check_open(self) -> None:
        if self._released:
            raise OSError(9, "the TLS socket is closed")

    # -- sending -------------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Encrypt and send up to 64 KiB of ``data``; returns the number of bytes taken."""
        if flags:
            raise ValueError("non-zero flags are not allowed on a TLS socket")
        self._check_open()
        engine = self._engine
        with self._send_lock:
            if engine.direct:
                return self._send_direct(engine, memoryview(data).cast("B"), everything=False)
            with self._ssl_lock:
                taken = engine.write(data)
                self._collect_output()
            self._send_queued()
        self._flush_later()
        return taken

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        """Encrypt and send all of ``data``."""
        if flags:
            raise ValueError("non-zero flags are not allowed on a TLS socket")
        self._check_open()
        view = memoryview(data).cast("B")
        engine = self._engine
        with self._send_lock:
            if engine.direct:
                self._send_direct(engine, view, everything=True)
                return
            while view:
                with self._ssl_lock:
                    taken = engine.write(view)
                    self._collect_output()
                self._send_queued()
                view = view[taken:]
        self._flush_later()

    def _send_direct(self, engine: TLSEngine, view: memoryview, everything: bool) -> int:
        """Direct mode, send lock held: SSL_write to the socket, waiting (within the timeout) while it is full."""
        total = 0
        lock = self._ssl_lock
        while view:
            with lock:
                taken = engine.write(view)
            if not taken:
                self._wait(engine.want_write)
                continue
            total += taken
            if not everything or taken == len(view):
                break
            view = view[taken:]
        return total

    # -- receiving -----------------------------------------------------------------------------
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` decrypted bytes; ``b""`` once the peer closed its sending direction."""
        if flags:
            raise ValueError("non-zero flags are not allowed on a TLS socket")
        self._check_open()
        if bufsize <= 0:
            if bufsize < 0:
                raise ValueError("negative buffersize in recv")
            return b""
        engine = self._engine
        while True:
            with self._ssl_lock:
                data = engine.read(bufsize)
                if self._tickets_wanted > 0:
                    self._harvest_ticket(bool(data))
                if not engine.direct:  # direct mode: OpenSSL wrote to the socket itself
                    self._collect_output()
            if self._outgoing:
                self._flush_later()
            if data is not None:
                return data
            self._await_input(engine)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer`` (up to ``nbytes``, default its size); 0 at the end of the stream."""
        if flags:
            raise ValueError("non-zero flags are not allowed on a TLS socket")
        self._check_open()
        view = memoryview(buffer).cast("B")
        if nbytes < 0 or nbytes > len(view):
            raise ValueError("nbytes must be between 0 and the buffer's size")
        size = nbytes or len(view)
        if size == 0:
            return 0
        engine, lock, outgoing = self._engine, self._ssl_lock, self._outgoing
        while True:
            with lock:
                count = engine.read_into(view, size)
                if self._tickets_wanted > 0:
                    self._harvest_ticket(bool(count))
                out = engine.data_to_send()
                if out:
                    outgoing.append(out)
            if outgoing:
                self._flush_later()
            if count is not None:
                return count
            self._await_input(engine)

    def pending(self) -> int:
        """Decrypted bytes that can be read without touching the network."""
        engine = self._engine_or_none
        if engine is None:
            return 0
        with self._ssl_lock:
            return engine.pending()

    # -- closing -------------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """Half- or full-close: ``SHUT_WR``/``SHUT_RDWR`` first send the TLS close_notify, then shut down TCP.

        After ``shutdown(SHUT_WR)`` the peer reads end-of-stream and this side can still receive.
        A TCP connection the peer has already torn down counts as shut down (no ENOTCONN).
        """
        self._check_open()
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            with self._send_lock:
                self._close_notify(None)
        try:
            self._sock.shutdown(how)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise

    def close(self) -> None:
        """Send close_notify (best effort, within 1 s) and close the TCP socket once no makefile() is open."""
        if self._closed:
            return
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._released:
            return
        self._released = True
        engine = self._engine_or_none
        if engine is None:
            self._sock.close()
            return
        try:
            if self._tickets_wanted > 0:
                self._drain_tickets()
            if not engine.close_notify_sent and self._send_lock.acquire(timeout=_CLOSE_NOTIFY_TIMEOUT):
                try:
                    timeout = self.gettimeout()
                    timeout = _CLOSE_NOTIFY_TIMEOUT if timeout is None else min(timeout, _CLOSE_NOTIFY_TIMEOUT)
                    if not engine.direct:
                        self._sock.settimeout(timeout)
                    self._close_notify(time.monotonic() + timeout)
                finally:
                    self._send_lock.release()
        except OSError:
            pass  # the peer is gone: nothing to tell it
        finally:
            engine.close()
            self._sock.close()
            if engine.failed and self._cache_key is not None and self._context.client_sessions is not None:
                self._context.client_sessions.discard(self._cache_key, id(self))

    def _close_notify(self, deadline: float | None) -> None:
        """Send the close_notify (send lock held); in direct mode wait while the socket is full."""
        engine = self._engine
        while True:
            with self._ssl_lock:
                sent = engine.send_close_notify()
                if not engine.direct:
                    self._collect_output()
            if sent:
                break
            if deadline is None:
                self._wait(engine.want_write)
            else:  # closing: the socket is already marked released, and the wait is bounded
                _poll(self._sock, engine.want_write, deadline)
        if not engine.direct:
            self._send_queued()

    def _drain_tickets(self) -> None:
        """Client closing before reading anything: take a ticket already received, without waiting for one."""
        engine = self._engine
        if engine.direct:  # the socket is non-blocking already: read what has arrived
            for _ in range(4):
                with self._ssl_lock:
                    try:
                        data = engine.read(1 << 14)
                    except (HybridKexError, OSError):
                        data = None
                    self._harvest_ticket()
                if not data or self._tickets_wanted <= 0:
                    return
            return
        previous = self._sock.gettimeout()
        self._sock.settimeout(0.0)  # with a timeout set, Python would wait for readability first
        try:
            for _ in range(4):
                if not self._take_ticket_now(engine):
                    return
        finally:
            with contextlib.suppress(OSError):
                self._sock.settimeout(previous)

    def _take_ticket_now(self, engine: TLSEngine) -> bool:
        """One non-blocking read towards a ticket; False when there is nothing (more) to do."""
        try:
            data = self._sock.recv(self._records.want())
        except OSError:
            return False
        if not data:
            return False
        with self._ssl_lock:
            self._records.consumed(data)
            engine.receive_bytes(data)
            with contextlib.suppress(HybridKexError):
                engine.read(1 << 14)
            self._harvest_ticket()
        return self._tickets_wanted > 0

    def _decref_socketios(self) -> None:
        # Called by socket.SocketIO.close() for each makefile() object.
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._real_close()

    def __enter__(self) -> HybridTLSSocket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> IO[Any]:
        """A file object over the TLS stream, as :meth:`socket.socket.makefile` returns."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        self._check_open()
        writing = "w" in mode
        reading = "r" in mode or not writing
        raw = socket.SocketIO(self, ("r" if reading else "") + ("w" if writing else ""))  # type: ignore[arg-type]
        self._io_refs += 1
        size = io.DEFAULT_BUFFER_SIZE if buffering is None or buffering < 0 else buffering
        if size == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return cast(IO[Any], raw)
        buffer: Any
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, size)
        elif reading:
            buffer = io.BufferedReader(raw, size)
        else:
            buffer = io.BufferedWriter(raw, size)
        if "b" in mode:
            return cast(IO[Any], buffer)
        return io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline)

    # -- the socket underneath -------------------------------------------------------------------
    def fileno(self) -> int:
        """The TCP socket's descriptor (for selectors; never read or write it directly)."""
        return self._sock.fileno()

    def setsockopt(self, *args: Any) -> None:
        """Set an option of the TCP socket (e.g. TCP_NODELAY)."""
        self._sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        """Read an option of the TCP socket."""
        return self._sock.getsockopt(*args)

    def getpeername(self) -> Any:
        """The peer's TCP address."""
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        """This side's TCP address."""
        return self._sock.getsockname()

    def settimeout(self, timeout: float | None) -> None:
        """Timeout for each network read or write; a timed-out call raises :class:`TimeoutError`."""
        if timeout is not None and timeout <= 0:
            raise ValueError("the timeout must be positive or None (non-blocking mode is not supported)")
        if self._direct:
            self._timeout = timeout
        else:
            self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        """The per-operation timeout in seconds (None: block)."""
        return self._timeout if self._direct else self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        """``True``: block without timeout.  Non-blocking mode is not supported for TLS records; use the
        asyncio helpers instead."""
        if not flag:
            raise ValueError("a HybridTLSSocket does not support non-blocking mode; use settimeout() or the "
                             "asyncio helpers (hybridkex_tls.open_connection / start_server)")
        self.settimeout(None)

    @property
    def _direct(self) -> bool:
        engine = self._engine_or_none
        return engine is not None and engine.direct

    @property
    def family(self) -> int:
        """The TCP socket's address family."""
        return self._sock.family

    @property
    def type(self) -> int:
        """The TCP socket's type (SOCK_STREAM)."""
        return self._sock.type

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    # -- what was negotiated -----------------------------------------------------------------------
    @property
    def _facts(self) -> Any:
        engine = self._engine_or_none
        return engine.facts if engine is not None else None

    @property
    def context(self) -> HybridTLSContext:
        """The context this socket was wrapped with."""
        return self._context

    @property
    def server_side(self) -> bool:
        """True on the server's side of the connection."""
        return self._context.role == "server"

    @property
    def server_hostname(self) -> str | None:
        """The server name given to :meth:`HybridTLSContext.wrap_socket` (client)."""
        return self._server_hostname

    def version(self) -> str | None:
        """The TLS version, ``"TLSv1.3"`` (None before the handshake)."""
        facts = self._facts
        return str(facts.version) if facts else None

    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher suite, protocol version, secret bits), as :meth:`ssl.SSLSocket.cipher`."""
        facts = self._facts
        return (facts.cipher, facts.version, facts.cipher_bits) if facts else None

    def group(self) -> str | None:
        """The TLS key-exchange group, ``"X25519MLKEM768"`` in hybrid mode."""
        facts = self._facts
        return str(facts.group) if facts and facts.group else None

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol the server chose (RFC 7301), or None, as :meth:`ssl.SSLSocket.selected_alpn_protocol`."""
        facts = self._facts
        return str(facts.alpn) if facts and facts.alpn else None

    def session_reused(self) -> bool:
        """True when this connection resumed a TLS session (no hybrid exchange, no signature, no QKD key)."""
        facts = self._facts
        return bool(facts and facts.resumed)

    def psk_used(self) -> bool:
        """Whether the handshake used the hybrid exchange's external PSK (False when it resumed a session)."""
        facts = self._facts
        return bool(facts and facts.psk_used and not facts.resumed)

    def peer_identity(self) -> str | None:
        """The peer's hybridkex identity: its key fingerprint (ML-DSA) or ``psk:<id>``; None in static mode.

        For a resumed connection, the identity authenticated by the chain's full connection."""
        return str(self._summary["peer"]) if self._summary else None

    def qkd_key_ids(self) -> tuple[str, ...]:
        """The QKD key_IDs behind this connection's keys (for a resumed one: its chain's; empty without QKD)."""
        if not self._summary:
            return ()
        ids = self._summary.get("qkd_key_ids") or []
        return tuple(str(k) for k in ids)  # type: ignore[attr-defined]

    def qkd_key_age(self) -> float | None:
        """Seconds since the hybrid exchange (and QKD key) behind this connection; None in static mode."""
        return self._chain.age(time.monotonic()) if self._chain is not None else None

    def hybrid_summary(self) -> dict[str, object] | None:
        """The hybrid exchange's secret-free summary (:meth:`hybridkex.HandshakeResult.summary`)."""
        return dict(self._summary) if self._summary else None

    def info(self) -> dict[str, object]:
        """Secret-free facts: TLS version, cipher, group, resumed or not, ALPN, hybrid suite, peer, QKD key_IDs
        and the age of the QKD key behind the connection."""
        return connection_info(self._engine, self._summary, self._chain)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.version()} {self.group()}" if self._facts else "not connected"
        return f"<HybridTLSSocket {state} peer={self.peer_identity()}>"
