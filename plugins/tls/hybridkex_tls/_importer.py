"""The RFC 9258 external PSK importer, and every label and constant the TLS plugin uses.

The hybrid exchange yields a session secret; from it, :func:`imported_psk` derives the
TLS 1.3 external PSK the way RFC 9258 §4.1 imports an external PSK for one target
protocol and KDF::

    struct {
        opaque external_identity<1...2^16-1>;
        opaque context<0..2^16-1>;
        uint16 target_protocol;      /* TLS 1.3: 0x0304 */
        uint16 target_kdf;           /* HKDF_SHA256: 0x0001 */
    } ImportedIdentity;

    epskx = HKDF-Extract(0, epsk)
    ipskx = HKDF-Expand-Label(epskx, "derived psk", Hash(ImportedIdentity), L)

The serialized ImportedIdentity is the PSK identity sent on the wire (RFC 9258 §4.1), so
it must be unique per exchange and public: the external identity is the hybrid
handshake's final transcript hash, which both sides hold and an eavesdropper learns
nothing secret from.  ``epsk`` comes from :meth:`hybridkex.HandshakeResult.export`.

This module is pure (no OpenSSL, no I/O) so it can be tested against the RFC by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridkex import HandshakeResult

__all__ = [
    "psk_from_result",
    "EXCHANGE_CONTEXT", "EPSK_EXPORT_LABEL", "IMPORTER_CONTEXT", "TARGET_PROTOCOL_TLS13", "TARGET_KDF_HKDF_SHA256",
    "PSK_LENGTH", "TLS_CIPHERSUITES", "HYBRID_GROUPS", "ExternalPSK", "imported_identity", "imported_psk",
    "hkdf_extract", "hkdf_expand_label", "importer_context",
]

#: Context of the hybrid exchange that runs before TLS (bound into its key by CatKDF).
EXCHANGE_CONTEXT = b"hybridkex-tls v1"
#: Exporter label for the external PSK ``epsk`` taken from the hybrid session secret.
EPSK_EXPORT_LABEL = b"tls13 external psk"
#: RFC 9258 ImportedIdentity.context: names this integration.
IMPORTER_CONTEXT = b"hybridkex-tls v1 importer"
#: RFC 9258 §3.1: target_protocol is the TLS version code point, TLS 1.3 = 0x0304.
TARGET_PROTOCOL_TLS13 = 0x0304
#: RFC 9258 §3.1 / IANA "TLS KDF Identifiers": HKDF_SHA256 = 0x0001.
TARGET_KDF_HKDF_SHA256 = 0x0001
#: L: the PSK length, the SHA-256 output size.
PSK_LENGTH = 32
#: TLS 1.3 suites whose hash is SHA-256, the hash the imported PSK is bound to (RFC 8446 §4.2.11).
TLS_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
#: The only key-exchange group the hybrid mode accepts: ML-KEM-768 with X25519 (draft-ietf-tls-ecdhe-mlkem).
HYBRID_GROUPS = "X25519MLKEM768"

_HASH_LEN = 32


@dataclass(frozen=True)
class ExternalPSK:
    """A TLS 1.3 external PSK: the identity sent on the wire and the key.  ``repr`` hides the key."""

    identity: bytes
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.identity) <= 0xFFFF:
            raise ValueError("a PSK identity must be 1 to 65535 bytes")
        if not 16 <= len(self.key) <= 512:
            raise ValueError("an external PSK must be 16 to 512 bytes")


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2); an empty salt means HashLen zero bytes."""
    return hmac.new(salt or bytes(_HASH_LEN), ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1)."""
    full_label = b"tls13 " + label
    if not 7 <= len(full_label) <= 255 or len(context) > 255 or not 1 <= length <= 255 * _HASH_LEN:
        raise ValueError("HKDF-Expand-Label argument out of range")
    info = struct.pack(">HB", length, len(full_label)) + full_label + struct.pack(">B", len(context)) + context
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def imported_identity(external_identity: bytes, context: bytes = IMPORTER_CONTEXT, *,
                      target_protocol: int = TARGET_PROTOCOL_TLS13,
                      target_kdf: int = TARGET_KDF_HKDF_SHA256) -> bytes:
    """Serialize an RFC 9258 §3.1 ImportedIdentity."""
    if not 1 <= len(external_identity) <= 0xFFFF or len(context) > 0xFFFF:
        raise ValueError("external_identity must be 1 to 65535 bytes and context at most 65535")
    return (struct.pack(">H", len(external_identity)) + external_identity
            + struct.pack(">H", len(context)) + context
            + struct.pack(">HH", target_protocol, target_kdf))


def importer_context(transcript_hash: bytes, client_identity: str, server_identity: str) -> bytes:
    """RFC 9258 §3.1 ImportedIdentity.context for one hybrid exchange.

    RFC 9258 §4.1 says the context must carry the deriving protocol's channel binding and
    recommends the roles and identities: this is :data:`IMPORTER_CONTEXT`, the hybrid
    transcript hash, then the TLS client's and the TLS server's hybridkex identities (key
    fingerprints or ``psk:<id>``), each with a 16-bit length.
    """
    parts = [transcript_hash, client_identity.encode("utf-8"), server_identity.encode("utf-8")]
    out = IMPORTER_CONTEXT
    for part in parts:
        if len(part) > 0xFFFF:
            raise ValueError("an importer context field is longer than 65535 bytes")
        out += struct.pack(">H", len(part)) + part
    return out


def imported_psk(epsk: bytes, external_identity: bytes, context: bytes = IMPORTER_CONTEXT) -> ExternalPSK:
    """Import ``epsk`` for TLS 1.3 with HKDF-SHA256 (RFC 9258 §4.1): the wire identity and ``ipskx``."""
    if len(epsk) < 16:
        raise ValueError("epsk must be at least 16 bytes")
    identity = imported_identity(external_identity, context)
    epskx = hkdf_extract(b"", epsk)
    ipskx = hkdf_expand_label(epskx, b"derived psk", hashlib.sha256(identity).digest(), PSK_LENGTH)
    return ExternalPSK(identity, ipskx)


def psk_from_result(result: HandshakeResult) -> tuple[ExternalPSK, dict[str, object]]:
    """The TLS external PSK for a finished hybrid exchange (RFC 9258 import) and its summary.

    The importer's context binds the hybrid transcript hash and both identities (TLS client first).
    """
    epsk = result.export(EPSK_EXPORT_LABEL, PSK_LENGTH)
    local, peer = result.local_fingerprint, result.peer.fingerprint
    client, server = (local, peer) if result.role == "initiator" else (peer, local)
    context = importer_context(result.transcript_hash, client, server)
    return imported_psk(epsk, result.transcript_hash, context), result.summary()
