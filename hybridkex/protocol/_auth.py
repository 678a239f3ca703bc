"""Who is on the other end: ML-DSA signatures with pinned peers, or a pre-shared key and two names.

An :class:`Authenticator` tags a transcript hash for one purpose (the responder's hello, the
initiator's finish, the responder's fallback) and checks the peer's tag
(``docs/protocol.md`` §5.4).  Signatures cover a label per purpose before the transcript hash; PSK MACs
use a key per purpose derived from the PSK *and both parties' names in role order*, so a tag
made by a node for its peer never verifies at the same node (no reflection: a PSK proves
"a holder of the PSK who believes it is talking to me", not merely "a holder of the PSK").
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .._errors import AuthenticationError, ConfigError, NegotiationError, UnknownPeerError
from ..backends import Backend, SignatureScheme
from . import _labels
from ._catkdf import hmac_digest
from ._identity import Identity, PublicIdentity, fingerprint
from ._record import fast_init
from ._state import Role
from ._suites import AUTH_PSK, AUTH_SIG_CODES, auth_name
from ._wire import BLIND_SIZE, MAX_PSK_OFFER, NO_PSK

__all__ = ["Authenticator", "SignatureAuthenticator", "PSKAuthenticator", "PeerInfo", "Purpose", "psk_identity",
           "MIN_PSK_BYTES", "MAX_NAME_BYTES"]

MIN_PSK_BYTES = 32
MAX_NAME_BYTES = 255
PSK_ID_BYTES = 16


class Purpose(Enum):
    """What a tag is for; each has its own signature context or PSK MAC key."""

    # Members are singletons: hashed by identity (C), not by name (Python), for the look-ups of every tag.
    __hash__ = object.__hash__

    RESPONDER = "responder"
    INITIATOR = "initiator"
    RESPONDER_FALLBACK = "responder fallback"


_SIG_CONTEXT = {Purpose.RESPONDER: _labels.SIG_CONTEXT_RESPONDER, Purpose.INITIATOR: _labels.SIG_CONTEXT_INITIATOR,
                Purpose.RESPONDER_FALLBACK: _labels.SIG_CONTEXT_RESPONDER_FALLBACK}
_PSK_LABEL = {Purpose.RESPONDER: _labels.PSK_MAC_RESPONDER, Purpose.INITIATOR: _labels.PSK_MAC_INITIATOR,
              Purpose.RESPONDER_FALLBACK: _labels.PSK_MAC_RESPONDER_FALLBACK}


@fast_init
@dataclass(frozen=True)
class PeerInfo:
    """The authenticated peer, as shown to users (never secret)."""

    auth: str
    """``ml-dsa-44|65|87`` or ``psk``."""
    fingerprint: str
    """Public-key fingerprint (signature mode) or ``psk:<peer name>`` (PSK mode)."""
    public_key: bytes | None = field(default=None, repr=False)
    name: str | None = None
    """PSK mode: the peer's name, as this side expects it."""
    psk_id: bytes | None = None
    """PSK mode: the local identifier of the pre-shared key both sides used (never sent)."""


def _u16(n: int) -> bytes:
    return struct.pack(">H", n)


def _vec16(data: bytes) -> bytes:
    return _u16(len(data)) + data


class Authenticator(abc.ABC):
    """One side's authentication.  Shared by every connection of that side: per-connection
    state (the PSK both sides picked) travels as an opaque ``key`` argument."""

    kind: int

    @property
    def mode(self) -> str:
        return auth_name(self.kind)

    @abc.abstractmethod
    def responder_static(self, role: Role) -> bytes:
        """The responder's public identity that keys mac1 and the cookie: the initiator's expected
        responder, or the responder's own (§5.5)."""

    @abc.abstractmethod
    def local_identity(self) -> bytes:
        """The identity field of this side's sealed payload (an ML-DSA public key; empty for PSK)."""

    @abc.abstractmethod
    def binding(self, role: Role, peer_identity: bytes) -> tuple[bytes, bytes]:
        """(initiator id, responder id) as bound into the session context (§6.3)."""

    def offer(self, prefix: bytes) -> tuple[bytes, ...]:
        """Initiator: the blinded PSK identifiers for InitHello (none in signature mode)."""
        return ()

    def select(self, prefix: bytes, offered: Sequence[bytes]) -> tuple[int, bytes | None]:
        """Responder: (index of the offered key used, that key); signature mode: (NO_PSK, None)."""
        if offered:
            raise NegotiationError("peer offers pre-shared keys but this side authenticates with ML-DSA")
        return NO_PSK, None

    def accept(self, choice: int) -> bytes | None:
        """Initiator: the key the responder chose (PSK mode); None in signature mode."""
        if choice != NO_PSK:
            raise NegotiationError("responder chose a pre-shared key but this side authenticates with ML-DSA")
        return None

    @abc.abstractmethod
    def make_tag(self, role: Role, key: bytes | None, purpose: Purpose, transcript: bytes) -> bytes:
        """Sign or MAC ``transcript`` for ``purpose`` as ``role``."""

    @abc.abstractmethod
    def verify_peer(self, role: Role, key: bytes | None, purpose: Purpose, identity: bytes, transcript: bytes,
                    tag: bytes) -> PeerInfo:
        """Check the peer's tag (``role`` is this side's); raise AuthenticationError."""

    def check_kind(self, kind: int) -> None:
        if kind != self.kind:
            raise NegotiationError(f"peer authenticates with {auth_name(kind)} but this side uses {self.mode}; "
                                   "use the same mode on both sides (pinned ML-DSA keys, or a pre-shared key)")

    def local_fingerprint(self) -> str:
        return ""


