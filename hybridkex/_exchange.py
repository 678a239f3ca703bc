"""One call from settings to a confirmed key: the library behind ``hybridkex exchange``.

Plugins use :func:`exchange_over_socket` on a socket they already hold (the TLS wrapper
runs it before TLS; the WireGuard rotator per peer).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Literal

from ._config import ExchangeSettings
from ._errors import TransportError
from ._handshake import HandshakeConfig, HandshakeResult, Initiator, Responder
from ._transport import connect, listen, run_handshake
from .qkd._source import QKDKeySource

__all__ = ["exchange_over_socket", "exchange"]

Role = Literal["initiator", "responder"]


def exchange_over_socket(sock: socket.socket, role: Role, settings: ExchangeSettings | HandshakeConfig, *,
                         context: bytes = b"", qkd_source: QKDKeySource | None = None,
                         await_close: bool = False) -> HandshakeResult:
    """Run one handshake as ``role`` over a connected socket.

    With ``settings`` an :class:`ExchangeSettings`, keys and the QKD source are loaded from
    it (the source is closed afterwards unless one was passed in).
    """
    own_source = False
    if isinstance(settings, ExchangeSettings):
        config = settings.handshake_config(context=context)
        if qkd_source is None:
            qkd_source = settings.open_qkd_source()
            own_source = qkd_source is not None
    else:
        config = settings
    try:
        conn = Initiator(config) if role == "initiator" else Responder(config)
        result = run_handshake(sock, conn, qkd_source, await_close=await_close)
        if isinstance(settings, ExchangeSettings):
            settings.after_success(result)
        return result
    finally:
        if own_source and qkd_source is not None:
            qkd_source.close()


def exchange(settings: ExchangeSettings, *, listen_on: tuple[str, int] | None = None,
             connect_to: tuple[str, int] | None = None, context: bytes = b"", accept_timeout: float = 300.0,
             connect_retry: float = 10.0,
             on_listening: Callable[[tuple[str, int]], None] | None = None) -> HandshakeResult:
    """Listen for one peer (responder) or connect to one (initiator) and run the handshake."""
    if (listen_on is None) == (connect_to is None):
        raise ValueError("give exactly one of listen_on and connect_to")
    config = settings.handshake_config(context=context)  # load keys before touching the network
    source = settings.open_qkd_source()
    try:
        if connect_to is not None:
            with contextlib.closing(connect(connect_to, timeout=settings.timeout, retry_for=connect_retry)) as sock:
                result = exchange_over_socket(sock, "initiator", config, qkd_source=source)
            settings.after_success(result)
            return result
        assert listen_on is not None
        with contextlib.closing(listen(listen_on, backlog=1)) as server:
            server.settimeout(accept_timeout)
            if on_listening is not None:
                on_listening(server.getsockname()[:2])
            try:
                sock, _ = server.accept()
            except TimeoutError:
                raise TransportError(f"no peer connected to {listen_on[0]}:{listen_on[1]} within "
                                     f"{accept_timeout:g} s") from None
            with contextlib.closing(sock):
                result = exchange_over_socket(sock, "responder", config, qkd_source=source, await_close=True)
            settings.after_success(result)
            return result
    finally:
        if source is not None:
            source.close()
