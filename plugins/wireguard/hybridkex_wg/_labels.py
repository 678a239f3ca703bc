"""Every domain-separation label of the WireGuard rotator, in one place.

Changing any of these changes the rotation protocol: bump ``_wire.VERSION``.
"""

from __future__ import annotations

import struct

__all__ = [
    "CONTEXT", "EXPORT_PSK", "EXPORT_CONFIRM", "PROOF_INSTALLED", "TAG_COMMIT", "TAG_DONE",
    "binding", "exchange_context", "psk_label", "confirm_label",
]

#: Prefix of the hybridkex handshake context (HandshakeConfig.context): both sides must agree on it.
CONTEXT = b"hybridkex wireguard v1"
#: Exporter label prefix of the 32-byte WireGuard pre-shared key.
EXPORT_PSK = b"hybridkex wireguard psk v1"
#: Exporter label prefix of the per-epoch confirmation key (MACs of the rotation messages; never a PSK).
EXPORT_CONFIRM = b"hybridkex wireguard confirm v1"
#: MAC labels under the confirmation key.
PROOF_INSTALLED = b"hybridkex wireguard installed v1"
TAG_COMMIT = b"hybridkex wireguard commit v1"
TAG_DONE = b"hybridkex wireguard done v1"


def binding(initiator_public: bytes, responder_public: bytes, epoch: int) -> bytes:
    """What every label of one epoch binds: both WireGuard public keys (by role) and the epoch.

    WireGuard public keys name the tunnel ends independently of local interface names,
    which the two hosts choose separately.
    """
    return initiator_public + responder_public + struct.pack(">Q", epoch)


def exchange_context(initiator_public: bytes, responder_public: bytes, epoch: int) -> bytes:
    """The hybridkex handshake context of one rotation (94 bytes, within the 255-byte limit)."""
    return CONTEXT + binding(initiator_public, responder_public, epoch)


def psk_label(initiator_public: bytes, responder_public: bytes, epoch: int) -> bytes:
    return EXPORT_PSK + binding(initiator_public, responder_public, epoch)


def confirm_label(initiator_public: bytes, responder_public: bytes, epoch: int) -> bytes:
    return EXPORT_CONFIRM + binding(initiator_public, responder_public, epoch)
