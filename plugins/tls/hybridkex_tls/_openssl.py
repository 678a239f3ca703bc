"""Every OpenSSL function this plugin reaches past pyOpenSSL's public API, in one module.

pyOpenSSL has no public API for TLS 1.3 external PSKs or for the key-exchange groups, so
they are called through its cffi binding (``OpenSSL._util.lib`` / ``ffi``, which is
``cryptography``'s binding of the OpenSSL bundled in its wheel):

- ``SSL_CTX_set_psk_use_session_callback`` (client) and
  ``SSL_CTX_set_psk_find_session_callback`` (server) hand OpenSSL an ``SSL_SESSION``
  holding the PSK, its cipher suite (which fixes the PSK's hash, RFC 8446 §4.2.11) and
  TLS 1.3 as the version.  These callbacks take binary identities, which RFC 9258
  ImportedIdentity structures are; the legacy ``SSL_CTX_set_psk_client_callback`` takes
  NUL-terminated strings and is not used.
- ``SSL_CTX_set1_curves_list`` (the same control as ``SSL_CTX_set1_groups_list``) sets
  the groups, e.g. ``X25519MLKEM768``.
- ``SSL_session_reused`` tells whether the handshake used the PSK.

The module checks at import that the binding has all of them and raises
:class:`~hybridkex_tls.TLSUnavailable` naming the versions needed.  Callbacks reach the
per-connection PSK through a table keyed by the ``SSL *`` address; the ``ffi.callback``
objects live as long as the context that uses them.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import TLSUnavailable
from ._importer import ExternalPSK

__all__ = [
    "SSL", "OPENSSL_VERSION", "PYOPENSSL_VERSION", "PSKBinding", "ContextHandle", "new_context", "new_connection",
    "release_connection", "session_reused", "negotiated_group", "set_groups", "REQUIREMENTS", "current_session",
    "set_session", "keep_session_resumable", "session_key_id", "session_pointer", "handshake_outcome", "RecordIO",
]

REQUIREMENTS = ("pyOpenSSL >= 26.4 on cryptography >= 48, whose wheel bundles OpenSSL >= 3.5 "
                "(TLS 1.3 PSK session callbacks and the X25519MLKEM768 group)")

_NEEDED = (
    "SSL_CTX_set_psk_use_session_callback", "SSL_CTX_set_psk_find_session_callback",
    "Cryptography_SSL_SESSION_new", "SSL_SESSION_set1_master_key", "SSL_SESSION_set_cipher",
    "SSL_SESSION_set_protocol_version", "SSL_CIPHER_find", "SSL_CTX_set1_curves_list", "SSL_session_reused",
    "SSL_get0_group_name", "SSL_get_session", "ERR_get_error", "TLS1_3_VERSION",
    "SSL_set_session", "SSL_SESSION_get_master_key", "SSL_get1_session", "SSL_set_shutdown", "SSL_get_shutdown",
    "SSL_CTX_set_tlsext_servername_callback", "SSL_get_servername",
)

try:
    import OpenSSL
    from OpenSSL import SSL
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise TLSUnavailable(f"hybridkex-tls needs {REQUIREMENTS}; pyOpenSSL could not be imported ({exc}); "
                         "install it with 'pip install pyOpenSSL'") from None

PYOPENSSL_VERSION: str = OpenSSL.__version__
OPENSSL_VERSION: str = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")


def _check_binding() -> None:
    missing = [name for name in _NEEDED if not hasattr(_lib, name)]
    if not missing and not (getattr(_lib, "Cryptography_HAS_PSK_TLSv1_3", 0)
                            and getattr(_lib, "Cryptography_HAS_SSL_GET0_GROUP_NAME", 0)):
        missing.append("TLS 1.3 PSK support")
    if missing:
        raise TLSUnavailable(f"hybridkex-tls needs {REQUIREMENTS}; this is pyOpenSSL {PYOPENSSL_VERSION} with "
                             f"{OPENSSL_VERSION}, whose binding lacks {', '.join(missing)}; upgrade with "
                             "'pip install -U pyOpenSSL cryptography'")


_check_binding()

#: TLS_AES_128_GCM_SHA256 (RFC 8446 Appendix B.4): the suite named in the PSK's session.  A SHA-256 suite,
#: so the server may pick either SHA-256 suite offered and still use the PSK.
_PSK_SESSION_SUITE = b"\x13\x01"

Role = Literal["client", "server"]


class PSKBinding:
    """One connection's external PSK and what the PSK callbacks saw (read after the handshake).

    The flags are class attributes until a callback sets them: one binding is made per connection."""

    offered = False
    """Client: the PSK was put in the ClientHello."""
    accepted = False
    """Server: the client offered our identity and the PSK session was handed to OpenSSL."""
    unknown_identity = False
    """Server: the client offered a PSK identity other than ours."""
    hello_refused = False
    """Server: ``on_hello`` refused the handshake."""
    _identity_buffer: Any = None

    def __init__(self, psk: ExternalPSK | None, on_hello: Any = None) -> None:
        self.psk = psk
        self.on_hello = on_hello
        """Server: ``on_hello(resumed, session_key_id, server_name) -> bool`` runs once the ClientHello is parsed
        (after OpenSSL decided whether it resumes a session); False refuses the handshake with an alert."""


@dataclass(eq=False)
class ContextHandle:
    """A pyOpenSSL context plus the ffi callbacks installed on it (kept referenced here)."""

    context: SSL.Context
    role: Role
    groups: str | None
    callbacks: tuple[Any, ...] = ()


#: Bindings by their connection's ``SSL *`` (cffi pointers hash and compare by address).  Reading needs no lock:
#: a dict lookup is atomic, and a connection's binding is added before its handshake and removed after it.
_bindings: dict[Any, PSKBinding] = {}
_bindings_lock = threading.Lock()


def _psk_session(ssl: Any, key: bytes) -> Any:
    """A new SSL_SESSION carrying ``key`` as a TLS 1.3 PSK for SHA-256 suites; NULL on failure."""
    cipher = _lib.SSL_CIPHER_find(ssl, _PSK_SESSION_SUITE)
    if cipher == _ffi.NULL:
        return _ffi.NULL
    session = _lib.Cryptography_SSL_SESSION_new()
    if session == _ffi.NULL:
        return _ffi.NULL
    key_buffer = _ffi.from_buffer("unsigned char[]", key)
    if (_lib.SSL_SESSION_set1_master_key(session, key_buffer, len(key)) != 1
            or _lib.SSL_SESSION_set_cipher(session, cipher) != 1
            or _lib.SSL_SESSION_set_protocol_version(session, _lib.TLS1_3_VERSION) != 1):
        _lib.SSL_SESSION_free(session)
        return _ffi.NULL
    return session


def _use_session(ssl: Any, md: Any, identity_out: Any, identity_len_out: Any, session_out: Any) -> int:
    """Client: offer the connection's PSK (OpenSSL owns the returned session and frees it)."""
    session_out[0] = _ffi.NULL
    binding = _bindings.get(ssl)
    if binding is None or binding.psk is None:
        return 1  # no PSK: the server will refuse the handshake, which the caller reports
    session = _psk_session(ssl, binding.psk.key)
    if session == _ffi.NULL:
        return 0
    if binding._identity_buffer is None:
        # OpenSSL keeps the pointer until the handshake ends: the buffer lives on the binding.
        binding._identity_buffer = _ffi.new("unsigned char[]", binding.psk.identity)
    identity_out[0] = binding._identity_buffer
    identity_len_out[0] = len(binding.psk.identity)
    session_out[0] = session
    binding.offered = True
    return 1


