"""The hybridkex protocol, sans-I/O: state machines, wire codec, key schedule, labels, authentication.

Nothing here opens a socket or a file: bytes and events go in, bytes and events come out
(``docs/protocol.md`` is the specification).  The adapters in :mod:`hybridkex.io` drive it
over sockets; :func:`hybridkex.exchange` puts both together.
"""

from . import _labels as labels
from ._auth import Authenticator, PeerInfo, PSKAuthenticator, SignatureAuthenticator, psk_identity
from ._catkdf import catkdf
from ._dos import DoSGuard
from ._handshake import (
    Connection,
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
from ._identity import Identity, PublicIdentity, fingerprint, generate_identity
from ._state import Role
from ._suites import QKD_POLICIES, SUITES, Suite, suites_for_kem
from ._wire import HEADER_SIZE, MAGIC, MAX_BODY_SIZE, Alert, AlertCode, decode, parse_header

__all__ = [
    "HandshakeConfig", "Initiator", "Responder", "Connection", "HandshakeResult", "QKDOutcome", "Event",
    "SendMessage", "NeedQKDKeys", "NeedChannelConfirmation", "HandshakeComplete", "key_fingerprint",
    "Authenticator", "SignatureAuthenticator", "PSKAuthenticator", "PeerInfo", "psk_identity",
    "Identity", "PublicIdentity", "generate_identity", "fingerprint",
    "DoSGuard", "Role", "Suite", "SUITES", "QKD_POLICIES", "suites_for_kem", "catkdf", "labels",
    "HEADER_SIZE", "MAGIC", "MAX_BODY_SIZE", "Alert", "AlertCode", "decode", "parse_header",
]
