"""The blocking driver: :class:`HybridTLSSocket`, which behaves like :class:`ssl.SSLSocket`.

It owns the TCP socket and a :class:`~hybridkex_tls._engine.TLSEngine`.  One thread may
receive while another sends (as with ``ssl`` sockets, not two receivers or two senders at
once): OpenSSL calls are serialized by one lock, and ciphertext goes out under a second
lock in the order OpenSSL produced it.  Socket timeouts (``settimeout``) apply to every
network read and write and raise :class:`TimeoutError`, as ``ssl`` sockets do.
"""

from __future__ import annotations

import contextlib
import errno
import io
import socket
import threading
import time
from collections import deque
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast

from hybridkex import HandshakeResult, HandshakeTimeout, HybridKexError, TransportError

from ._context import psk_from_result
from ._engine import TLSEngine

if TYPE_CHECKING:
    from ._context import HybridTLSContext

__all__ = ["HybridTLSSocket", "establish", "connection_info"]

_RECV_CHUNK = 1 << 16
_CLOSE_NOTIFY_TIMEOUT = 1.0


def _send_before(sock: socket.socket, data: bytes, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    sock.sendall(data)


def _tls_handshake(sock: socket.socket, engine: TLSEngine, deadline: float, timeout: float) -> None:
    """Drive the TLS handshake over ``sock`` until done or ``deadline``."""
    try:
        while True:
            try:
                done = engine.do_handshake()
            except HybridKexError:
                # Let the peer read OpenSSL's alert, so both sides report the same cause.
                alert = engine.data_to_send()
                if alert:
                    try:
                        _send_before(sock, alert, min(deadline, time.monotonic() + _CLOSE_NOTIFY_TIMEOUT))
                    except OSError:
                        pass
                raise
            out = engine.data_to_send()
            if out:
                _send_before(sock, out, deadline)
            if done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            data = sock.recv(_RECV_CHUNK)
            if data:
                engine.receive_bytes(data)
            else:
                engine.receive_eof()
    except TimeoutError:
        raise HandshakeTimeout(f"the TLS handshake did not finish within {timeout:g} s of the connection's start; "
                               "the peer is down, stuck or too slow") from None
    except OSError as exc:
        if isinstance(exc, HybridKexError):
            raise
        raise TransportError(f"the connection failed during the TLS handshake: {exc.strerror or exc}") from None


def establish(context: HybridTLSContext, sock: socket.socket, *, suppress_ragged_eofs: bool = True) \
        -> HybridTLSSocket:
    """Hybrid exchange (or static PSK), then the TLS handshake, on a connected socket; closes it on failure."""
    deadline = time.monotonic() + context.timeout
    previous_timeout = sock.gettimeout()
    engine: TLSEngine | None = None
    try:
        if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.setup_lock or contextlib.nullcontext():
            summary: dict[str, object] | None = None
            result: HandshakeResult | None = None
            if context.static_psk is not None:
                psk = context.static_psk
            else:
                result = context.exchange(sock)
                psk, summary = psk_from_result(result)
            engine = context.new_engine(psk, suppress_ragged_eofs=suppress_ragged_eofs)
            _tls_handshake(sock, engine, deadline, context.timeout)
            if result is not None:
                # The TLS Finished messages proved that both sides hold the hybrid key.
                context.after_success(result)
                del result
        sock.settimeout(previous_timeout or None)  # a non-blocking socket becomes blocking: see setblocking()
    except BaseException:
        if engine is not None:
            engine.close()
        sock.close()
        raise
    return HybridTLSSocket(sock, engine, summary)


def connection_info(engine: TLSEngine, summary: dict[str, object] | None) -> dict[str, object]:
    """Secret-free facts about an established connection (the ``--json`` line)."""
    facts = engine.facts
    assert facts is not None
    info: dict[str, object] = {
        "tls_version": facts.version,
        "cipher": facts.cipher,
        "group": facts.group,
        "external_psk": facts.psk_used,
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
    return info


class HybridTLSSocket:
    """A TLS 1.3 connection keyed by the hybrid exchange, with the :class:`ssl.SSLSocket` methods that matter.

    Create it with :meth:`HybridTLSContext.wrap_socket`.
    """

    def __init__(self, sock: socket.socket, engine: TLSEngine, summary: dict[str, object] | None) -> None:
        self._sock = sock
        self._engine = engine
        self._summary = summary
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._outgoing: deque[bytes] = deque()
        self._closed = False
        """close() was called (the TCP socket closes once no makefile() object is left)."""
        self._released = False
        self._io_refs = 0

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
                data = b"".join(self._outgoing)
                self._outgoing.clear()
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

    def _fill(self) -> None:
        data = self._sock.recv(_RECV_CHUNK)
        with self._ssl_lock:
            if data:
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
        with self._send_lock:
            with self._ssl_lock:
                taken = self._engine.write(data)
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
        with self._send_lock:
            while view:
                with self._ssl_lock:
                    taken = self._engine.write(view)
                    self._collect_output()
                self._send_queued()
                view = view[taken:]
        self._flush_later()

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
        while True:
            with self._ssl_lock:
                data = self._engine.read(bufsize)
                self._collect_output()
            self._flush_later()
            if data is not None:
                return data
            self._fill()

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
        while True:
            with self._ssl_lock:
                count = self._engine.read_into(view, size)
                self._collect_output()
            self._flush_later()
            if count is not None:
                return count
            self._fill()

    def pending(self) -> int:
        """Decrypted bytes that can be read without touching the network."""
        with self._ssl_lock:
            return self._engine.pending()

    # -- closing -------------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """Half- or full-close: ``SHUT_WR``/``SHUT_RDWR`` first send the TLS close_notify, then shut down TCP.

        After ``shutdown(SHUT_WR)`` the peer reads end-of-stream and this side can still receive.
        A TCP connection the peer has already torn down counts as shut down (no ENOTCONN).
        """
        self._check_open()
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            with self._send_lock:
                with self._ssl_lock:
                    self._engine.send_close_notify()
                    self._collect_output()
                self._send_queued()
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
        try:
            if not self._engine.close_notify_sent and self._send_lock.acquire(timeout=_CLOSE_NOTIFY_TIMEOUT):
                try:
                    timeout = self._sock.gettimeout()
                    self._sock.settimeout(_CLOSE_NOTIFY_TIMEOUT if timeout is None else
                                          min(timeout, _CLOSE_NOTIFY_TIMEOUT))
                    with self._ssl_lock:
                        self._engine.send_close_notify()
                        self._collect_output()
                    self._send_queued()
                finally:
                    self._send_lock.release()
        except OSError:
            pass  # the peer is gone: nothing to tell it
        finally:
            self._engine.close()
            self._sock.close()

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
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        """The per-operation timeout in seconds (None: block)."""
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        """``True``: block without timeout.  Non-blocking mode is not supported for TLS records; use the
        asyncio helpers instead."""
        if not flag:
            raise ValueError("a HybridTLSSocket does not support non-blocking mode; use settimeout() or the "
                             "asyncio helpers (hybridkex_tls.open_connection / start_server)")
        self._sock.setblocking(True)

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
    def version(self) -> str | None:
        """The TLS version, ``"TLSv1.3"``."""
        return self._engine.facts.version if self._engine.facts else None

    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher suite, protocol version, secret bits), as :meth:`ssl.SSLSocket.cipher`."""
        facts = self._engine.facts
        return (facts.cipher, facts.version, facts.cipher_bits) if facts else None

    def group(self) -> str | None:
        """The TLS key-exchange group, ``"X25519MLKEM768"`` in hybrid mode."""
        return self._engine.facts.group if self._engine.facts else None

    def psk_used(self) -> bool:
        """Whether the handshake used the external PSK (always True: a connection without it is refused)."""
        return bool(self._engine.facts and self._engine.facts.psk_used)

    def peer_identity(self) -> str | None:
        """The peer's hybridkex identity: its key fingerprint (ML-DSA) or ``psk:<id>``; None in static mode."""
        return str(self._summary["peer"]) if self._summary else None

    def qkd_key_ids(self) -> tuple[str, ...]:
        """The QKD key_IDs mixed into this connection's PSK (empty without QKD)."""
        if not self._summary:
            return ()
        ids = self._summary.get("qkd_key_ids") or []
        return tuple(str(k) for k in ids)  # type: ignore[attr-defined]

    def hybrid_summary(self) -> dict[str, object] | None:
        """The hybrid exchange's secret-free summary (:meth:`hybridkex.HandshakeResult.summary`)."""
        return dict(self._summary) if self._summary else None

    def info(self) -> dict[str, object]:
        """Secret-free facts: TLS version, cipher, group, PSK use, hybrid suite, peer, QKD key_IDs."""
        return connection_info(self._engine, self._summary)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.version()} {self.group()}"
        return f"<HybridTLSSocket {state} peer={self.peer_identity()}>"
