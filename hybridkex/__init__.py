"""hybridkex: a key exchange that mixes a QKD key with ML-KEM and X25519 shares.

The three inputs go through the ETSI TS 103 744 CatKDF combiner; the exchange is
authenticated with ML-DSA signatures or a pre-shared key.  The derived key stays secret
while any one of the three inputs does.
"""

from ._auth import Authenticator, PeerInfo, PSKAuthenticator, SignatureAuthenticator, psk_identity
from ._catkdf import catkdf
from ._config import ExchangeSettings, load_psk_file
from ._dos import DoSGuard
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
from ._files import atomic_write, write_key_file
from ._handshake import (
    Event,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeResult,
    Initiator,
    NeedChannelConfirmation,
    NeedQKDKeys,
    QKDOutcome,
    Responder,
    SendMessage,
    key_fingerprint,
)
from ._identity import Identity, PublicIdentity, generate_identity, load_identity, load_public_identity, write_identity
from ._primitives import available_backends, get_backend
from ._ratchet import AuthRatchet, init_ratchet
from ._suites import SUITES, Suite
from ._transport import connect, listen, parse_address, recv_exact, run_handshake, run_handshake_async, send_all
from .qkd import QKDKey, QKDKeySource

__version__ = "0.1.0"

__all__ = [
    "catkdf",
    "ExchangeSettings", "load_psk_file", "exchange", "exchange_over_socket",
    "HandshakeConfig", "Initiator", "Responder", "HandshakeResult", "QKDOutcome", "Event", "SendMessage",
    "NeedQKDKeys", "NeedChannelConfirmation", "HandshakeComplete", "DoSGuard", "AuthRatchet", "init_ratchet",
    "key_fingerprint", "run_handshake", "run_handshake_async",
    "connect", "listen", "parse_address", "recv_exact", "send_all",
    "Authenticator", "SignatureAuthenticator", "PSKAuthenticator", "PeerInfo", "psk_identity",
    "Identity", "PublicIdentity", "generate_identity", "load_identity", "load_public_identity", "write_identity",
    "get_backend", "available_backends", "Suite", "SUITES", "QKDKey", "QKDKeySource",
    "atomic_write", "write_key_file",
    "HybridKexError", "ConfigError", "LocalProtocolError", "RemoteProtocolError", "PeerAlertError",
    "AuthenticationError", "UnknownPeerError", "NegotiationError", "ContextMismatch", "HandshakeTimeout",
    "TransportError", "BackendUnavailable",
    "QKDError", "QKDUnavailable", "QKDKeyReplay", "QKDPolicyError", "QKDLinkAborted", "QKDSourceMissing", "KMEError",
    "UnverifiedMessage",
]