def _find_session(ssl: Any, identity: Any, identity_len: int, session_out: Any) -> int:
    """Server: accept the client's PSK only under the identity this connection expects."""
    session_out[0] = _ffi.NULL
    binding = _bindings.get(ssl)
    if binding is None or binding.psk is None:
        return 1
    offered = bytes(_ffi.buffer(identity, identity_len))
    if not hmac.compare_digest(offered, binding.psk.identity):
        binding.unknown_identity = True
        return 1  # not ours: OpenSSL goes on without a PSK and fails for want of a certificate
    session = _psk_session(ssl, binding.psk.key)
    if session == _ffi.NULL:
        return 0
    session_out[0] = session
    binding.accepted = True
    return 1


_ALERT_HANDSHAKE_FAILURE = 40


def _on_client_hello(ssl: Any, alert: Any, _arg: Any) -> int:
    """Server: the servername callback, which OpenSSL runs for every ClientHello after the PSK extension was
    parsed (RFC 8446 §4.2.11), whether or not it carries SNI; it lets the plugin check a resumed session."""
    binding = _bindings.get(ssl)
    if binding is None or binding.on_hello is None:
        return _TLSEXT_OK
    resumed = bool(_lib.SSL_session_reused(ssl))
    key_id = _key_id(_lib.SSL_get_session(ssl)) if resumed else b""
    name_ptr = _lib.SSL_get_servername(ssl, _HOST_NAME)
    name = None if name_ptr == _ffi.NULL else _ffi.string(name_ptr).decode("ascii", "replace")
    try:
        if binding.on_hello(resumed, key_id, name):
            return _TLSEXT_OK
    except Exception:  # noqa: BLE001 - a callback must not raise into OpenSSL
        pass
    binding.hello_refused = True
    alert[0] = _ALERT_HANDSHAKE_FAILURE
    return _TLSEXT_FATAL


