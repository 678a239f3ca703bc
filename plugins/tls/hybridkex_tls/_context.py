""":class:`HybridTLSContext`: what one side needs to set up TLS 1.3 keyed by the hybrid exchange.

A context is built once (keys loaded, OpenSSL context configured) and then wraps many
connections.  Per connection it

1. runs the hybrid exchange on the TCP connection (the TLS client is the initiator, the
   server the responder; context ``b"hybridkex-tls v1"``),
2. imports the exchange's output as a TLS 1.3 external PSK (RFC 9258, see ``_importer``),
3. runs TLS 1.3 in psk_dhe_ke mode over X25519MLKEM768, so the traffic keys depend on
   the QKD key, ML-KEM and X25519 of the hybrid exchange *and* on a fresh ML-KEM/X25519
   exchange inside TLS.

OpenSSL cannot combine certificates with an external PSK in TLS 1.3, so the peer is
authenticated by the hybrid exchange (ML-DSA pins or a PSK) and TLS is bound to it by
the PSK.  A *static* mode (``external_psk=...``) skips the hybrid exchange and uses a
fixed key, as ``openssl s_client -psk`` does, for interop and tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
import socket
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybridkex import ConfigError, ExchangeSettings, HandshakeResult, QKDKeySource
from hybridkex import exchange_over_socket as _exchange_over_socket
from hybridkex.io import default_guard, read_secret_file
from hybridkex.protocol import DoSGuard, HandshakeConfig

from ._engine import TLSEngine
from ._importer import (
    EXCHANGE_CONTEXT,
    HYBRID_GROUPS,
    TLS_CIPHERSUITES,
    ExternalPSK,
)
from ._openssl import SSL, ContextHandle, new_context
from ._resumption import ClientSessionCache, ServerSessionTable

if TYPE_CHECKING:
    from ._tlssocket import HybridTLSSocket

__all__ = ["HybridTLSContext", "load_external_psk", "DEFAULT_PSK_IDENTITY"]

Role = Literal["client", "server"]

#: The PSK identity ``openssl s_client``/``s_server`` use when none is given.
DEFAULT_PSK_IDENTITY = "Client_identity"

_SETTINGS_FIELDS = frozenset(ExchangeSettings.__dataclass_fields__) - {"extra"}
#: Settings fields holding one path (identity, psk_file, qkd_link, ...): str arguments become Path.
_PATH_FIELDS = frozenset(name for name, f in ExchangeSettings.__dataclass_fields__.items()
                         if str(f.type).replace(" ", "") == "Path|None")


@functools.cache
def _socket_class() -> type[HybridTLSSocket]:
    """:class:`HybridTLSSocket`, imported once (the module imports this one)."""
    from ._tlssocket import HybridTLSSocket

    return HybridTLSSocket


def load_external_psk(path: str | os.PathLike[str]) -> bytes:
    """Read a static external PSK file: the raw key bytes (16 to 512), not readable by group or others."""
    key = read_secret_file(path, "external PSK file", max_size=512)
    if len(key) < 16:
        raise ConfigError(f"external PSK file {path} holds {len(key)} bytes; it must hold the raw key, 16 to 512 "
                          "bytes (e.g. 'head -c 32 /dev/urandom > FILE')")
    return key


def _settings(settings: ExchangeSettings | None, options: dict[str, Any]) -> ExchangeSettings:
    unknown = sorted(set(options) - _SETTINGS_FIELDS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(sorted(_SETTINGS_FIELDS))}")
    if settings is not None:
        if options:
            raise TypeError("give an ExchangeSettings or keyword options, not both")
        return settings
    values = dict(options)
    for name in _PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    if "peers" in values:
        peers = values["peers"]
        values["peers"] = (Path(peers),) if isinstance(peers, (str, os.PathLike)) else \
            tuple(Path(p) for p in peers)
    return ExchangeSettings(**values)


class HybridTLSContext:
    """TLS 1.3 client or server settings whose PSK comes from the hybrid QKD + ML-KEM + X25519 exchange.

    Build one with :meth:`client` or :meth:`server`, then call :meth:`wrap_socket` on each
    connected TCP socket (or use the server and asyncio helpers).
    """

    def __init__(self, role: Role, *, settings: ExchangeSettings | None = None,
                 static_psk: ExternalPSK | None = None, groups: str | None = None, timeout: float | None = None,
                 qkd_source: QKDKeySource | None = None, session_lifetime: float = 3600.0,
                 max_resumptions: int = 100, pre_auth_timeout: float = 5.0, idle_timeout: float | None = None,
                 host_peers: Mapping[str, Any] | None = None,
                 sni_settings: Mapping[str, ExchangeSettings | Mapping[str, Any]] | None = None,
                 dos_guard: DoSGuard | None = None) -> None:
        """Prefer :meth:`client` and :meth:`server`.  Exactly one of ``settings`` and ``static_psk``."""
        if (settings is None) == (static_psk is None):
            raise ConfigError("choose one mode: hybrid exchange settings, or a static external PSK "
                              "(the external_psk and psk_identity parameters)")
        if session_lifetime < 0:
            raise ConfigError("session_lifetime must be 0 (no resumption) or a positive number of seconds")
        if max_resumptions < 0:
            raise ConfigError("max_resumptions must be 0 (no resumption) or more")
        if pre_auth_timeout <= 0:
            raise ConfigError("pre_auth_timeout must be a positive number of seconds")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ConfigError("idle_timeout must be None (no limit) or a positive number of seconds")
        if host_peers and role != "client":
            raise ConfigError("host_peers applies to a client context; a server uses sni_settings")
        if sni_settings and role != "server":
            raise ConfigError("sni_settings applies to a server context; a client uses host_peers")
        if settings is not None and timeout is not None:
            settings = dataclasses.replace(settings, timeout=float(timeout))  # bounds the hybrid exchange too
        self.role: Role = role
        self.settings = settings
        self._static_psk = static_psk
        self._qkd_source = qkd_source
        self._config: HandshakeConfig | None = None
        if settings is not None:
            if groups not in (None, HYBRID_GROUPS):
                raise ConfigError(f"the hybrid mode always uses the group {HYBRID_GROUPS}; the groups parameter "
                                  "only applies with external_psk")
            groups = HYBRID_GROUPS
            # Load keys and check the QKD source now, so a bad path fails before any connection.
            self._config = self._build_config()
            if qkd_source is None:
                probe = settings.open_qkd_source()
                if probe is not None:
                    probe.close()
        self.groups = groups
        #: With a PSK ratchet the authentication key changes after every connection: setups run one at a time.
        self.setup_lock: threading.Lock | None = threading.Lock() if self._ratcheting else None
        self._async_setup_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
            weakref.WeakKeyDictionary()
        self.timeout = float(timeout if timeout is not None else settings.timeout if settings else 30.0)
        if self.timeout <= 0:
            raise ConfigError("the handshake timeout must be positive")
        resumable = settings is not None and session_lifetime > 0 and max_resumptions > 0
        self.session_lifetime = float(session_lifetime) if resumable else 0.0
        """Seconds after a full hybrid exchange during which its TLS session may be resumed (0: never)."""
        self.max_resumptions = int(max_resumptions) if resumable else 0
        """How many connections may resume one full connection's chain of sessions."""
        self.pre_auth_timeout = min(float(pre_auth_timeout), self.timeout)
        """Server: seconds a client has to authenticate (hybrid exchange, or resumption) before it is dropped."""
        self.idle_timeout = idle_timeout
        """Seconds an established connection may wait on the network before reads and writes raise TimeoutError."""
        self.dos_guard = dos_guard if dos_guard is not None else default_guard()
        """Server: the hybrid responder's DoS guard (replay cache, cookies, per-source rate limits); by default
        the one the process shares."""
        self.client_sessions = ClientSessionCache(self.session_lifetime, self.max_resumptions) \
            if resumable and role == "client" else None
        self.server_sessions = ServerSessionTable(self.session_lifetime, self.max_resumptions) \
            if resumable and role == "server" else None
        self.alpn_protocols: tuple[str, ...] = ()
        self._host_configs: dict[str, HandshakeConfig] = {}
        self._host_peers = {str(k).lower(): v for k, v in (host_peers or {}).items()}
        self._sni_settings: dict[str, ExchangeSettings] = {}
        for name, value in (sni_settings or {}).items():
            self._sni_settings[str(name).lower()] = value if isinstance(value, ExchangeSettings) \
                else _settings(None, dict(value))
        if self.settings is not None:
            # Load every per-host configuration now, so a bad path fails before any connection.
            for name in self._host_peers:
                self.config_for(name)
            for name in self._sni_settings:
                self.config_for(name)
        self._handle: ContextHandle = new_context(role, groups=groups, ciphersuites=TLS_CIPHERSUITES,
                                                  ticket_lifetime=int(math.ceil(self.session_lifetime))
                                                  if role == "server" else 0)

    # -- factories -------------------------------------------------------------------------
    @classmethod
    def client(cls, settings: ExchangeSettings | None = None, *, external_psk: bytes | None = None,
               psk_identity: str | bytes = DEFAULT_PSK_IDENTITY, groups: str | None = None,
               timeout: float | None = None, qkd_source: QKDKeySource | None = None,
               peers: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
               **options: Any) -> HybridTLSContext:
        """A TLS client (hybrid initiator).

        Hybrid mode takes an :class:`~hybridkex.ExchangeSettings` or its fields as keywords:
        ``identity``, ``peers``, ``psk_file``, ``kem``, ``backend``, ``qkd``, ``qkd_link``,
        ``qkd_policy``, ``kme_url``, ... (paths as str or Path).  Static mode takes
        ``external_psk`` (the raw key) and ``psk_identity``; ``groups`` (OpenSSL syntax,
        e.g. ``"X25519"``) applies to static mode only.  ``timeout`` bounds the whole setup
        (hybrid exchange and TLS handshake).  ``qkd_source`` is an open
        :class:`~hybridkex.QKDKeySource` (e.g. an application's own KME client) shared by all
        connections instead of the configured ``qkd``; with it, ``qkd_policy`` defaults to
        ``required``.
        """
        return cls._build("client", settings, external_psk, psk_identity, groups, timeout, qkd_source, peers, options)

    # Options of the context itself (not of the hybrid exchange), for client() and server().
    _OWN_OPTIONS = ("session_lifetime", "max_resumptions", "pre_auth_timeout", "idle_timeout", "host_peers",
                    "sni_settings", "dos_guard")

    @classmethod
    def server(cls, settings: ExchangeSettings | None = None, *, external_psk: bytes | None = None,
               psk_identity: str | bytes = DEFAULT_PSK_IDENTITY, groups: str | None = None,
               timeout: float | None = None, qkd_source: QKDKeySource | None = None,
               peers: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
               **options: Any) -> HybridTLSContext:
        """A TLS server (hybrid responder); the same arguments as :meth:`client`."""
        return cls._build("server", settings, external_psk, psk_identity, groups, timeout, qkd_source, peers, options)

    @classmethod
    def _build(cls, role: Role, settings: ExchangeSettings | None, external_psk: bytes | None,
               psk_identity: str | bytes, groups: str | None, timeout: float | None,
               qkd_source: QKDKeySource | None, peers: Any, options: dict[str, Any]) -> HybridTLSContext:
        own = {name: options.pop(name) for name in cls._OWN_OPTIONS if name in options}
        if peers is not None:
            options["peers"] = peers
        if external_psk is not None:
            if settings is not None or options or qkd_source is not None:
                raise ConfigError("external_psk runs TLS with a static key and no hybrid exchange; drop the "
                                  "exchange options (settings, identity, peers, psk_file, qkd, qkd_source ...) or "
                                  "drop external_psk")
            identity = psk_identity.encode("utf-8") if isinstance(psk_identity, str) else bytes(psk_identity)
            if not isinstance(external_psk, (bytes, bytearray)) or not 16 <= len(external_psk) <= 512:
                raise ConfigError("the external PSK must be 16 to 512 raw bytes")
            if not 1 <= len(identity) <= 1024:
                raise ConfigError("the PSK identity must be 1 to 1024 bytes")
            return cls(role, static_psk=ExternalPSK(identity, bytes(external_psk)), groups=groups, timeout=timeout,
                       **own)
        return cls(role, settings=_settings(settings, options), groups=groups, timeout=timeout,
                   qkd_source=qkd_source, **own)

    # -- properties ------------------------------------------------------------------------
    @property
    def hybrid(self) -> bool:
        """True in hybrid mode; False with a static external PSK."""
        return self._static_psk is None

    @property
    def expected_group(self) -> str | None:
        """The group every handshake must use (hybrid mode), or None to let OpenSSL negotiate."""
        return HYBRID_GROUPS if self.hybrid else None

    # -- per connection --------------------------------------------------------------------
    def wrap_socket(self, sock: socket.socket, server_side: bool | None = None, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | None = None) -> HybridTLSSocket:
        """Set up TLS keyed by the hybrid exchange on a connected TCP socket, as :meth:`ssl.SSLContext.wrap_socket`.

        ``server_side`` (default: the context's role) must match the role the context was built
        for.  ``server_hostname`` (client) is sent as SNI, picks the expected peers given in
        ``host_peers`` and names the server in the session cache.  With
        ``do_handshake_on_connect=False`` the setup runs at :meth:`HybridTLSSocket.do_handshake`
        or at the first read or write.  A client resumes a cached session when it has one (no
        hybrid exchange); otherwise the whole setup must finish within :attr:`timeout` seconds.
        The returned socket owns ``sock``; on any failure ``sock`` is closed and an
        :class:`OSError` that is also a :class:`hybridkex.HybridKexError` says what failed.
        """
        if server_side is not None and bool(server_side) != (self.role == "server"):
            raise ValueError(f"server_side={server_side!r} does not match this {self.role} context; build it with "
                             f"HybridTLSContext.{'server' if server_side else 'client'}(...)")
        if server_hostname is not None and self.role == "server":
            raise ValueError("server_hostname is only for client-side sockets")
        tls = _socket_class()(sock, self, server_hostname=server_hostname, suppress_ragged_eofs=suppress_ragged_eofs)
        if do_handshake_on_connect:
            tls.do_handshake()
        return tls

    def set_alpn_protocols(self, protocols: Sequence[str]) -> None:
        """The ALPN protocols (RFC 7301) to offer (client) or accept, in order of preference (server)."""
        names = tuple(protocols)
        for name in names:
            if not isinstance(name, str) or not 1 <= len(name.encode("ascii", "replace")) <= 255:
                raise ValueError("each ALPN protocol must be a str of 1 to 255 ASCII characters")
        self.alpn_protocols = names
        if self.role == "server":
            wanted = [n.encode("ascii") for n in names]

            def select(_conn: SSL.Connection, offered: list[bytes]) -> Any:
                for name in wanted:
                    if name in offered:
                        return name
                return SSL.NO_OVERLAPPING_PROTOCOLS

            self._handle.context.set_alpn_select_callback(select)

    def config_for(self, name: str | None) -> HandshakeConfig:
        """The hybrid exchange's configuration for a server name (client: ``host_peers``; server: ``sni_settings``)."""
        key = (name or "").lower()
        if key and key in self._host_peers:
            assert self.settings is not None
            if key not in self._host_configs:
                peers = self._host_peers[key]
                paths = (Path(peers),) if isinstance(peers, (str, os.PathLike)) else tuple(Path(p) for p in peers)
                self._host_configs[key] = dataclasses.replace(self.settings, peers=paths) \
                    .handshake_config(context=EXCHANGE_CONTEXT)
            return self._host_configs[key]
        if key and key in self._sni_settings:
            if key not in self._host_configs:
                self._host_configs[key] = self._sni_settings[key].handshake_config(context=EXCHANGE_CONTEXT)
            return self._host_configs[key]
        return self.handshake_config

    def new_engine(self, psk: ExternalPSK | None, *, suppress_ragged_eofs: bool = True, session: Any = None,
                   server_hostname: str | None = None, on_hello: Any = None, on_done: Any = None,
                   fd: int | None = None) -> TLSEngine:
        """A TLS engine for one connection keyed by ``psk`` or resuming ``session`` (for drivers of other I/O)."""
        return TLSEngine(self._handle, psk, expected_group=self.expected_group,
                         suppress_ragged_eofs=suppress_ragged_eofs, session=session, server_hostname=server_hostname,
                         alpn_protocols=self.alpn_protocols if self.role == "client" else (), on_hello=on_hello,
                         on_done=on_done, fd=fd)

    @property
    def static_psk(self) -> ExternalPSK | None:
        """The static external PSK, or None in hybrid mode."""
        return self._static_psk

    @property
    def _ratcheting(self) -> bool:
        return self.settings is not None and getattr(self.settings, "psk_ratchet", None) is not None

    def _build_config(self) -> HandshakeConfig:
        assert self.settings is not None
        settings = self.settings
        if self._qkd_source is not None and settings.qkd == "off":
            # A key source handed in directly (e.g. an application's own KME client): QKD is on.
            policy = settings.qkd_policy or "required"
            config = dataclasses.replace(settings, qkd_policy=None).handshake_config(context=EXCHANGE_CONTEXT)
            return dataclasses.replace(config, qkd_policy=policy)
        return settings.handshake_config(context=EXCHANGE_CONTEXT)

    @property
    def handshake_config(self) -> HandshakeConfig:
        """The hybrid exchange's configuration (hybrid mode only); with a PSK ratchet, its current state."""
        if self._config is None:
            raise ConfigError("a static-PSK context runs no hybrid exchange")
        if self._ratcheting:
            self._config = self._build_config()  # the ratchet's keys change after every connection
        return self._config

    def async_setup_lock(self) -> asyncio.Lock | None:
        """The asyncio counterpart of :attr:`setup_lock` for the running event loop."""
        if not self._ratcheting:
            return None
        loop = asyncio.get_running_loop()
        lock = self._async_setup_locks.get(loop)
        if lock is None:
            lock = self._async_setup_locks[loop] = asyncio.Lock()
        return lock

    def after_success(self, result: HandshakeResult) -> None:
        """Bookkeeping once TLS confirmed the hybrid key on both sides: advance the PSK ratchet, if any."""
        if self.settings is not None:
            self.settings.after_success(result)

    def open_qkd_source(self) -> tuple[QKDKeySource | None, bool]:
        """The QKD key source for one connection and whether the caller must close it."""
        if self._qkd_source is not None:
            return self._qkd_source, False
        assert self.settings is not None
        source = self.settings.open_qkd_source()
        return source, source is not None

    def exchange(self, sock: socket.socket, config: HandshakeConfig | None = None,
                 timeout: float | None = None) -> HandshakeResult:
        """Run the hybrid exchange on ``sock`` (blocking), within ``timeout`` s (default: the config's).

        The result holds the session secret: take the PSK with :func:`psk_from_result`, call
        :meth:`after_success` once TLS is up, and drop it.
        """
        config = config or self.handshake_config
        if timeout is not None:
            config = dataclasses.replace(config, timeout=timeout)
        source, owned = self.open_qkd_source()
        try:
            return _exchange_over_socket(sock, "initiator" if self.role == "client" else "responder",
                                         config, qkd_source=source, guard=self.dos_guard)
        finally:
            if owned and source is not None:
                source.close()