class SignatureAuthenticator(Authenticator):
    """ML-DSA: we sign with our identity; the peer must be one of the pinned public keys.

    An initiator needs to know which responder it expects (its key keys mac1), so it pins
    exactly one, or names it with ``expected``.
    """

    def __init__(self, identity: Identity, peers: Iterable[PublicIdentity], backend: Backend, *,
                 expected: PublicIdentity | None = None) -> None:
        self.identity = identity
        self.kind = AUTH_SIG_CODES[identity.alg]
        self.peers = tuple(peers)
        if not self.peers:
            raise ConfigError("no peer pinned: pass the peer's public key (id.pub) in peers")
        if any(p.public_key == identity.public_key for p in self.peers):
            raise ConfigError("this side's own public key is pinned as a peer; pin the other side's id.pub "
                              "(a node that trusts itself can be connected to itself)")
        if expected is not None and expected not in self.peers:
            raise ConfigError("the expected responder is not among the pinned peers")
        self.expected = expected
        self._backend = backend
        self._scheme = backend.signature(identity.alg)
        self._verifiers: dict[str, SignatureScheme] = {identity.alg: self._scheme}
        self._signer, public = self._scheme.from_seed(identity.seed)
        if public != identity.public_key:
            raise ConfigError("identity key is inconsistent: its public key does not match its seed")

    def responder_static(self, role: Role) -> bytes:
        if role is Role.RESPONDER:
            return self.identity.public_key
        return self.expected_responder().public_key

    def expected_responder(self) -> PublicIdentity:
        if self.expected is not None:
            return self.expected
        if len(self.peers) != 1:
            raise ConfigError(f"{len(self.peers)} peers are pinned, but an initiator must know which responder it "
                              "connects to: pin exactly one responder (its id.pub), or name the expected one")
        return self.peers[0]

    def local_identity(self) -> bytes:
        return self.identity.public_key

    def binding(self, role: Role, peer_identity: bytes) -> tuple[bytes, bytes]:
        own = self.identity.public_key
        return (own, peer_identity) if role is Role.INITIATOR else (peer_identity, own)

    def local_fingerprint(self) -> str:
        return self.identity.fingerprint

    def make_tag(self, role: Role, key: bytes | None, purpose: Purpose, transcript: bytes) -> bytes:
        # Pure ML-DSA with the empty FIPS 204 context string over label || transcript hash: the label
        # separates the purposes, and every ML-DSA API (liboqs's included) can sign and verify it.
        return self._scheme.sign(self._signer, _SIG_CONTEXT[purpose] + transcript, b"")

    def check_kind(self, kind: int) -> None:
        if kind == AUTH_PSK:
            super().check_kind(kind)
        # A peer may use another ML-DSA level than ours: pinning decides.

    def verify_peer(self, role: Role, key: bytes | None, purpose: Purpose, identity: bytes, transcript: bytes,
                    tag: bytes) -> PeerInfo:
        if role is Role.INITIATOR:
            candidates: Sequence[PublicIdentity] = (self.expected_responder(),)
        else:
            candidates = self.peers
        peer = next((p for p in candidates if p.public_key == identity), None)
        if peer is None:
            if identity == self.identity.public_key:
                raise AuthenticationError("the peer presented this side's own public key (a reflected "
                                          "connection); refusing to talk to itself")
            raise UnknownPeerError("the peer's ML-DSA key is not pinned here; if you trust it, pin its id.pub "
                                   f"(it presented {self._shown(identity)})")
        if not self._verifier(peer.alg).verify(identity, _SIG_CONTEXT[purpose] + transcript, tag, b""):
            raise AuthenticationError(f"the {purpose.value} signature over the transcript is invalid: the handshake "
                                      "was tampered with or the peer's key is wrong")
        return PeerInfo(peer.alg, peer.fingerprint, identity)

    def _verifier(self, alg: str) -> SignatureScheme:
        """The backend's scheme for a peer's algorithm, made once per algorithm."""
        scheme = self._verifiers.get(alg)
        if scheme is None:
            scheme = self._verifiers[alg] = self._backend.signature(alg)
        return scheme

    def _shown(self, identity: bytes) -> str:
        for alg in AUTH_SIG_CODES:
            if len(identity) == self._backend.signature(alg).sizes.public_key:
                return f"{fingerprint(alg, identity)} ({alg})"
        return "a malformed key"


def psk_identity(psk: bytes) -> bytes:
    """Local identifier of a PSK (the ratchet finds its keys by it).  Never sent on the wire."""
    return hashlib.sha256(b"hybridkex psk identity" + psk).digest()[:PSK_ID_BYTES]