_TLSEXT_OK = int(_lib.SSL_TLSEXT_ERR_OK)
_TLSEXT_FATAL = int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)
_HOST_NAME = int(_lib.TLSEXT_NAMETYPE_host_name)


#: A session's master key (TLS 1.3: the resumption PSK, one hash long) is at most this long.
_MAX_MASTER_KEY = 64
#: Copied for each hash: hashlib.sha256() looks the algorithm up in OpenSSL on every call, which costs more
#: than hashing 32 bytes.
_SHA256 = hashlib.sha256()
_ZEROS = bytes(_MAX_MASTER_KEY)
_MASTER_KEY_BUFFER = _ffi.typeof(f"unsigned char[{_MAX_MASTER_KEY}]")


def _key_id(session: Any) -> bytes:
    """SHA-256 of a session's resumption PSK: a name for the session that reveals nothing of the key."""
    if session == _ffi.NULL:
        return b""
    buffer = _ffi.new(_MASTER_KEY_BUFFER)
    got = _lib.SSL_SESSION_get_master_key(session, buffer, _MAX_MASTER_KEY)
    digest = _SHA256.copy()
    digest.update(_ffi.buffer(buffer, got))
    _ffi.memmove(buffer, _ZEROS, got)  # the copy of the key goes before the buffer returns to the allocator
    return digest.digest() if got else b""


def session_key_id(conn: SSL.Connection) -> bytes:
    """Name (hash of the resumption PSK) of the connection's current session: after the server's handshake
    it names the session its last ticket resumes, and :func:`_on_client_hello` sees the same name."""
    return _key_id(_lib.SSL_get_session(conn._ssl))


def session_pointer(conn: SSL.Connection) -> int:
    """Address of the connection's current SSL_SESSION; a TLS 1.3 client gets a new one with every ticket."""
    return int(_ffi.cast("uintptr_t", _lib.SSL_get_session(conn._ssl)))


