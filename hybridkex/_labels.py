"""Every domain-separation label and context string hybridkex uses, in one place.

Changing any of these changes the protocol: bump ``PROTOCOL_VERSION`` in ``_wire``.
"""

from __future__ import annotations

__all__ = [
    "CATKDF_CONTEXT_HANDSHAKE", "CATKDF_CONTEXT_SESSION",
    "CATKDF_LABEL_HANDSHAKE", "CATKDF_LABEL_SESSION",
    "KEY_RESP_CONFIRM", "KEY_INIT_CONFIRM", "KEY_FINISH_CONFIRM", "KEY_EXPORTER",
    "SIG_CONTEXT_RESPONDER", "SIG_CONTEXT_INITIATOR",
    "PSK_MAC_RESPONDER", "PSK_MAC_INITIATOR", "PSK_IDENTITY",
    "EXPORT_EXCHANGE_KEY", "EXPORT_AUTH_RATCHET", "KEY_FINGERPRINT", "TRANSCRIPT",
]

# CatKDF (ETSI TS 103 744 §8.2) context and label (salt).  The handshake stage has an
# empty psk slot: it proves possession of the X25519 and ML-KEM secrets before any QKD
# key is consumed.  The session stage puts the QKD key in the psk slot.
CATKDF_CONTEXT_HANDSHAKE = b"hybridkex v1 handshake"
CATKDF_CONTEXT_SESSION = b"hybridkex v1 session"
CATKDF_LABEL_HANDSHAKE = b"hybridkex v1 catkdf handshake salt"
CATKDF_LABEL_SESSION = b"hybridkex v1 catkdf session salt"

# HKDF-Expand labels below a CatKDF output.
KEY_RESP_CONFIRM = b"hybridkex v1 responder confirm"
KEY_INIT_CONFIRM = b"hybridkex v1 initiator confirm"
KEY_FINISH_CONFIRM = b"hybridkex v1 finished confirm"
KEY_EXPORTER = b"hybridkex v1 exporter"

# ML-DSA context strings (FIPS 204 §5.2): a signature made by one role never verifies as the other's.
SIG_CONTEXT_RESPONDER = b"hybridkex v1 responder signature"
SIG_CONTEXT_INITIATOR = b"hybridkex v1 initiator signature"

# PSK authentication: HMAC keys derived from the PSK, one per role; and the PSK's public identifier.
PSK_MAC_RESPONDER = b"hybridkex v1 psk mac responder"
PSK_MAC_INITIATOR = b"hybridkex v1 psk mac initiator"
PSK_IDENTITY = b"hybridkex v1 psk identity"

# The QKD-fed authentication ratchet: the next PSK is this export of the session secret.
EXPORT_AUTH_RATCHET = b"hybridkex auth ratchet next psk"

# Exporter labels used by the core.  Plugins choose their own labels (e.g. "wireguard psk").
EXPORT_EXCHANGE_KEY = b"hybridkex exchange key"

# Hashes shown to people: key fingerprints and transcript hashes.
KEY_FINGERPRINT = b"hybridkex v1 key fingerprint"
TRANSCRIPT = b"hybridkex v1 transcript"
