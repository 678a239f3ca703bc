"""Who is on the other end: ML-DSA signatures with pinned peers, or a pre-shared key.

An :class:`Authenticator` produces this side's identity blob and transcript tag and checks
the peer's.  Both roles sign or MAC a transcript hash under a role-specific context, so a
tag made by one role never verifies as the other's (no reflection).
"""

from __future__ import annotations

import abc
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from . import _labels
from ._errors import AuthenticationError, ConfigError, NegotiationError, UnknownPeerError
from ._identity import Identity, PublicIdentity, fingerprint
from ._primitives import Backend
from ._state import Role
from ._suites import AUTH_PSK, AUTH_SIG_CODES, auth_name

__all__ = ["Authenticator", "SignatureAuthenticator", "PSKAuthenticator", "PeerInfo", "psk_identity",
           "MIN_PSK_BYTES"]

MIN_PSK_BYTES = 32
PSK_ID_BYTES = 16
#: PSKs an initiator may offer at once (current, previous, bootstrap...)
MAX_PSK_OFFER = 4


@dataclass(frozen=True)
class PeerInfo:
    """The authenticated peer, as shown to users (never secret)."""

    auth: str
    """``ml-dsa-44|65|87`` or ``psk``."""
    fingerprint: str
    """Public-key fingerprint (signature mode) or ``psk:<id hex>`` (PSK mode)."""
    public_key: bytes | None = field(default=None, repr=False)
    psk_id: bytes | None = None
    """PSK mode: the identifier of the pre-shared key both sides used."""


class Authenticator(abc.ABC):
    """One side's authentication: its identity blob, its tag, and the check of the peer's."""

    kind: int

    @property
    def mode(self) -> str:
        return auth_name(self.kind)

    @abc.abstractmethod
    def local_identity(self, peer_identity: bytes | None) -> bytes:
        """Identity blob for our hello; the responder passes the initiator's blob."""

    def accept_key_id(self, offered: bytes, chosen: bytes) -> bytes:
        """Initiator: check the responder's identity against what we offered; return the key id both tags use."""
        return chosen

    @abc.abstractmethod
    def make_tag(self, role: Role, transcript: bytes, key_id: bytes) -> bytes:
        """Sign or MAC ``transcript`` as ``role``.  ``key_id`` names the shared key (PSK mode only):
        the responder's identity blob, which both roles use."""

    @abc.abstractmethod
    def verify_peer(self, kind: int, identity: bytes, role: Role, transcript: bytes, tag: bytes, *,
                    key_id: bytes) -> PeerInfo:
        """Check the peer's tag over ``transcript`` made as ``role``; raise AuthenticationError."""

    def check_kind(self, kind: int) -> None:
        if kind != self.kind:
            raise NegotiationError(f"peer authenticates with {auth_name(kind)} but this side uses {self.mode}; "
                                   "use the same mode on both sides (--peer for ML-DSA, --psk-file for PSK)")

    def local_fingerprint(self) -> str:
        return ""


def _sig_context(role: Role) -> bytes:
    return _labels.SIG_CONTEXT_INITIATOR if role is Role.INITIATOR else _labels.SIG_CONTEXT_RESPONDER


class SignatureAuthenticator(Authenticator):
    """ML-DSA: we sign with our identity; the peer must be one of the pinned public keys."""

    def __init__(self, identity: Identity, peers: Iterable[PublicIdentity], backend: Backend) -> None:
        self.identity = identity
        self.kind = AUTH_SIG_CODES[identity.alg]
        self.peers = tuple(peers)
        if not self.peers:
            raise ConfigError("no peer pinned: give the peer's public key with --peer PEER.pub")
        self._backend = backend
        self._scheme = backend.signature(identity.alg)
        self._signer, public = self._scheme.from_seed(identity.seed)
        if public != identity.public_key:
            raise ConfigError("identity key is inconsistent: its public key does not match its seed")

    def local_identity(self, peer_identity: bytes | None) -> bytes:
        return self.identity.public_key

    def local_fingerprint(self) -> str:
        return self.identity.fingerprint

    def make_tag(self, role: Role, transcript: bytes, key_id: bytes) -> bytes:
        return self._scheme.sign(self._signer, transcript, _sig_context(role))

    def check_kind(self, kind: int) -> None:
        if kind == AUTH_PSK:
            super().check_kind(kind)
        # A peer may use another ML-DSA level than ours: pinning decides.

    def verify_peer(self, kind: int, identity: bytes, role: Role, transcript: bytes, tag: bytes, *,
                    key_id: bytes) -> PeerInfo:
        self.check_kind(kind)
        alg = auth_name(kind)
        pinned = any(p.alg == alg and p.public_key == identity for p in self.peers)
        if not pinned:
            shown = fingerprint(alg, identity) if alg in AUTH_SIG_CODES and self._valid_length(alg, identity) \
                else "(malformed key)"
            raise UnknownPeerError(f"peer key {shown} ({alg}) is not pinned; if you trust it, add its id.pub "
                                      "with --peer")
        if not self._backend.signature(alg).verify(identity, transcript, tag, _sig_context(role)):
            raise AuthenticationError(f"the {role.value}'s signature over the transcript is invalid: "
                                      "the handshake was tampered with or the peer's key is wrong")
        return PeerInfo(alg, fingerprint(alg, identity), identity)

    def _valid_length(self, alg: str, identity: bytes) -> bool:
        return len(identity) == self._backend.signature(alg).sizes.public_key


