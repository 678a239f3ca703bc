"""Errors of the TLS layer, under the hybridkex error root.

They are also :class:`OSError` subclasses, as :class:`ssl.SSLError` is, so code written
for ``ssl`` sockets that catches ``OSError`` keeps working.  Messages say what failed and
what to do; they never contain key material (OpenSSL's reason strings do not either).
"""

from __future__ import annotations

from hybridkex import AuthenticationError, HybridKexError, RemoteProtocolError, TransportError

__all__ = ["TLSError", "TLSHandshakeError", "TLSPSKError", "TLSConnectionClosed", "TLSUnavailable"]


class TLSError(HybridKexError, OSError):
    """Root of the TLS layer's errors: a TLS record or alert problem on an established connection."""


class TLSHandshakeError(TLSError, RemoteProtocolError):
    """The TLS 1.3 handshake that follows the hybrid exchange failed (alert, protocol error, wrong group)."""


class TLSPSKError(TLSHandshakeError, AuthenticationError):
    """The external PSK was not used: the peer derived a different PSK, offered another identity, or none."""


class TLSConnectionClosed(TLSHandshakeError, TransportError):
    """The peer closed the connection during the TLS handshake."""


class TLSUnavailable(HybridKexError):
    """The OpenSSL reached through pyOpenSSL lacks a function or group this plugin needs."""