def current_session(conn: SSL.Connection) -> Any:
    """The connection's current SSL_SESSION, as a reference of its own (freed when the returned object is), or
    None.  Unlike a DER copy it costs no encoding and decoding; :func:`keep_session_resumable` keeps it
    resumable when the connection is dropped without close_notify."""
    session = _lib.SSL_get1_session(conn._ssl)
    return None if session == _ffi.NULL else _ffi.gc(session, _lib.SSL_SESSION_free)


def set_session(conn: SSL.Connection, session: Any) -> bool:
    """Offer ``session`` (from :func:`current_session`) for resumption in the next ClientHello; False if OpenSSL
    refuses it."""
    if _lib.SSL_set_session(conn._ssl, session) == 1:
        return True
    _drain_error_queue()
    return False


def keep_session_resumable(conn: SSL.Connection) -> None:
    """Before a client connection that sent no close_notify is freed: OpenSSL would mark its current session
    not resumable (``ssl_clear_bad_session``), and that session may be the one kept for the next connection.
    Marking the sending direction shut down, as close_notify would, skips that; nothing is sent."""
    _lib.SSL_set_shutdown(conn._ssl, _lib.SSL_get_shutdown(conn._ssl) | _SENT_SHUTDOWN)


_SENT_SHUTDOWN = int(_lib.SSL_SENT_SHUTDOWN)


class RecordIO:
    """Fast paths for one memory-BIO connection: SSL_read/SSL_write and the BIOs, called directly.

    pyOpenSSL raises an exception for every "want more input" and allocates a buffer per
    call; on a bulk transfer that costs more than the cryptography.  These calls return
    None instead of raising for want-read, and read into the caller's buffer.
    """

    __slots__ = ("_conn", "_ssl", "_into", "_from", "direct", "want_write")

    def __init__(self, conn: SSL.Connection, direct: bool = False) -> None:
        self._conn = conn
        self._ssl = conn._ssl
        self._into = _ffi.NULL if direct else conn._into_ssl
        self._from = _ffi.NULL if direct else conn._from_ssl
        self.direct = direct
        """OpenSSL reads and writes the socket itself (:meth:`attach`); no memory BIOs any more."""
        self.want_write = False
        """Direct mode: the last call that made no progress waits for the socket to be writable (else readable)."""

    def idle(self) -> bool:
        """Neither memory BIO holds a byte: OpenSSL consumed all input and all its output was taken."""
        return bool(_lib.BIO_get_mem_data(self._into, _ffi.NULL) <= 0
                    and _lib.BIO_get_mem_data(self._from, _ffi.NULL) <= 0)

    def attach(self, fd: int) -> None:
        """Replace both memory BIOs (which must be :meth:`idle`) by a socket BIO on ``fd`` (SSL_set_fd).

        A partial record OpenSSL already took out of the memory BIO stays in its record buffer and is
        completed from the socket.  SSL_set_fd frees the memory BIOs, so pyOpenSSL must not touch them.
        """
        if _lib.SSL_set_fd(self._ssl, fd) != 1:
            self._conn._raise_ssl_error(self._ssl, -1)  # pragma: no cover - only fails on allocation failure
        self._conn._into_ssl = self._conn._from_ssl = None
        self._into = self._from = _ffi.NULL
        self.direct = True

    def _want(self, result: int) -> bool:
        """After a call that returned ``result`` <= 0: True if it only has to wait for the network."""
        code = _lib.SSL_get_error(self._ssl, result)
        if code == _lib.SSL_ERROR_WANT_READ:
            self.want_write = False
            return True
        if code == _lib.SSL_ERROR_WANT_WRITE and self.direct:
            self.want_write = True
            return True
        return False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Ciphertext from the network into OpenSSL (a memory BIO takes everything)."""
        if self.direct:
            raise AssertionError("a connection reading its socket directly takes no fed bytes")
        if len(data) and _lib.BIO_write(self._into, _ffi.from_buffer(data), len(data)) <= 0:
            self._conn._raise_ssl_error(self._ssl, -1)  # pragma: no cover - memory BIOs do not refuse

    def drain(self) -> bytes | bytearray:
        """All ciphertext OpenSSL has for the network (possibly empty), read in one call into a buffer of
        exactly that size (BIO_get_mem_data gives the pending length): one copy, however large."""
        if self.direct:
            return b""
        size = _lib.BIO_get_mem_data(self._from, _ffi.NULL)
        if size <= 0:
            return b""
        out = bytearray(size)
        n = _lib.BIO_read(self._from, _ffi.from_buffer(out), size)
        return out if n == size else out[:max(0, n)]

    def shutdown(self) -> bool:
        """SSL_shutdown (sends close_notify): True once sent, False when a direct write has to wait first."""
        result = _lib.SSL_shutdown(self._ssl)
        if result >= 0:
            return True
        if self.direct and self._want(result):
            return False
        self._conn._raise_ssl_error(self._ssl, result)
        raise AssertionError("unreachable")  # pragma: no cover

    def do_handshake(self) -> bool:
        """SSL_do_handshake: True when done, False when OpenSSL needs more input; other outcomes raise
        pyOpenSSL's exceptions (no exception for the usual want-read, unlike pyOpenSSL's method)."""
        result = _lib.SSL_do_handshake(self._ssl)
        if result == 1:
            return True
        if self._want(result):
            return False
        self._conn._raise_ssl_error(self._ssl, result)
        raise AssertionError("unreachable")  # pragma: no cover

    def read_into(self, buffer: bytearray | memoryview, size: int) -> int | None:
        """SSL_read into ``buffer``: the count, or None when OpenSSL needs more input; other outcomes raise
        pyOpenSSL's exceptions (ZeroReturnError at close_notify, SysCallError, Error)."""
        result = _lib.SSL_read(self._ssl, _ffi.from_buffer(buffer, require_writable=True), size)
        if result > 0:
            return int(result)
        if self._want(result):
            return None
        self._conn._raise_ssl_error(self._ssl, result)
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """SSL_write of ``data`` (into the outgoing memory BIO, or to the socket); returns the count taken,
        0 when a direct write has to wait (call again with the same data, as OpenSSL requires)."""
        result = _lib.SSL_write(self._ssl, _ffi.from_buffer(data), len(data))
        if result > 0:
            return int(result)
        if self.direct and self._want(result):
            return 0
        self._conn._raise_ssl_error(self._ssl, result)
        raise AssertionError("unreachable")  # pragma: no cover


