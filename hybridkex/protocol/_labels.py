"""Every domain-separation label and context string hybridkex uses, in one place.

Changing any of these changes the protocol: bump ``PROTOCOL_VERSION`` in ``_wire`` and the
label table in ``docs/protocol.md`` (§6.1).  Every internal label starts with
:data:`RESERVED_PREFIX`; :meth:`HandshakeResult.export` refuses application labels that do.
"""

from __future__ import annotations

__all__ = [
    "RESERVED_PREFIX",
    "CATKDF_CONTEXT_HANDSHAKE", "CATKDF_CONTEXT_SESSION", "CATKDF_LABEL_HANDSHAKE", "CATKDF_LABEL_SESSION",
    "KEY_RESP_HELLO", "KEY_INIT_FINISH", "KEY_RESP_FINISH", "KEY_INIT_CONFIRM",
    "SECRET_INIT_FINISHED", "SECRET_RESP_FINISHED", "SECRET_INIT_CONFIRM",
    "SECRET_APPLICATION", "SECRET_RATCHET", "SECRET_EXCHANGE_KEY", "EXPORTER", "RATCHET_NEXT_PSK",
    "SIG_CONTEXT_RESPONDER", "SIG_CONTEXT_INITIATOR", "SIG_CONTEXT_RESPONDER_FALLBACK",
    "PSK_MAC_RESPONDER", "PSK_MAC_INITIATOR", "PSK_MAC_RESPONDER_FALLBACK", "PSK_BLIND",
    "MAC1", "COOKIE", "TRANSCRIPT", "KEY_FINGERPRINT",
]

#: Every label below starts with this; application exporter labels must not.
RESERVED_PREFIX = b"hybridkex v2 "

# CatKDF (ETSI TS 103 744 §8.2) contexts and labels (the salt).  The handshake stage has an
# empty psk slot: it encrypts identities and proves possession of the X25519 and ML-KEM
# secrets before any QKD key is consumed.  The session stage puts the QKD key in the psk slot.
CATKDF_CONTEXT_HANDSHAKE = b"hybridkex v2 handshake"
CATKDF_CONTEXT_SESSION = b"hybridkex v2 session"
CATKDF_LABEL_HANDSHAKE = b"hybridkex v2 catkdf handshake salt"
CATKDF_LABEL_SESSION = b"hybridkex v2 catkdf session salt"

# AEAD keys (ChaCha20-Poly1305) for the sealed part of each message, expanded from the handshake secret.
KEY_RESP_HELLO = b"hybridkex v2 resp hello key"
KEY_INIT_FINISH = b"hybridkex v2 init finish key"
KEY_RESP_FINISH = b"hybridkex v2 resp finish key"
KEY_INIT_CONFIRM = b"hybridkex v2 init confirm key"

# Secrets expanded from the session secret: each use has its own, so no label reaches another's.
SECRET_INIT_FINISHED = b"hybridkex v2 init finished"
SECRET_RESP_FINISHED = b"hybridkex v2 resp finished"
SECRET_INIT_CONFIRM = b"hybridkex v2 init confirm"
SECRET_APPLICATION = b"hybridkex v2 application secret"
SECRET_RATCHET = b"hybridkex v2 ratchet secret"
SECRET_EXCHANGE_KEY = b"hybridkex v2 exchange key"

# The application exporter (below SECRET_APPLICATION) and the ratchet's next PSK (below SECRET_RATCHET).
EXPORTER = b"hybridkex v2 exporter"
RATCHET_NEXT_PSK = b"hybridkex v2 ratchet next psk"

# ML-DSA message prefixes (signed as label || transcript hash with the empty FIPS 204 context string):
# a signature made for one purpose never verifies for another.
SIG_CONTEXT_RESPONDER = b"hybridkex v2 responder signature"
SIG_CONTEXT_INITIATOR = b"hybridkex v2 initiator signature"
SIG_CONTEXT_RESPONDER_FALLBACK = b"hybridkex v2 responder fallback signature"

# PSK authentication: MAC keys derived from the PSK and both names, one per role and purpose;
# and the key that blinds the PSK identifier per session.
PSK_MAC_RESPONDER = b"hybridkex v2 psk mac responder"
PSK_MAC_INITIATOR = b"hybridkex v2 psk mac initiator"
PSK_MAC_RESPONDER_FALLBACK = b"hybridkex v2 psk mac responder fallback"
PSK_BLIND = b"hybridkex v2 psk blind"

# Denial-of-service defences (after WireGuard's MAC1 and cookie reply).
MAC1 = b"hybridkex v2 mac1"
COOKIE = b"hybridkex v2 cookie"

# Hashes: the transcript, and key fingerprints shown to people.
TRANSCRIPT = b"hybridkex v2 transcript"
KEY_FINGERPRINT = b"hybridkex v2 key fingerprint"
