"""One error root for everything hybridkex raises.

Rule: every message says what went wrong and what to do about it, and no
message ever contains key material.  Crypto failures carry no detail beyond
"which check failed", so they leak nothing an attacker could use.
"""

from __future__ import annotations

__all__ = [
    "HybridKexError",
    "ConfigError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "PeerAlertError",
    "AuthenticationError",
    "UnknownPeerError",
    "NegotiationError",
    "ContextMismatch",
    "HandshakeTimeout",
    "TransportError",
    "BackendUnavailable",
    "QKDError",
    "QKDUnavailable",
    "QKDKeyReplay",
    "QKDPolicyError",
    "QKDLinkAborted",
    "QKDSourceMissing",
    "UnverifiedMessage",
    "KMEAnswer",
    "KMEError",
]


class HybridKexError(Exception):
    """Root of every error hybridkex raises on purpose."""


class ConfigError(HybridKexError):
    """A file, flag or argument given by the user is wrong (bad path, bad mode, bad format)."""


class LocalProtocolError(HybridKexError):
    """This side misused the API (e.g. sent a message in the wrong state)."""


class RemoteProtocolError(HybridKexError):
    """The peer broke the protocol: malformed, truncated, oversized or out-of-order message."""


class PeerAlertError(RemoteProtocolError):
    """The peer aborted the handshake and told us why with an alert."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UnverifiedMessage(RemoteProtocolError):
    """A first message that does not prove knowledge of the responder's public identity (mac1),
    is stale, replayed or over a rate limit: dropped without a reply and without public-key work."""


class AuthenticationError(RemoteProtocolError):
    """The peer could not be authenticated (unpinned key, bad signature, wrong PSK, bad confirmation)."""


class UnknownPeerError(AuthenticationError):
    """The peer's public key is not among the pinned ones."""


class NegotiationError(RemoteProtocolError):
    """The two sides share no acceptable suite, auth mode or QKD policy."""


class ContextMismatch(NegotiationError):
    """The two sides run different applications over hybridkex (their contexts differ)."""


class HandshakeTimeout(HybridKexError):
    """The handshake did not finish before its deadline."""


class TransportError(HybridKexError):
    """The connection failed: refused, reset, closed early, or timed out."""


class BackendUnavailable(HybridKexError):
    """A requested crypto backend or algorithm is not available on this machine."""


class QKDError(HybridKexError):
    """Root of QKD key-source errors."""


class QKDUnavailable(QKDError):
    """The QKD key source could not deliver a key (KME down, pool empty, link aborted on high QBER)."""


class QKDLinkAborted(QKDUnavailable):
    """The QKD link aborted key generation: its error rate (QBER) points to an eavesdropper."""


class QKDSourceMissing(QKDUnavailable):
    """No QKD key source is configured, or it could not be opened (missing or unreadable link file)."""


class QKDKeyReplay(QKDError):
    """A QKD key_ID was offered that has already been consumed."""


class QKDPolicyError(QKDError):
    """QKD policy forbids going on (e.g. policy 'required' but no QKD key could be had)."""


class KMEAnswer(Exception):
    """Carries what a KME answered (ETSI GS QKD 014 §5: status, and the body's message/details)."""

    def __init__(self, message: str, *, status: int | None = None,
                 kme_message: str | None = None, details: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.kme_message = kme_message
        self.details = details


class KMEError(KMEAnswer, QKDUnavailable):
    """The KME answered with an error (ETSI GS QKD 014 §5: 400, 401, 503 with message/details)."""