def _reject_certificate(*_args: object) -> bool:
    # Authentication is the hybrid exchange's (or the static PSK's) job; a server that answers with
    # a certificate instead of the PSK is refused rather than trusted.
    return False


def set_groups(ctx: SSL.Context, groups: str) -> None:
    """SSL_CTX_set1_groups_list: the key-exchange groups, in OpenSSL's syntax (e.g. ``X25519MLKEM768``)."""
    if _lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode("ascii")) != 1:
        _drain_error_queue()
        raise TLSUnavailable(f"{OPENSSL_VERSION} (through pyOpenSSL {PYOPENSSL_VERSION}) does not support the "
                             f"group(s) {groups}; hybridkex-tls needs {REQUIREMENTS}")


def new_context(role: Role, *, groups: str | None, ciphersuites: str, ticket_lifetime: int = 0) -> ContextHandle:
    """A TLS 1.3-only context for external-PSK handshakes (psk_dhe_ke), with PSK callbacks installed.

    ``ticket_lifetime`` > 0: the server issues TLS 1.3 session tickets valid that many seconds
    (the client takes them with :func:`SSL.Connection.get_session`); 0: no tickets.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD if role == "client" else SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    try:
        ctx.set_tls13_ciphersuites(ciphersuites.encode("ascii"))
    except SSL.Error:
        raise TLSUnavailable(f"{OPENSSL_VERSION} accepts none of the TLS 1.3 cipher suites {ciphersuites}") from None
    if groups is not None:
        set_groups(ctx, groups)
    # No OpenSSL session cache: the plugin keeps the sessions it may resume (and their hybrid facts) itself.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if ticket_lifetime > 0:
        ctx.set_timeout(ticket_lifetime)
    else:
        ctx.set_options(SSL.OP_NO_TICKET)
    callbacks: tuple[Any, ...]
    if role == "client":
        ctx.set_verify(SSL.VERIFY_PEER, _reject_certificate)
        use_type = _ffi.typeof(_lib.SSL_CTX_set_psk_use_session_callback).args[1]
        use_cb = _ffi.callback(use_type, _use_session, error=0)
        _lib.SSL_CTX_set_psk_use_session_callback(ctx._context, use_cb)
        callbacks = (use_cb,)
    else:
        find_type = _ffi.typeof(_lib.SSL_CTX_set_psk_find_session_callback).args[1]
        find_cb = _ffi.callback(find_type, _find_session, error=0)
        _lib.SSL_CTX_set_psk_find_session_callback(ctx._context, find_cb)
        hello_cb = _ffi.callback("int(SSL *, int *, void *)", _on_client_hello,
                                 error=int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL))
        _lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, hello_cb)
        callbacks = (find_cb, hello_cb)
    return ContextHandle(ctx, role, groups, callbacks)


def new_connection(handle: ContextHandle, binding: PSKBinding, register: bool = True,
                   fd: int | None = None) -> SSL.Connection:
    """A memory-BIO connection for ``handle`` (with ``fd``: a socket-BIO one on that descriptor) whose PSK
    callbacks will see ``binding`` (``register=False``: they see none, which offers and accepts no PSK)."""
    sock: Any = None if fd is None else _Descriptor(fd)
    conn = SSL.Connection(handle.context, sock)
    if handle.role == "client":
        conn.set_connect_state()
    else:
        conn.set_accept_state()
    if register:
        with _bindings_lock:
            _bindings[conn._ssl] = binding
    return conn


class _Descriptor:
    """What pyOpenSSL needs of a socket to put OpenSSL on it (SSL_set_fd): its descriptor."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def release_connection(conn: SSL.Connection) -> None:
    """Forget the connection's PSK binding (after the handshake, or when it failed)."""
    with _bindings_lock:
        _bindings.pop(conn._ssl, None)