def psk_identity(psk: bytes) -> bytes:
    """Public identifier of a PSK (lets the responder pick among current and previous keys)."""
    return hashlib.sha256(_labels.PSK_IDENTITY + psk).digest()[:PSK_ID_BYTES]


def _psk_mac_key(psk: bytes, role: Role) -> bytes:
    label = _labels.PSK_MAC_INITIATOR if role is Role.INITIATOR else _labels.PSK_MAC_RESPONDER
    return HKDFExpand(hashes.SHA256(), 32, label).derive(psk)


class PSKAuthenticator(Authenticator):
    """PSK: both sides MAC the transcript with a key derived from a shared secret.

    ``keys`` are the accepted PSKs, newest first.  The initiator offers the identifiers of
    all of them (at most :data:`MAX_PSK_OFFER`); the responder picks the first one it also
    holds and names it in its hello; both tags then use that key.  This is what lets the
    QKD-fed authentication ratchet keep the previous key until the peer proves it has the
    new one, and recover when one side missed an update.
    """

    kind = AUTH_PSK

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("no pre-shared key given: create one with 'hybridkex psk init FILE'")
        if len(keys) > MAX_PSK_OFFER:
            raise ConfigError(f"at most {MAX_PSK_OFFER} pre-shared keys can be offered at once")
        for k in keys:
            if len(k) < MIN_PSK_BYTES:
                raise ConfigError(f"pre-shared key is {len(k)} bytes; it must be at least {MIN_PSK_BYTES} "
                                  "random bytes ('hybridkex psk init FILE' makes one)")
        self._order = [psk_identity(k) for k in keys]
        self._keys = {psk_identity(k): bytes(k) for k in keys}

    @staticmethod
    def _split(blob: bytes) -> list[bytes]:
        if not blob or len(blob) % PSK_ID_BYTES or len(blob) > PSK_ID_BYTES * MAX_PSK_OFFER:
            raise AuthenticationError("malformed PSK identity from the peer")
        return [blob[i:i + PSK_ID_BYTES] for i in range(0, len(blob), PSK_ID_BYTES)]

    def local_identity(self, peer_identity: bytes | None) -> bytes:
        if peer_identity is None:
            return b"".join(self._order)
        for key_id in self._split(peer_identity):
            if key_id in self._keys:
                return key_id
        raise AuthenticationError("peer uses a pre-shared key this side does not have: check that both "
                                  "sides were given the same --psk-file")

    def accept_key_id(self, offered: bytes, chosen: bytes) -> bytes:
        if len(chosen) != PSK_ID_BYTES or chosen not in self._split(offered):
            raise AuthenticationError("responder chose a pre-shared key this side did not offer")
        return chosen

    def local_fingerprint(self) -> str:
        return "psk:" + self._order[0].hex()

    def make_tag(self, role: Role, transcript: bytes, key_id: bytes) -> bytes:
        return hmac.new(_psk_mac_key(self._keys[key_id], role), transcript, hashlib.sha256).digest()

    def verify_peer(self, kind: int, identity: bytes, role: Role, transcript: bytes, tag: bytes, *,
                    key_id: bytes) -> PeerInfo:
        self.check_kind(kind)
        key = self._keys.get(key_id)
        if key is None:
            raise AuthenticationError("peer uses a pre-shared key this side does not have: check that both "
                                      "sides were given the same --psk-file")
        expected = hmac.new(_psk_mac_key(key, role), transcript, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, tag):
            raise AuthenticationError(f"the {role.value}'s PSK MAC over the transcript is invalid: the handshake "
                                      "was tampered with or the pre-shared keys differ")
        return PeerInfo("psk", "psk:" + key_id.hex(), psk_id=key_id)

    def key_for(self, key_id: bytes) -> bytes:
        """The PSK with this identifier (for the authentication ratchet)."""
        return self._keys[key_id]
