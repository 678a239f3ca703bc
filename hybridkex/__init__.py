"""hybridkex: a key exchange that mixes a QKD key with ML-KEM and X25519 shares.

The three inputs go through the ETSI TS 103 744 CatKDF combiner; the exchange is
authenticated with ML-DSA signatures or a pre-shared key.  The derived key stays secret
while any one of the three inputs does.

What applications use is here: :class:`ExchangeSettings` and :func:`exchange`, the
:class:`HandshakeResult`, the errors, identities, the QKD key source interface and
:func:`catkdf`.  The sans-I/O protocol is :mod:`hybridkex.protocol`, the adapters that plugins
build on are :mod:`hybridkex.io`, crypto backends :mod:`hybridkex.backends`, QKD sources and
their registry :mod:`hybridkex.qkd`.
"""

from ._config import ExchangeSettings, load_psk_file
from ._errors import (
    AuthenticationError,
    BackendUnavailable,
    ConfigError,
    ContextMismatch,
    HandshakeTimeout,
    HybridKexError,
    KMEError,
    LocalProtocolError,
    NegotiationError,
    PeerAlertError,
    QKDError,
    QKDKeyReplay,
    QKDLinkAborted,
    QKDPolicyError,
    QKDSourceMissing,
    QKDUnavailable,
    RemoteProtocolError,
    TransportError,
    UnknownPeerError,
    UnverifiedMessage,
)
from ._exchange import exchange, exchange_over_socket
from ._identity import load_identity, load_public_identity, write_identity
from ._ratchet import init_ratchet
from .protocol import HandshakeResult, Identity, PublicIdentity, QKDOutcome, catkdf, generate_identity
from .qkd import QKDKey, QKDKeySource

__version__ = "0.1.0"

__all__ = [
    "ExchangeSettings", "exchange", "exchange_over_socket", "HandshakeResult", "QKDOutcome", "load_psk_file",
    "init_ratchet", "Identity", "PublicIdentity", "generate_identity", "load_identity", "load_public_identity",
    "write_identity", "QKDKey", "QKDKeySource", "catkdf",
    "HybridKexError", "ConfigError", "LocalProtocolError", "RemoteProtocolError", "PeerAlertError",
    "AuthenticationError", "UnknownPeerError", "NegotiationError", "ContextMismatch", "HandshakeTimeout",
    "TransportError", "BackendUnavailable",
    "QKDError", "QKDUnavailable", "QKDKeyReplay", "QKDPolicyError", "QKDLinkAborted", "QKDSourceMissing", "KMEError",
    "UnverifiedMessage",
]
