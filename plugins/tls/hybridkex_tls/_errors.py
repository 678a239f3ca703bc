"""Errors of the TLS layer, under the hybridkex error root.

Every error a connection's setup raises is also an :class:`OSError` (as :class:`ssl.SSLError`
is) and a timeout is also a :class:`TimeoutError`, so code written for ``ssl`` sockets --
``except OSError``, urllib3's retries, ``requests.RequestException`` -- handles them.
Errors of the core (:class:`hybridkex.AuthenticationError`, :class:`hybridkex.HandshakeTimeout`,
...) are re-raised as :func:`as_oserror` subclasses that keep the core class too.  Messages
say what failed and what to do; they never contain key material.
"""

from __future__ import annotations

import threading

from hybridkex import AuthenticationError, HandshakeTimeout, HybridKexError, RemoteProtocolError, TransportError

__all__ = [
    "TLSError", "TLSHandshakeError", "TLSPSKError", "TLSConnectionClosed", "TLSUnavailable", "TLSSetupError",
    "TLSSetupTimeout", "TLSResumptionRefused", "TLSWrongService", "as_oserror",
]


class TLSError(HybridKexError, OSError):
    """Root of the TLS layer's errors: a TLS record or alert problem on an established connection."""


class TLSSetupError(TLSError):
    """The connection's setup (hybrid exchange or TLS handshake) failed."""


class TLSSetupTimeout(TLSSetupError, HandshakeTimeout, TimeoutError):
    """The setup did not finish within its deadline (or the pre-authentication timeout)."""


class TLSHandshakeError(TLSSetupError, RemoteProtocolError):
    """The TLS 1.3 handshake that follows the hybrid exchange failed (alert, protocol error, wrong group)."""


class TLSPSKError(TLSHandshakeError, AuthenticationError):
    """The external PSK was not used: the peer derived a different PSK, offered another identity, or none."""


class TLSConnectionClosed(TLSHandshakeError, TransportError):
    """The peer closed the connection during the TLS handshake."""


class TLSResumptionRefused(TLSHandshakeError):
    """The server did not resume the cached TLS session; the cache entry is dropped, connect again."""


class TLSWrongService(TLSSetupError, RemoteProtocolError):
    """The peer speaks another protocol here (plain TLS, HTTP), not hybridkex-tls."""


class TLSUnavailable(HybridKexError):
    """The OpenSSL reached through pyOpenSSL lacks a function or group this plugin needs."""


_derived: dict[type[BaseException], type[BaseException]] = {}
_derived_lock = threading.Lock()


def as_oserror(exc: BaseException) -> BaseException:
    """``exc`` (a core error) as an instance of a subclass of its class and :class:`TLSSetupError`.

    Timeouts also become :class:`TimeoutError`.  The message is kept; errors that already are
    :class:`OSError` and non-hybridkex errors come back unchanged.
    """
    if isinstance(exc, OSError) or not isinstance(exc, HybridKexError):
        return exc
    cls = type(exc)
    with _derived_lock:
        derived = _derived.get(cls)
        if derived is None and cls is HandshakeTimeout:
            derived = TLSSetupTimeout
        if derived is None:
            bases: tuple[type, ...] = (cls, TLSSetupTimeout) if isinstance(exc, HandshakeTimeout) \
                else (cls, TLSSetupError)
            derived = _derived[cls] = type(cls.__name__, bases, {"__module__": cls.__module__,
                                                                  "__doc__": cls.__doc__})
    new = derived.__new__(derived)
    new.args = (str(exc),)
    new.__dict__.update(getattr(exc, "__dict__", {}))
    return new
