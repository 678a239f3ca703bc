"""The RFC 9258 importer and the TLS 1.3 HKDF helpers it is built from."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from hybridkex_tls import ExternalPSK, imported_identity, imported_psk
from hybridkex_tls._importer import (
    IMPORTER_CONTEXT,
    TARGET_KDF_HKDF_SHA256,
    TARGET_PROTOCOL_TLS13,
    hkdf_expand_label,
    hkdf_extract,
)

# RFC 8448 §3 (Simple 1-RTT Handshake), https://www.rfc-editor.org/rfc/rfc8448#section-3:
# the early secret HKDF-Extract(0, 0) and Derive-Secret(early, "derived", "").
RFC8448_EARLY_SECRET = "33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a"
RFC8448_DERIVED = "6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba"


def test_hkdf_helpers_match_rfc8448() -> None:
    early = hkdf_extract(b"", bytes(32))
    assert early.hex() == RFC8448_EARLY_SECRET
    assert hkdf_expand_label(early, b"derived", hashlib.sha256(b"").digest(), 32).hex() == RFC8448_DERIVED


@pytest.mark.parametrize("length", [1, 32, 33, 64, 100])
def test_hkdf_expand_label_matches_cryptography(length: int) -> None:
    secret, context = bytes(range(32)), b"ctx"
    info = struct.pack(">HB", length, 6 + 7) + b"tls13 derived" + bytes([len(context)]) + context
    expected = HKDFExpand(hashes.SHA256(), length, info).derive(secret)
    assert hkdf_expand_label(secret, b"derived", context, length) == expected


def test_imported_identity_layout() -> None:
    identity = imported_identity(b"\xaa" * 32, b"ctx")
    assert identity == (b"\x00\x20" + b"\xaa" * 32 + b"\x00\x03ctx" + b"\x03\x04" + b"\x00\x01")
    assert (TARGET_PROTOCOL_TLS13, TARGET_KDF_HKDF_SHA256) == (0x0304, 0x0001)


def test_imported_psk_follows_rfc9258_section_4_1() -> None:
    epsk, external = bytes(range(32)), b"\x01" * 32
    psk = imported_psk(epsk, external)
    identity = imported_identity(external, IMPORTER_CONTEXT)
    assert psk.identity == identity
    # An independent computation: epskx = HKDF-Extract(0, epsk) through cryptography's HKDF.
    epskx = hmac.new(bytes(32), epsk, hashlib.sha256).digest()
    label = b"tls13 derived psk"
    context = hashlib.sha256(identity).digest()
    info = struct.pack(">HB", 32, len(label)) + label + bytes([len(context)]) + context
    assert psk.key == HKDFExpand(hashes.SHA256(), 32, info).derive(epskx)
    # Extract-then-expand in one call gives the same result.
    assert psk.key == HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(epsk)


def test_every_input_changes_the_psk() -> None:
    base = imported_psk(b"k" * 32, b"id")
    assert imported_psk(b"j" * 32, b"id").key != base.key
    other_id = imported_psk(b"k" * 32, b"id2")
    assert other_id.key != base.key and other_id.identity != base.identity
    other_context = imported_psk(b"k" * 32, b"id", b"another integration")
    assert other_context.key != base.key


def test_external_psk_hides_the_key() -> None:
    psk = ExternalPSK(b"id", b"\x42" * 32)
    assert "42" not in repr(psk) and "B" * 4 not in repr(psk)
    with pytest.raises(ValueError):
        ExternalPSK(b"", b"k" * 32)
    with pytest.raises(ValueError):
        ExternalPSK(b"id", b"short")
    with pytest.raises(ValueError):
        imported_psk(b"short", b"id")
