"""One call from settings to a confirmed key: the library behind ``hybridkex exchange``.

Plugins use :func:`exchange_over_socket` on a socket they already hold (the TLS wrapper
runs it before TLS; the WireGuard rotator per peer).  Every responder in one process shares
one :class:`~hybridkex._dos.DoSGuard` unless it passes its own, so replayed InitHellos are
refused across connections.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Literal

from ._config import ExchangeSettings
from ._errors import HybridKexError, TransportError
from .io._guard import default_guard, source_of
from .io._transport import connect, listen, run_handshake
from .protocol._dos import DoSGuard
from .protocol._handshake import HandshakeConfig, HandshakeResult, Initiator, Responder
from .protocol._qkd import QKDKeySource
from .protocol._state import Role as _Role

__all__ = ["exchange_over_socket", "exchange"]

Role = Literal["initiator", "responder"]
log = logging.getLogger("hybridkex")

class _Quiet:
    """Rate-limited log lines about failed unauthenticated connections, in fixed words only."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = -every
        self.suppressed = 0

    def note(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self.suppressed += 1
            return
        extra = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.warning("ignored an unauthenticated connection that failed: %s%s", what, extra)
        self._last, self.suppressed = now, 0


def _connection(config: HandshakeConfig, role: Role, sock: socket.socket, guard: DoSGuard | None) -> \
        Initiator | Responder:
    if role == "initiator":
        return Initiator(config)
    return Responder(config, guard=guard or default_guard(), source=source_of(sock))


def _settings_config(settings: ExchangeSettings | HandshakeConfig, context: bytes,
                     qkd_source: QKDKeySource | None) -> tuple[HandshakeConfig, QKDKeySource | None, bool]:
    if isinstance(settings, ExchangeSettings):
        config = settings.handshake_config(context=context)
        if qkd_source is None:
            qkd_source = settings.open_qkd_source()
            return config, qkd_source, qkd_source is not None
        return config, qkd_source, False
    return settings, qkd_source, False


def exchange_over_socket(sock: socket.socket, role: Role, settings: ExchangeSettings | HandshakeConfig, *,
                         context: bytes = b"", qkd_source: QKDKeySource | None = None,
                         guard: DoSGuard | None = None) -> HandshakeResult:
    """Run one handshake as ``role`` over a connected socket.

    With ``settings`` an :class:`ExchangeSettings`, keys and the QKD source are loaded from
    it (the source is closed afterwards unless one was passed in) and the authentication
    ratchet advances once the peer proved the session.
    """
    config, source, own_source = _settings_config(settings, context, qkd_source)
    try:
        conn = _connection(config, role, sock, guard)
        result = run_handshake(sock, conn, source)
        if isinstance(settings, ExchangeSettings):
            settings.after_success(result)
        return result
    finally:
        if own_source and source is not None:
            source.close()


def exchange(settings: ExchangeSettings, *, listen_on: tuple[str, int] | None = None,
             connect_to: tuple[str, int] | None = None, context: bytes = b"", accept_timeout: float = 300.0,
             connect_retry: float = 10.0,
             on_listening: Callable[[tuple[str, int]], None] | None = None) -> HandshakeResult:
    """Listen for one peer (responder) or connect to one (initiator) and run the handshake.

    A listener keeps waiting, until ``accept_timeout``, past connections that fail before the
    peer authenticated (port scans, replays, strangers); a failure after that is raised.
    """
    if (listen_on is None) == (connect_to is None):
        raise ValueError("give exactly one of listen_on and connect_to")
    config = settings.handshake_config(context=context)  # load keys before touching the network
    if connect_to is not None:
        # An initiator must know its one responder (its key keys mac1): say so before connecting.
        config.authenticator.responder_static(_Role.INITIATOR)
    source = settings.open_qkd_source()
    try:
        if connect_to is not None:
            with contextlib.closing(connect(connect_to, timeout=settings.timeout, retry_for=connect_retry)) as sock:
                result = run_handshake(sock, Initiator(config), source, await_close=True)
            settings.after_success(result)
            return result
        assert listen_on is not None
        return _listen_once(settings, config, source, listen_on, accept_timeout, on_listening)
    finally:
        if source is not None:
            source.close()


def _listen_once(settings: ExchangeSettings, config: HandshakeConfig, source: QKDKeySource | None,
                 listen_on: tuple[str, int], accept_timeout: float,
                 on_listening: Callable[[tuple[str, int]], None] | None) -> HandshakeResult:
    give_up = time.monotonic() + accept_timeout
    quiet = _Quiet()
    guard = DoSGuard()
    with contextlib.closing(listen(listen_on, backlog=16)) as server:
        bound = server.getsockname()[:2]  # the port actually used when listen_on asked for port 0
        if on_listening is not None:
            on_listening(bound)
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"no peer completed an exchange on {bound[0]}:{bound[1]} within "
                                     f"{accept_timeout:g} s")
            server.settimeout(remaining)
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                quiet.note(f"accept failed ({type(exc).__name__})")
                time.sleep(0.05)
                continue
            with contextlib.closing(sock):
                conn = Responder(config, guard=guard, source=source_of(sock))
                try:
                    result = run_handshake(sock, conn, source, await_close=True)
                except HybridKexError as exc:
                    if conn.authenticated:
                        raise
                    quiet.note(type(exc).__name__)
                    continue
            settings.after_success(result)
            return result