class PSKAuthenticator(Authenticator):
    """PSK: both sides MAC the transcript with keys derived from a shared secret and both names.

    ``keys`` are the accepted PSKs, newest first.  The initiator offers a blinded identifier
    for each of them (fresh per session, so sessions cannot be linked); the responder picks
    the first of its own keys that matches one; both sides then use that key.  This is what
    lets the QKD-fed authentication ratchet keep the previous key until the peer has proved
    the new one.
    """

    kind = AUTH_PSK

    def __init__(self, keys: Sequence[bytes], *, name: str | None, peer_name: str | None) -> None:
        if not keys:
            raise ConfigError("no pre-shared key given: create one with 'hybridkex psk init FILE'")
        if len(keys) > MAX_PSK_OFFER:
            raise ConfigError(f"at most {MAX_PSK_OFFER} pre-shared keys can be offered at once")
        for k in keys:
            if len(k) < MIN_PSK_BYTES:
                raise ConfigError(f"pre-shared key is {len(k)} bytes; it must be at least {MIN_PSK_BYTES} "
                                  "random bytes ('hybridkex psk init FILE' makes one)")
        if not name or not peer_name:
            raise ConfigError("PSK authentication needs both names: this side's (--name) and the peer's "
                              "(--peer-name); each side uses the other's as its peer name")
        if name == peer_name:
            raise ConfigError(f"--peer-name is this side's own name {name!r}; give the peer's name (a node that "
                              "accepts its own name can be connected to itself)")
        for n in (name, peer_name):
            if len(n.encode()) > MAX_NAME_BYTES:
                raise ConfigError(f"name {n[:20]!r}... is longer than {MAX_NAME_BYTES} bytes")
        self.keys = tuple(bytes(k) for k in keys)
        self.name, self.peer_name = name, peer_name

    def _names(self, role: Role) -> bytes:
        own, peer = self.name.encode(), self.peer_name.encode()
        first, second = (own, peer) if role is Role.INITIATOR else (peer, own)
        return _vec16(first) + _vec16(second)

    def _derive(self, key: bytes, label: bytes, role: Role) -> bytes:
        return hmac_digest(key, label + self._names(role) + b"\x01", "sha256")

    def _blind(self, key: bytes, role: Role, prefix: bytes) -> bytes:
        return hmac_digest(self._derive(key, _labels.PSK_BLIND, role), prefix, "sha256")[:BLIND_SIZE]

    def responder_static(self, role: Role) -> bytes:
        return (self.name if role is Role.RESPONDER else self.peer_name).encode()

    def local_identity(self) -> bytes:
        return b""

    def binding(self, role: Role, peer_identity: bytes) -> tuple[bytes, bytes]:
        own, peer = self.name.encode(), self.peer_name.encode()
        return (own, peer) if role is Role.INITIATOR else (peer, own)

    def offer(self, prefix: bytes) -> tuple[bytes, ...]:
        return tuple(self._blind(k, Role.INITIATOR, prefix) for k in self.keys)

    def select(self, prefix: bytes, offered: Sequence[bytes]) -> tuple[int, bytes | None]:
        if not offered:
            raise NegotiationError("peer authenticates with ML-DSA but this side uses a pre-shared key")
        for key in self.keys:
            mine = self._blind(key, Role.RESPONDER, prefix)
            for index, theirs in enumerate(offered):
                if hmac.compare_digest(mine, theirs):
                    return index, key
        raise UnknownPeerError("the peer offers no pre-shared key this side holds for the expected peer name: "
                               "check that both sides use the same PSK and each other's --name as --peer-name")

    def accept(self, choice: int) -> bytes | None:
        if not 0 <= choice < len(self.keys):
            raise AuthenticationError("responder chose a pre-shared key this side did not offer")
        return self.keys[choice]

    def local_fingerprint(self) -> str:
        return "psk:" + self.name

    def make_tag(self, role: Role, key: bytes | None, purpose: Purpose, transcript: bytes) -> bytes:
        assert key is not None
        return hmac_digest(self._derive(key, _PSK_LABEL[purpose], role), transcript, "sha256")

    def verify_peer(self, role: Role, key: bytes | None, purpose: Purpose, identity: bytes, transcript: bytes,
                    tag: bytes) -> PeerInfo:
        if key is None:
            raise AuthenticationError("no pre-shared key was agreed")
        if identity:
            raise AuthenticationError("the peer sent an ML-DSA identity in a PSK handshake")
        expected = hmac_digest(self._derive(key, _PSK_LABEL[purpose], role), transcript, "sha256")
        if not hmac.compare_digest(expected, tag):
            raise AuthenticationError(f"the {purpose.value} PSK MAC over the transcript is invalid: the handshake "
                                      "was tampered with, the pre-shared keys differ, or the names do not match "
                                      "(each side's --peer-name must be the other's --name)")
        return PeerInfo("psk", "psk:" + self.peer_name, name=self.peer_name, psk_id=psk_identity(key))
