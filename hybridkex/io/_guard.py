"""The responder's DoS guard as the socket adapters share it: one per process, keyed by the peer's host."""

from __future__ import annotations

import socket

from ..protocol._dos import DoSGuard

__all__ = ["default_guard", "source_of"]

_GUARD: DoSGuard | None = None


def default_guard() -> DoSGuard:
    """The process-wide guard responders use when given none (replay cache, cookies, rate limits)."""
    global _GUARD
    if _GUARD is None:
        _GUARD = DoSGuard()
    return _GUARD


def source_of(sock: socket.socket) -> bytes:
    """The peer's address as the guard keys it (the host, not the port: one host, one budget)."""
    try:
        return str(sock.getpeername()[0]).encode()
    except (OSError, IndexError):
        return b""
