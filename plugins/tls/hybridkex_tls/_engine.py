"""The TLS 1.3 connection as a sans-I/O engine over pyOpenSSL memory BIOs.

Bytes from the network go in with :meth:`TLSEngine.receive_bytes`, bytes for the network
come out of :meth:`TLSEngine.data_to_send`; the blocking socket wrapper and the asyncio
streams are thin drivers around it.  After the handshake the engine checks what the
hybrid mode promises -- the external PSK was used on both sides and the key exchange ran
over the expected group -- and refuses the connection otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ._errors import TLSConnectionClosed, TLSError, TLSHandshakeError, TLSPSKError, TLSResumptionRefused
from ._importer import ExternalPSK
from ._openssl import (
    SSL,
    ContextHandle,
    PSKBinding,
    RecordIO,
    current_session,
    handshake_outcome,
    keep_session_resumable,
    new_connection,
    release_connection,
    session_key_id,
    session_pointer,
    set_session,
)

__all__ = ["TLSEngine", "TLSFacts"]

#: Application data handed to SSL_write per call (16 full TLS records): large, so that bulk sends cost few
#: Python-level calls, and bounded, so that one call's ciphertext stays a modest buffer.
_WRITE_CHUNK = 1 << 18
#: Largest plaintext read() returns at once (one TLS record holds at most 16 KiB).
_READ_CHUNK = 1 << 16

# OpenSSL reason strings -> what they mean for a PSK-only TLS 1.3 handshake, and what to do.
_PSK_MISMATCH = ("the two sides hold different TLS PSKs (the binder did not verify); with --external-psk give both "
                 "sides the same key and identity; in hybrid mode the two sides derived different keys")
_CLOSED_DURING_HANDSHAKE = "the peer closed the connection during the TLS handshake; see the peer's log for why"
_TAMPERED = "a TLS record failed its integrity check: the connection was tampered with in transit"
# Reasons OpenSSL adds on top of the root cause.
_GENERIC = frozenset({"record layer failure"})
_NO_GROUP = "no common key-exchange group; the hybrid mode needs X25519MLKEM768 on both sides"
_REASONS: dict[str, tuple[type[TLSHandshakeError], str]] = {
    "binder does not verify": (TLSPSKError, _PSK_MISMATCH),
    "no suitable signature algorithm": (TLSPSKError, "the client offered no PSK this server knows, and this server "
                                        "has no certificate to fall back on"),
    "certificate verify failed": (TLSPSKError, "the server answered with a certificate instead of accepting the "
                                  "external PSK; is it running hybridkex-tls with the same PSK?"),
    "no shared cipher": (TLSHandshakeError, "no common TLS 1.3 cipher suite: the PSK needs a SHA-256 suite "
                         "(TLS_AES_128_GCM_SHA256 or TLS_CHACHA20_POLY1305_SHA256)"),
    "no suitable key share": (TLSHandshakeError, _NO_GROUP),
    "no shared groups": (TLSHandshakeError, _NO_GROUP),
    "decryption failed or bad record mac": (TLSHandshakeError, _TAMPERED),
    "wrong version number": (TLSHandshakeError, "the peer does not speak TLS here (is it a plain TCP service?)"),
    "unsupported protocol": (TLSHandshakeError, "the peer does not support TLS 1.3"),
}
# Alerts received from the peer, by name (OpenSSL prefixes them with "sslv3", "tlsv1" or "tls" by version).
_ALERTS: dict[str, tuple[type[TLSHandshakeError], str]] = {
    "decrypt error": (TLSPSKError, "the peer could not verify the PSK binder: " + _PSK_MISMATCH),
    "bad record mac": (TLSHandshakeError, "the peer received a TLS record that failed its integrity check: the "
                       "connection was tampered with in transit"),
    "illegal parameter": (TLSPSKError, "the peer rejected the handshake (alert illegal_parameter), which OpenSSL "
                          "3.0 sends when the PSK binder does not verify: " + _PSK_MISMATCH),
    "handshake failure": (TLSPSKError, "the peer refused the handshake (alert handshake_failure): it did not accept "
                          "the external PSK (different key or identity), or found no common cipher suite or group"),
}


def _explain(reason: str) -> tuple[type[TLSHandshakeError], str]:
    if reason in _REASONS:
        return _REASONS[reason]
    prefix, sep, alert = reason.partition("alert ")
    if sep and prefix in ("sslv3 ", "tlsv1 ", "tls ", "tlsv13 "):
        return _ALERTS.get(alert, (TLSHandshakeError, f"the peer aborted the handshake with alert '{alert}'"))
    return TLSHandshakeError, reason


def _raise_os_error(exc: SSL.SysCallError) -> None:
    """A socket error under OpenSSL (direct mode, e.g. ECONNRESET) as the OSError a socket would raise."""
    code = exc.args[0] if exc.args else -1
    if isinstance(code, int) and code > 0:
        raise OSError(code, os.strerror(code)) from None


def _reason(exc: SSL.Error) -> str:
    """The root-cause OpenSSL reason string of a pyOpenSSL error (never key material)."""
    entries = exc.args[0] if exc.args else None
    reasons = [str(e[2]) for e in entries if isinstance(e, tuple) and len(e) >= 3] \
        if isinstance(entries, list) else []
    specific = [r for r in reasons if r not in _GENERIC]
    if specific or reasons:
        return (specific or reasons)[0]
    return str(exc) or type(exc).__name__


class TLSFacts:
    """What a finished handshake negotiated (secret-free)."""

    def __init__(self, version: str, cipher: str, cipher_bits: int, group: str | None, psk_used: bool,
                 resumed: bool = False, alpn: str | None = None, server_name: str | None = None) -> None:
        self.version = version
        self.cipher = cipher
        self.cipher_bits = cipher_bits
        self.group = group
        self.psk_used = psk_used
        self.resumed = resumed
        """The handshake resumed a TLS session (no hybrid exchange) instead of using the external PSK."""
        self.alpn = alpn
        self.server_name = server_name


class _ConnectionFacts(TLSFacts):
    """:class:`TLSFacts` of a finished handshake whose version, cipher, ALPN and server name are read from the
    connection when first asked for (many connections never ask: that is a dozen OpenSSL calls saved)."""

    _LAZY = frozenset({"version", "cipher", "cipher_bits", "alpn", "server_name"})

    def __init__(self, conn: SSL.Connection, group: str | None, resumed: bool) -> None:
        self._conn = conn
        self.group = group
        self.psk_used = True
        self.resumed = resumed

    def __getattr__(self, name: str) -> object:
        if name not in self._LAZY:
            raise AttributeError(name)
        conn = self._conn
        alpn = conn.get_alpn_proto_negotiated()
        server_name = conn.get_servername()
        self.version = conn.get_protocol_version_name()
        self.cipher = conn.get_cipher_name() or ""
        self.cipher_bits = conn.get_cipher_bits() or 0
        self.alpn = alpn.decode("ascii", "replace") if alpn else None
        self.server_name = server_name.decode("ascii", "replace") if server_name else None
        return self.__dict__[name]


class TLSEngine:
    """One TLS 1.3 connection (client or server) keyed by an external PSK, without I/O."""

    # State that starts out empty or false, as class attributes until first set (an engine per connection).
    _started = False
    _scratch: bytearray | None = None
    _resuming = False
    _session_pointer = 0
    handshake_done = False
    facts: TLSFacts | None = None
    peer_closed = False
    """The peer sent close_notify (or closed the TCP connection, with ragged EOFs suppressed)."""
    close_notify_sent = False
    failed = False
    """A TLS alert (sent or received) ended the connection; OpenSSL then marks the connection's session not
    resumable, so a client drops the ticket this connection left in its cache."""

    def __init__(self, handle: ContextHandle, psk: ExternalPSK | None, *, expected_group: str | None = None,
                 suppress_ragged_eofs: bool = True, session: Any = None, server_hostname: str | None = None,
                 alpn_protocols: Sequence[str] = (),
                 on_hello: Callable[[bool, bytes, str | None], bool] | None = None,
                 on_done: Callable[[TLSEngine], None] | None = None, fd: int | None = None) -> None:
        """``psk``: the external PSK (None: resumption only).  Client: ``session`` (from :meth:`new_session`) to resume,
        ``server_hostname`` for SNI, ``alpn_protocols`` to offer.  Server: ``on_hello`` checks each
        ClientHello (see :class:`~hybridkex_tls._openssl.PSKBinding`); ``on_done`` runs once the
        handshake finished and passed its checks, before :meth:`data_to_send` hands out its last flight:
        the session tickets in it then name a session the server has already recorded (memory BIOs
        only: with ``fd`` OpenSSL would have sent them).  ``fd``: OpenSSL reads and writes this
        (non-blocking) socket itself from the start, as after :meth:`attach_socket`; no memory BIOs."""
        if on_done is not None and fd is not None:
            raise TLSError("on_done needs memory BIOs: with a socket OpenSSL sends the last flight itself")
        self.role: Literal["client", "server"] = handle.role
        self._binding = PSKBinding(psk, on_hello=on_hello)
        # A client resuming (no PSK) needs nothing from its callback, which then offers no PSK either way.
        registered = psk is not None or handle.role == "server"
        self._conn = new_connection(handle, self._binding, register=registered, fd=fd)
        # Forget the PSK binding when the handshake ends, or at the latest when the engine is dropped (__del__:
        # a weakref.finalize per connection costs more than the rest of this constructor).
        self._registered = registered
        self._io = io = RecordIO(self._conn, direct=fd is not None)
        # Called for every chunk of the network's bytes: RecordIO's methods themselves, no wrapper in between.
        self.receive_bytes: Callable[[bytes | bytearray | memoryview], None] = io.feed
        """Feed bytes read from the network."""
        self.data_to_send: Callable[[], bytes | bytearray] = io.drain
        """All bytes the engine wants on the network now (possibly empty)."""
        self.direct = fd is not None
        """OpenSSL reads and writes the socket itself (:meth:`attach_socket`)."""
        if self.role == "client":
            if server_hostname:
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
            if alpn_protocols:
                self._conn.set_alpn_protos([p.encode("ascii") for p in alpn_protocols])
            if session is not None:
                self._resuming = set_session(self._conn, session)
        self._on_done = on_done
        self._expected_group = expected_group
        self._suppress_ragged_eofs = suppress_ragged_eofs

    # -- bytes in and out ----------------------------------------------------------------
    def receive_eof(self) -> None:
        """The network connection delivered EOF."""
        if not self._io.direct:
            self._conn.bio_shutdown()

    # -- straight to the socket (after the handshake) -----------------------------------------
    @property
    def want_write(self) -> bool:
        """Direct mode: the last read, write or close_notify that made no progress waits for writability."""
        return self._io.want_write

    def can_attach_socket(self, before_handshake: bool = False) -> bool:
        """The handshake is done and no ciphertext waits in the memory BIOs (all input consumed, all output
        taken), so OpenSSL can go on over the socket itself without losing or reordering a byte.
        ``before_handshake``: the handshake has not started either (it is then run over the socket)."""
        ready = not self._started if before_handshake else self.handshake_done
        return ready and not self._io.direct and self._io.idle()

    def attach_socket(self, fd: int) -> None:
        """From now on OpenSSL reads and writes ``fd`` itself (a non-blocking socket: calls that would block
        return None / 0 / False and :attr:`want_write` says what to wait for); :meth:`data_to_send` is empty
        and :meth:`receive_bytes` must not be called.  Only when :meth:`can_attach_socket` (after the
        handshake), or before it starts: then :meth:`do_handshake` runs it over the socket (False: wait for
        the socket as :attr:`want_write` says)."""
        if not (self.can_attach_socket() or self.can_attach_socket(before_handshake=True)):
            raise TLSError("the connection cannot read its socket directly yet")
        self._io.attach(fd)
        self.direct = True

    # -- handshake -----------------------------------------------------------------------
    def do_handshake(self) -> bool:
        """Advance the handshake; True once it finished and passed the checks, False when it needs input."""
        if self.handshake_done:
            return True
        self._started = True
        try:
            if not self._io.do_handshake():
                return False
        except (SSL.ZeroReturnError, SSL.SysCallError):
            self._release()
            raise TLSConnectionClosed(_CLOSED_DURING_HANDSHAKE) from None
        except SSL.Error as exc:
            self._release()
            raise self._handshake_error(_reason(exc)) from None
        try:
            self._check_handshake()
        finally:
            self._release()
        self.handshake_done = True
        if self._on_done is not None:
            self._on_done(self)
        return True

    def _handshake_error(self, reason: str) -> TLSHandshakeError:
        if reason == "unexpected eof while reading":
            return TLSConnectionClosed(_CLOSED_DURING_HANDSHAKE)
        if self.role == "server" and self._binding.hello_refused:
            return TLSPSKError("refused the client's TLS handshake: it resumed no session this server knows (or one "
                               "past its lifetime or resumption limit), and a plain TLS handshake is not accepted "
                               "here; hybridkex-tls clients run a full hybrid exchange then")
        if self.role == "client" and self._resuming:
            return TLSResumptionRefused("the server did not resume the cached TLS session (expired, restarted or "
                                        "at its resumption limit); the session is dropped, connect again for a "
                                        "full hybrid exchange")
        if self.role == "server" and self._binding.unknown_identity:
            return TLSPSKError("the client offered a TLS PSK identity this server does not expect; it derived a "
                               "different hybrid key or is configured with another --psk-identity")
        if self.role == "server" and not self._binding.accepted and reason == "no suitable signature algorithm":
            return TLSPSKError("the client offered no external PSK; it must run hybridkex-tls (or use "
                               "--external-psk with the same key and identity)")
        cls, explained = _explain(reason)
        return cls(f"TLS handshake failed: {explained}")

    def _check_handshake(self) -> None:
        reused, group, pointer = handshake_outcome(self._conn)
        external = self._binding.offered if self.role == "client" else self._binding.accepted
        resumed = reused and not external
        if resumed and self.role == "client" and not self._resuming:
            raise TLSPSKError("the server resumed a session this client did not offer; refusing the connection")
        if resumed and self.role == "server" and self._binding.on_hello is None:
            raise TLSPSKError("the client resumed a session this connection does not accept; refusing it")
        if not reused:
            raise TLSPSKError("the TLS handshake finished without the external PSK; refusing the connection "
                              "because only the PSK authenticates it")
        if self._expected_group is not None and group != self._expected_group:
            raise TLSHandshakeError(f"the TLS key exchange used {group or 'no group'} instead of "
                                    f"{self._expected_group}; refusing the connection")
        self.facts = _ConnectionFacts(self._conn, group, resumed)
        self._session_pointer = pointer

    # -- resumption ------------------------------------------------------------------------
    def new_session(self) -> Any:
        """Client: the session of a ticket that arrived since the last call (an opaque reference to OpenSSL's
        SSL_SESSION, for ``session=`` of a later engine), or None.

        TLS 1.3 tickets come after the handshake (RFC 8446 §4.6.1); OpenSSL replaces the
        connection's session with each one, which is how a new ticket shows.
        """
        if self.role != "client" or not self.handshake_done:
            return None
        pointer = session_pointer(self._conn)
        if pointer == self._session_pointer:
            return None
        self._session_pointer = pointer
        return current_session(self._conn)

    def session_key_id(self) -> bytes:
        """Server, after the handshake: the name of the session the last ticket sent resumes."""
        return session_key_id(self._conn)

    @property
    def hello_refused(self) -> bool:
        """Server: the ClientHello check refused the handshake."""
        return self._binding.hello_refused

    def _release(self) -> None:
        if self._registered:
            self._registered = False
            release_connection(self._conn)
        self._binding.psk = None  # the key is no longer needed once OpenSSL holds the handshake secrets

    def __del__(self) -> None:
        try:
            if getattr(self, "_registered", False):  # a constructor that failed early set no attributes
                release_connection(self._conn)
            if self.role == "client" and self.handshake_done and not self.close_notify_sent:
                # The connection is freed next: without close_notify OpenSSL would mark its current session (the
                # one a ticket of this connection left in the client's cache) not resumable.
                keep_session_resumable(self._conn)
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be half torn down
            pass

    # -- application data ----------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt up to one chunk of ``data``; returns how many bytes were taken."""
        if not self.handshake_done:
            raise TLSError("the TLS handshake has not finished; no data can be sent yet")
        if self.close_notify_sent:
            raise BrokenPipeError("this side already shut down its sending direction (close_notify sent)")
        view = memoryview(data)[:_WRITE_CHUNK]
        if not view:
            return 0
        try:
            return self._io.write(view)
        except SSL.SysCallError as exc:
            _raise_os_error(exc)
            raise TLSError(f"TLS error while sending: {_reason(exc)}") from None
        except SSL.Error as exc:
            self.failed = True
            raise TLSError(f"TLS error while sending: {_reason(exc)}") from None

    def read(self, size: int) -> bytes | None:
        """Decrypted bytes (up to ``size``); ``b""`` at the end of the stream; None when input is needed."""
        want = min(size, _READ_CHUNK)
        scratch = self._scratch
        if scratch is None or len(scratch) < want:  # as large as asked for: a recv(1) zeroes no 64 KiB
            scratch = self._scratch = bytearray(want)
        count = self.read_into(scratch, want)
        if count is None:
            return None
        return bytes(scratch[:count])

    def read_into(self, buffer: bytearray | memoryview, size: int) -> int | None:
        """Like :meth:`read`, into ``buffer``: the count, 0 at the end of the stream, None when input is needed."""
        if self.peer_closed:
            return 0
        try:
            return self._io.read_into(buffer, size)
        except SSL.ZeroReturnError:
            self.peer_closed = True
            return 0
        except SSL.SysCallError as exc:
            _raise_os_error(exc)
            return len(self._ragged_eof())
        except SSL.Error as exc:
            reason = _reason(exc)
            if reason == "unexpected eof while reading":
                return len(self._ragged_eof())
            self.failed = True
            raise TLSError(f"TLS error while receiving: {_explain(reason)[1]}; the connection cannot be used "
                           "any more") from None

    def _ragged_eof(self) -> bytes:
        if not self._suppress_ragged_eofs:
            raise TLSError("the peer closed the TCP connection without a TLS close_notify; data may have been "
                           "truncated")
        self.peer_closed = True
        return b""

    def pending(self) -> int:
        """Decrypted bytes ready to read without more input."""
        return int(self._conn.pending())

    def send_close_notify(self) -> bool:
        """Close this side's sending direction (TLS 1.3 close_notify, RFC 8446 §6.1); reading may go on.

        False only in direct mode when the socket is not writable yet: call again once it is."""
        if self.close_notify_sent or not self.handshake_done:
            self.close_notify_sent = True
            return True
        try:
            if not self._io.shutdown():
                return False
        except SSL.Error:
            pass  # the connection is already broken; closing goes on regardless
        self.close_notify_sent = True
        return True

    def close(self) -> None:
        """Forget the PSK binding (the handshake may have been abandoned)."""
        self._release()