def session_reused(conn: SSL.Connection) -> bool:
    """True when the handshake used a PSK (for TLS 1.3, SSL_session_reused reports exactly that)."""
    return bool(_lib.SSL_session_reused(conn._ssl))


def handshake_outcome(conn: SSL.Connection) -> tuple[bool, str | None, int]:
    """After a finished handshake, in one call: whether it used a PSK (:func:`session_reused`), its group
    (:func:`negotiated_group`) and its session's address (:func:`session_pointer`)."""
    ssl = conn._ssl
    session = _lib.SSL_get_session(ssl)
    reused = bool(_lib.SSL_session_reused(ssl))
    if session == _ffi.NULL:
        return reused, None, 0
    name = _lib.SSL_get0_group_name(ssl)
    group = None if name == _ffi.NULL else _ffi.string(name).decode("ascii")
    return reused, group, int(_ffi.cast("uintptr_t", session))


def negotiated_group(conn: SSL.Connection) -> str | None:
    """The key-exchange group of a finished handshake, e.g. ``X25519MLKEM768`` (None before)."""
    if _lib.SSL_get_session(conn._ssl) == _ffi.NULL:  # SSL_get0_group_name needs an established session
        return None
    name = _lib.SSL_get0_group_name(conn._ssl)
    return None if name == _ffi.NULL else str(_ffi.string(name).decode("ascii"))


def _drain_error_queue() -> None:
    while _lib.ERR_get_error() != 0:
        pass
