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
import os
import socket
import stat
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybridkex import ConfigError, ExchangeSettings, HandshakeConfig, HandshakeResult, QKDKeySource
from hybridkex import exchange_over_socket as _exchange_over_socket

from ._engine import TLSEngine
from ._importer import (
    EPSK_EXPORT_LABEL,
    EXCHANGE_CONTEXT,
    HYBRID_GROUPS,
    PSK_LENGTH,
    TLS_CIPHERSUITES,
    ExternalPSK,
    imported_psk,
)
from ._openssl import ContextHandle, new_context

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


def load_external_psk(path: str | os.PathLike[str]) -> bytes:
    """Read a static external PSK file: the raw key bytes (16 to 512), not readable by group or others."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            raise ConfigError(f"external PSK file {path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'")
        with open(path, "rb") as fh:
            key = fh.read(513)
    except FileNotFoundError:
        raise ConfigError(f"external PSK file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"external PSK file {path} is a directory; give the key file") from None
    except PermissionError:
        raise ConfigError(f"cannot read external PSK file {path}: permission denied") from None
    if not 16 <= len(key) <= 512:
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
                 qkd_source: QKDKeySource | None = None) -> None:
        """Prefer :meth:`client` and :meth:`server`.  Exactly one of ``settings`` and ``static_psk``."""
        if (settings is None) == (static_psk is None):
            raise ConfigError("choose one mode: hybrid exchange settings, or a static external PSK "
                              "(--external-psk FILE --psk-identity ID)")
        if settings is not None and timeout is not None:
            settings = dataclasses.replace(settings, timeout=float(timeout))  # bounds the hybrid exchange too
        self.role: Role = role
        self.settings = settings
        self._static_psk = static_psk
        self._qkd_source = qkd_source
        self._config: HandshakeConfig | None = None
        if settings is not None:
            if groups not in (None, HYBRID_GROUPS):
                raise ConfigError(f"the hybrid mode always uses the group {HYBRID_GROUPS}; --groups only applies "
                                  "to --external-psk")
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
        self._handle: ContextHandle = new_context(role, groups=groups, ciphersuites=TLS_CIPHERSUITES)

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
        if peers is not None:
            options["peers"] = peers
        if external_psk is not None:
            if settings is not None or options or qkd_source is not None:
                raise ConfigError("--external-psk runs TLS with a static key and no hybrid exchange; drop the "
                                  "exchange options (--identity, --peer, --psk-file, --qkd ...) or drop --external-psk")
            identity = psk_identity.encode("utf-8") if isinstance(psk_identity, str) else bytes(psk_identity)
            if not isinstance(external_psk, (bytes, bytearray)) or not 16 <= len(external_psk) <= 512:
                raise ConfigError("the external PSK must be 16 to 512 raw bytes")
            if not 1 <= len(identity) <= 1024:
                raise ConfigError("the PSK identity must be 1 to 1024 bytes")
            return cls(role, static_psk=ExternalPSK(identity, bytes(external_psk)), groups=groups, timeout=timeout)
        return cls(role, settings=_settings(settings, options), groups=groups, timeout=timeout,
                   qkd_source=qkd_source)

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
    def wrap_socket(self, sock: socket.socket, *, suppress_ragged_eofs: bool = True) -> HybridTLSSocket:
        """Run the hybrid exchange and the TLS handshake on a connected TCP socket (blocking).

        The whole setup must finish within :attr:`timeout` seconds.  The returned
        :class:`HybridTLSSocket` owns ``sock``; on any failure ``sock`` is closed and a
        :class:`hybridkex.HybridKexError` (subclass) says what failed.
        """
        from ._tlssocket import establish

        return establish(self, sock, suppress_ragged_eofs=suppress_ragged_eofs)

    def new_engine(self, psk: ExternalPSK, *, suppress_ragged_eofs: bool = True) -> TLSEngine:
        """A TLS engine for one connection keyed by ``psk`` (for drivers of other I/O models)."""
        return TLSEngine(self._handle, psk, expected_group=self.expected_group,
                         suppress_ragged_eofs=suppress_ragged_eofs)

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

    def exchange(self, sock: socket.socket) -> HandshakeResult:
        """Run the hybrid exchange on ``sock`` (blocking).

        The result holds the session secret: take the PSK with :func:`psk_from_result`, call
        :meth:`after_success` once TLS is up, and drop it.
        """
        source, owned = self.open_qkd_source()
        try:
            return _exchange_over_socket(sock, "initiator" if self.role == "client" else "responder",
                                         self.handshake_config, qkd_source=source)
        finally:
            if owned and source is not None:
                source.close()


def psk_from_result(result: HandshakeResult) -> tuple[ExternalPSK, dict[str, object]]:
    """The TLS external PSK for a finished hybrid exchange (RFC 9258 import) and its summary."""
    epsk = result.export(EPSK_EXPORT_LABEL, PSK_LENGTH)
    return imported_psk(epsk, result.transcript_hash), result.summary()
