"""The responder's DoS guard as the socket adapters share it: one per process, keyed by the peer's host."""

from __future__ import annotations

import socket

from ..protocol._dos import DoSGuard

__all__ = ["default_guard", "source_of", "peer_source"]

_GUARD: DoSGuard | None = None


def default_guard() -> DoSGuard:
    """The process-wide guard responders use when given none (replay cache, cookies, rate limits)."""
    global _GUARD
    if _GUARD is None:
        _GUARD = DoSGuard()
    return _GUARD


def peer_source(peername: object) -> bytes:
    """A peer's address (``getpeername()``, asyncio's ``"peername"``) as the guard keys it: the host, not
    the port (one host, one budget); empty when there is none."""
    if isinstance(peername, (tuple, list)) and peername:
        return str(peername[0]).encode()
    return b""


def source_of(sock: socket.socket) -> bytes:
    """:func:`peer_source` of a connected socket."""
    try:
        return peer_source(sock.getpeername())
    except OSError:
        return b""
