"""The hybridkex handshake, wire version 2, as sans-I/O state machines (``docs/protocol.md``).

Four messages, two round trips (five when the responder falls back without QKD)::

    Initiator                                              Responder
    InitHello  (timestamp, nonce, suites, X25519 pk, ML-KEM ek, QKD policy, context,
                blinded PSK ids, mac1, mac2)                    ->
                                 [mac1, cookie, replay and rate checks before public-key work]
           <-  RespHello (nonce, suite, X25519 pk, ML-KEM ct, QKD policy,
                          sealed{identity, signature|MAC})
    [master SAE: fetch a fresh QKD key (ETSI 014 enc_keys), after authenticating the responder]
    InitFinish (sealed{identity, QKD block: SAE IDs, key size, key_IDs; signature|MAC;
                       confirmation under the final session secret})  ->
                                 [slave SAE: fetch the QKD key by key_ID, after authenticating
                                  the initiator; check the initiator's final confirmation]
           <-  RespFinish (sealed{outcome, confirmation under the final session secret})
    [fallback only: RespFinish carries a signature|MAC over "no QKD key here", and
     InitConfirm (sealed{confirmation under the fallback secret}) ->  ends the exchange]

The X25519 and ML-KEM secrets give a *handshake secret* (CatKDF with an empty psk) that
seals everything naming a party; the *session secret* is CatKDF with psk := QKD key,
k1 := X25519, k2 := ML-KEM, MA := InitHello || the initiator's payload, MB := RespHello's
public part || the responder's payload, and a context that binds both identities and the
QKD block (SAE IDs, key size, key_IDs).  Neither side outputs a key until the peer has
proved the final session secret over the final transcript.

Nothing here does I/O.  Feed received frames to :meth:`Connection.receive`, answer
:class:`NeedQKDKeys` with :meth:`Connection.qkd_keys` or :meth:`Connection.qkd_failed`,
and send every :class:`SendMessage`.  Time and randomness are injected.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .._errors import (
    AuthenticationError,
    ContextMismatch,
    HandshakeTimeout,
    HybridKexError,
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
    UnknownPeerError,
    UnverifiedMessage,
)
from ..backends import KEM, Backend, KeyAgreement, get_backend
from . import _labels
from ._auth import Authenticator, PeerInfo, Purpose
from ._catkdf import HMACKey, catkdf_unchecked, hmac_digest, new_hash
from ._dos import DoSGuard
from ._qkd import QKD_KEY_BYTES, QKDKey
from ._record import fast_init
from ._state import TRANSITIONS, Input, Role, State, lookup
from ._suites import QKD_POLICIES, QKD_POLICY_CODES, SUITES, Suite, auth_name
from ._wire import (
    COOKIE_NONCE_SIZE,
    HEADER_SIZE,
    MAC_SIZE,
    NONCE_SIZE,
    QKD_REASON_TEXT,
    Alert,
    AlertCode,
    CookieReply,
    InitConfirm,
    InitFinish,
    InitHello,
    MessageType,
    QKDBlock,
    QKDReason,
    QKDStatus,
    RespFinish,
    RespHello,
    build_frame,
    decode,
    encode,
    init_finish_core_block,
    init_hello_prefix,
    pull_init_confirm_payload,
    pull_init_finish_payload,
    pull_resp_finish_payload,
    pull_resp_hello_payload,
    push_init_finish_core,
    push_qkd_block,
    push_resp_finish_core,
    resp_hello_body,
    resp_hello_public,
    vec8,
    vec16,
)

__all__ = [
    "HandshakeConfig", "Initiator", "Responder", "Connection", "HandshakeResult", "QKDOutcome",
    "SendMessage", "NeedQKDKeys", "NeedChannelConfirmation", "HandshakeComplete", "Event", "key_fingerprint",
]

_OFF, _PREFERRED, _REQUIRED = (QKD_POLICY_CODES[p] for p in QKD_POLICIES)
_PREFERRED_HINT = "qkd_policy 'preferred' (--qkd-policy preferred)"
_ZERO_NONCE = bytes(12)
_NO_QKD_BLOCK = QKDBlock(QKDStatus.OFF)


@dataclass(frozen=True)
class HandshakeConfig:
    """Everything one side needs to run a handshake."""

    authenticator: Authenticator
    """How this side proves who it is and checks the peer (ML-DSA pins, or a PSK and two names)."""
    suites: tuple[int, ...] = (0x0001, 0x0003)
    """Initiator: suites offered, preferred first (all must share one KEM).  Responder: suites accepted."""
    qkd_policy: str = "off"
    """``off``: no QKD.  ``preferred``: use a QKD key when one can be had.  ``required``: fail without one."""
    qkd_key_bits: int = QKD_KEY_BYTES * 8
    """Size of the QKD key asked for, in bits."""
    backend: str | Backend = "auto"
    """Crypto backend name (``auto``, ``cryptography``, ``liboqs``) or a backend object."""
    context: bytes = b""
    """Application binding (e.g. ``b"tls"``); both sides must use the same, it is bound into the key."""
    timeout: float = 30.0
    """Seconds from the start of the handshake until it is abandoned."""
    sae_id: str = ""
    """This side's SAE ID at its KME ("" for sources without SAE IDs, such as the simulated link)."""
    peer_sae_id: str = ""
    """The peer's SAE ID: the slave for an initiator, the expected master for a responder."""
    peer_sae_ids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Responder with several pinned peers: each peer's fingerprint -> its SAE ID (overrides ``peer_sae_id``)."""
    channel_confirmation: bool = False
    """The channel above confirms the session (TLS Finished): the responder sends no RespFinish when QKD
    went as InitFinish declared, and the initiator reports :class:`NeedChannelConfirmation`."""
    replay_window: float = 120.0
    """Initiator timestamps further than this from the responder's clock are refused (seconds)."""

    def __post_init__(self) -> None:
        if self.qkd_policy not in QKD_POLICY_CODES:
            raise ValueError(f"qkd_policy must be one of {QKD_POLICIES}, not {self.qkd_policy!r}")
        if not self.suites or any(s not in SUITES for s in self.suites):
            raise ValueError(f"suites must be a non-empty subset of {sorted(SUITES)}")
        if len(self.context) > 255:
            raise ValueError("context must be at most 255 bytes")
        if self.qkd_key_bits % 8 or not 128 <= self.qkd_key_bits <= 8192:
            raise ValueError("qkd_key_bits must be a multiple of 8 between 128 and 8192")
        for sae in (self.sae_id, self.peer_sae_id, *self.peer_sae_ids.values()):
            if len(sae.encode()) > 255:
                raise ValueError("SAE IDs must be at most 255 bytes")

    def expected_master(self, peer: PeerInfo) -> str:
        return self.peer_sae_ids.get(peer.fingerprint, self.peer_sae_id)


@fast_init
@dataclass(frozen=True)
class QKDOutcome:
    """What QKD contributed to the key."""

    status: str
    """``used``, ``off`` (not configured or not agreed) or ``unavailable`` (policy allowed going on without)."""
    key_ids: tuple[uuid.UUID, ...] = ()
    reason: str = ""
    """Why QKD was unavailable, and on which side."""

    @property
    def used(self) -> bool:
        return self.status == "used"


def key_fingerprint(key: bytes) -> str:
    """A name for a derived key that is safe to show: ``SHA256:`` + 22 base64 characters."""
    digest = hashlib.sha256(_labels.KEY_FINGERPRINT + key).digest()[:16]
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@fast_init
@dataclass(frozen=True)
class HandshakeResult:
    """A finished, mutually authenticated and confirmed handshake.  Holds the session's derived secrets."""

    role: str
    suite: Suite
    auth: str
    peer: PeerInfo
    local_fingerprint: str
    qkd: QKDOutcome
    transcript_hash: bytes
    message_sizes: tuple[int, ...]
    _application: bytes = field(repr=False, compare=False)
    _exchange_key: bytes = field(repr=False, compare=False)
    _ratchet: bytes = field(repr=False, compare=False)

    def export(self, label: bytes, length: int = 32) -> bytes:
        """Derive ``length`` bytes for one application use named by ``label`` (HKDF-Expand of the
        application secret).  Labels starting with ``hybridkex v2 `` are reserved."""
        if not isinstance(label, bytes) or not label:
            raise TypeError("label must be non-empty bytes")
        if label.startswith(_labels.RESERVED_PREFIX):
            raise ValueError(f"exporter labels starting with {_labels.RESERVED_PREFIX.decode()!r} are reserved for "
                             "hybridkex itself; choose a label that names your application")
        if not 1 <= length <= 255 * self.suite.hash_len:
            raise ValueError("length out of range")
        info = _labels.EXPORTER + vec16(label) + struct.pack(">H", length)
        return HKDFExpand(_hash_algorithm(self.suite), length, info).derive(self._application)

    def key(self) -> bytes:
        """The 32-byte key ``hybridkex exchange --out`` writes (a secret of its own, not an export)."""
        return self._exchange_key

    def ratchet_psk(self) -> bytes:
        """The authentication ratchet's next PSK: below its own secret, bound to both parties."""
        return self._ratchet

    def summary(self) -> dict[str, object]:
        """Secret-free facts for ``--json`` and logs."""
        return {
            "role": self.role,
            "suite": self.suite.name,
            "auth": self.auth,
            "peer": self.peer.fingerprint,
            "local": self.local_fingerprint,
            "qkd": self.qkd.status,
            "qkd_key_ids": [str(k) for k in self.qkd.key_ids],
            "qkd_reason": self.qkd.reason,
            "transcript_hash": self.transcript_hash.hex(),
            "key_fingerprint": key_fingerprint(self.key()),
        }


@dataclass(frozen=True)
class SendMessage:
    """Send these bytes to the peer."""

    data: bytes


@fast_init
@dataclass(frozen=True)
class NeedQKDKeys:
    """Ask the QKD key source: as ``master`` for ``number`` new keys for slave ``peer_sae_id``, as
    ``slave`` for ``key_ids`` from master ``peer_sae_id``."""

    role: str
    number: int
    size_bits: int
    key_ids: tuple[uuid.UUID, ...] = ()
    peer_sae_id: str = ""


@dataclass(frozen=True)
class NeedChannelConfirmation:
    """Initiator with ``channel_confirmation``: the session is ready for the channel above (e.g. as a
    TLS PSK); call :meth:`Initiator.channel_confirmed` once that channel proved the peer's key, or
    feed the responder's RespFinish (its fallback) to :meth:`Connection.receive`."""

    result: HandshakeResult


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake finished; ``result`` holds the confirmed session."""

    result: HandshakeResult


Event = SendMessage | NeedQKDKeys | NeedChannelConfirmation | HandshakeComplete


def _hash_algorithm(suite: Suite) -> hashes.HashAlgorithm:
    return hashes.SHA256() if suite.hash == "sha256" else hashes.SHA384()


def _alert_code(exc: BaseException) -> AlertCode:
    if isinstance(exc, AuthenticationError):
        return AlertCode.UNKNOWN_PEER if isinstance(exc, UnknownPeerError) else AlertCode.AUTH_FAILED
    if isinstance(exc, QKDKeyReplay):
        return AlertCode.QKD_REPLAY
    if isinstance(exc, QKDPolicyError):
        return AlertCode.QKD_POLICY
    if isinstance(exc, QKDError):
        return AlertCode.QKD_UNAVAILABLE
    if isinstance(exc, NegotiationError):
        return AlertCode.CONTEXT_MISMATCH if isinstance(exc, ContextMismatch) else AlertCode.NO_COMMON_SUITE
    if isinstance(exc, HandshakeTimeout):
        return AlertCode.TIMEOUT
    if isinstance(exc, RemoteProtocolError):
        return AlertCode.BAD_MESSAGE
    return AlertCode.INTERNAL


def _qkd_reason(exc: QKDError) -> QKDReason:
    if isinstance(exc, QKDLinkAborted):
        return QKDReason.LINK_ABORTED
    if isinstance(exc, QKDSourceMissing):
        return QKDReason.NO_SOURCE
    return QKDReason.SOURCE_FAILED


_INPUTS = {MessageType.INIT_HELLO: Input.INIT_HELLO, MessageType.RESP_HELLO: Input.RESP_HELLO,
           MessageType.INIT_FINISH: Input.INIT_FINISH, MessageType.RESP_FINISH: Input.RESP_FINISH,
           MessageType.INIT_CONFIRM: Input.INIT_CONFIRM, MessageType.COOKIE_REPLY: Input.COOKIE_REPLY,
           MessageType.ALERT: Input.ALERT}
_INPUT_OF = {InitHello: Input.INIT_HELLO, RespHello: Input.RESP_HELLO, InitFinish: Input.INIT_FINISH,
             RespFinish: Input.RESP_FINISH, InitConfirm: Input.INIT_CONFIRM, CookieReply: Input.COOKIE_REPLY,
             Alert: Input.ALERT}


_FINAL = frozenset({State.ERROR, State.DONE})
#: Role names without the enum's Python-level ``value`` property.
_ROLE_NAME = {role: role.value for role in Role}
_NO_QKD = QKDOutcome("off")
_U32 = struct.Struct(">I").pack


class _Transcript:
    """TH(p1..pn) = H(TRANSCRIPT || u32 len || p1 || ... ) (§5.1).  Whole frames are absorbed once
    as they go on the wire; :meth:`hash` copies the running hash and adds the parts that follow."""

    def __init__(self, hash_name: str) -> None:
        self._h = new_hash(hash_name, _labels.TRANSCRIPT)
        self.frames: list[bytes] = []

    def absorb(self, frame: bytes) -> None:
        update = self._h.update
        update(_U32(len(frame)))
        update(frame)
        self.frames.append(frame)

    def hash(self, *extra: bytes) -> bytes:
        h = self._h.copy()
        for part in extra:
            h.update(_U32(len(part)))
            h.update(part)
        digest: bytes = h.digest()
        return digest


class Connection:
    """State shared by both roles: state, transcript, secrets, errors, and the table-driven dispatch."""

    role: Role
    #: The negotiated suite, set once the hello is handled (reading it before is an internal error).
    suite: Suite
    #: each secret that keys expansions (handshake, session) with its HMAC state, found by identity
    _keyed: tuple[tuple[bytes, HMACKey], ...] = ()
    # What a handshake fills in as it goes: empty until then (class defaults, so a connection starts cheaply).
    _th: _Transcript | None = None
    _ih = _rh_public = _rh_plain = _if_core = _if_tagged = b""
    _hs = _k1 = _k2 = _session = b""
    _psk: bytes | None = None
    _qkd: Sequence[QKDKey] = ()
    _encoded_block: tuple[QKDBlock | None, bytes] = (None, b"")
    _peer: PeerInfo | None = None
    _peer_identity = b""
    _local_reason = ""
    result: HandshakeResult | None = None
    #: True once the peer's signature or PSK MAC verified (before that, failures are unauthenticated)
    authenticated = False
    #: after a failure: an Alert frame to send to the peer, if the peer should be told
    error_alert: bytes | None = None

    def __init__(self, config: HandshakeConfig, *, rng: Callable[[int], bytes] = os.urandom,
                 now: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self._rng = rng
        self._now = now
        self._wall = wall
        self._started = now()
        self.state = State.START
        self._backend = config.backend if isinstance(config.backend, Backend) else get_backend(config.backend)
        self._policy = QKD_POLICY_CODES[config.qkd_policy]
        self._peer_policy = _OFF
        self._block = _NO_QKD_BLOCK

    # -- the interface both roles implement ---------------------------------------------
    def receive(self, frame: bytes) -> list[Event]:
        """Handle one whole frame from the peer."""
        return self._run(self._receive, frame)

    def qkd_keys(self, keys: Sequence[QKDKey]) -> list[Event]:
        """Answer a :class:`NeedQKDKeys` with the keys the source delivered."""
        return self._run(self._step, Input.QKD_KEYS, list(keys))

    def qkd_failed(self, error: QKDError) -> list[Event]:
        """Answer a :class:`NeedQKDKeys` with the source's failure; the policies decide."""
        return self._run(self._step, Input.QKD_FAILED, error)

    # -- dispatch ------------------------------------------------------------------------
    def _receive(self, frame: bytes) -> list[Event]:
        message = decode(frame)
        return self._step(_INPUT_OF[type(message)], message, frame)

    def _run(self, fn: Callable[..., list[Event]], *args: Any) -> list[Event]:
        if self.state in _FINAL:
            raise LocalProtocolError(f"the handshake is already {self.state.value}; start a new one")
        try:
            self._check_deadline()
            return fn(*args)
        except HybridKexError as exc:
            self._fail(exc)
            raise
        except (ValueError, TypeError) as exc:
            # Primitives reject malformed peer keys and ciphertexts with ValueError.
            err = RemoteProtocolError(f"peer sent an invalid value: {exc}")
            self._fail(err)
            raise err from None
        except Exception as exc:
            err2 = LocalProtocolError(f"internal error in the {self.role.value} ({type(exc).__name__}); "
                                      "this is a bug, please report it")
            self._fail(err2)
            raise err2 from exc

    def _step(self, event: Input, *args: Any) -> list[Event]:
        step = TRANSITIONS.get((self.role, self.state, event)) or lookup(self.role, self.state, event)
        target, events = getattr(self, step.handler)(*args)
        if target not in step.targets:
            raise LocalProtocolError(f"internal error: {step.handler} led to {target.value}, off the table")
        self.state = target
        return list(events)

    def _on_alert(self, message: Alert, frame: bytes) -> tuple[State, list[Event]]:
        raise PeerAlertError(f"peer aborted the handshake: {message.text}", int(message.code))

    # -- helpers -----------------------------------------------------------------------
    @property
    def transcript(self) -> _Transcript:
        assert self._th is not None
        return self._th

    def _expand(self, secret: bytes, label: bytes) -> bytes:
        # HKDF-Expand for one hash length is T(1) = HMAC(PRK, info || 0x01) (RFC 5869 §2.3).  A secret
        # keys several expansions: its HMAC state is made once (looked up by identity, so no secret
        # is hashed or compared to find it).
        for known, keyed in self._keyed:
            if known is secret:
                return keyed.digest(label + b"\x01")
        keyed = HMACKey(secret, self.suite.hash)
        self._keyed += ((secret, keyed),)
        return keyed.digest(label + b"\x01")

    def _mac(self, secret: bytes, label: bytes, data: bytes) -> bytes:
        return hmac_digest(self._expand(secret, label), data, self.suite.hash)

    def _seal(self, label: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return ChaCha20Poly1305(self._expand(self._hs, label)[:32]).encrypt(_ZERO_NONCE, plaintext, aad)

    def _open(self, label: bytes, aad: bytes, sealed: bytes, who: str) -> bytes:
        try:
            return ChaCha20Poly1305(self._expand(self._hs, label)[:32]).decrypt(_ZERO_NONCE, sealed, aad)
        except InvalidTag:
            raise AuthenticationError(f"the {who} could not prove the handshake secret (its sealed payload does not "
                                      "open): a message was altered, or the peer is not the one expected") from None

    def _catkdf(self, *, psk: bytes, ma: bytes, mb: bytes, context: bytes, label: bytes) -> bytes:
        suite = self.suite
        return catkdf_unchecked(suite.hash, suite.kdf, psk, self._k1, self._k2, ma, mb, context, label,
                                suite.hash_len)

    def _handshake_secret(self) -> None:
        self._hs = self._catkdf(psk=b"", ma=self._ih, mb=self._rh_public, context=_labels.CATKDF_CONTEXT_HANDSHAKE,
                                label=_labels.CATKDF_LABEL_HANDSHAKE)

    def _session_secret(self, block: QKDBlock, psk: bytes, rf_tail: bytes = b"") -> bytes:
        """CatKDF with the QKD key, over both payloads, in a context that names both parties and the QKD block."""
        id_i, id_r = self.config.authenticator.binding(self.role, self._peer_identity)
        context = b"".join((_labels.CATKDF_CONTEXT_SESSION, vec16(id_i), vec16(id_r), self._block_bytes(block)))
        return self._catkdf(psk=psk, ma=self._ih + self._if_tagged, mb=self._rh_public + self._rh_plain + rf_tail,
                            context=context, label=_labels.CATKDF_LABEL_SESSION)

    def _block_bytes(self, block: QKDBlock) -> bytes:
        """The QKD block's wire encoding, made once per block (InitFinish and the session context both hold it)."""
        if self._encoded_block[0] is not block:
            self._encoded_block = (block, push_qkd_block(block))
        return self._encoded_block[1]

    def _check_mac(self, expected: bytes, tag: bytes, what: str) -> None:
        if not hmac.compare_digest(expected, tag):
            raise AuthenticationError(f"{what} failed: the peer derived a different session secret (its QKD key "
                                      "differs from this side's under the same key_ID, or a message was altered)")

    def _check_deadline(self) -> None:
        if self._now() - self._started > self.config.timeout:
            raise HandshakeTimeout(f"handshake did not finish within {self.config.timeout:g} s; "
                                   "check that the peer is up and the network is not dropping packets")

    def _fail(self, exc: BaseException) -> None:
        """Enter ERROR, drop secrets, and prepare an alert for the peer (none for unverified input)."""
        self.state = State.ERROR
        self._hs = self._k1 = self._k2 = self._session = b""
        self._keyed = ()
        self._psk = None
        self._qkd = ()
        # Never answer an alert with an alert, and give nothing to a sender that proved nothing.
        # A local fault is reported as INTERNAL: the peer learns the handshake is over, not that it erred.
        if not isinstance(exc, (PeerAlertError, UnverifiedMessage)):
            self.error_alert = encode(Alert(_alert_code(exc)))

    def _result(self, session: bytes, block: QKDBlock, reason: str) -> HandshakeResult:
        assert self._peer is not None
        th = self.transcript
        frames = th.frames
        if block.status is QKDStatus.USED:
            outcome = QKDOutcome("used", block.key_ids)
        elif block.status is QKDStatus.UNAVAILABLE:
            outcome = QKDOutcome("unavailable", (), reason)
        else:
            outcome = _NO_QKD
        ratchet_secret = self._expand(session, _labels.SECRET_RATCHET)
        id_i, id_r = self.config.authenticator.binding(self.role, self._peer_identity)
        return HandshakeResult(
            role=_ROLE_NAME[self.role], suite=self.suite, auth=self.config.authenticator.mode, peer=self._peer,
            local_fingerprint=self.config.authenticator.local_fingerprint(), qkd=outcome,
            transcript_hash=th.hash(), message_sizes=tuple(map(len, frames)),
            _application=self._expand(session, _labels.SECRET_APPLICATION),
            _exchange_key=self._expand(session, _labels.SECRET_EXCHANGE_KEY)[:32],
            _ratchet=hmac_digest(ratchet_secret, _labels.RATCHET_NEXT_PSK + vec16(id_i) + vec16(id_r) + b"\x01",
                                 self.suite.hash)[:32])

    def _finish(self, result: HandshakeResult) -> HandshakeResult:
        self._hs = self._k1 = self._k2 = self._session = b""
        self._keyed = ()
        self._psk = None
        self._qkd = ()
        self.result = result
        return result

    @property
    def _channel(self) -> bool:
        """Channel confirmation applies unless a responder fallback is possible (both policies preferred)."""
        fallback_possible = self._policy != _OFF and self._peer_policy != _OFF and \
            _REQUIRED not in (self._policy, self._peer_policy)
        return self.config.channel_confirmation and not fallback_possible

    def _require_qkd_block(self, block: QKDBlock) -> None:
        """Responder: is the initiator's QKD declaration allowed by both policies?"""
        agreed = self._policy != _OFF and self._peer_policy != _OFF
        if block.status is QKDStatus.OFF and agreed:
            raise RemoteProtocolError("initiator declared no QKD although both sides agreed on QKD")
        if block.status is not QKDStatus.OFF and not agreed:
            raise RemoteProtocolError("initiator declared a QKD outcome although QKD was not agreed")
        if block.status is QKDStatus.UNAVAILABLE and _REQUIRED in (self._policy, self._peer_policy):
            raise QKDPolicyError(f"the initiator could not get a QKD key ({QKD_REASON_TEXT[block.reason]}) and "
                                 "QKD is required; fix its QKD source, or use " + _PREFERRED_HINT)


class Initiator(Connection):
    """The side that connects.  As ETSI 014 master SAE it fetches new QKD keys."""

    role = Role.INITIATOR

    def __init__(self, config: HandshakeConfig, *, rng: Callable[[int], bytes] = os.urandom,
                 now: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        super().__init__(config, rng=rng, now=now, wall=wall)
        kems = {SUITES[s].kem for s in config.suites}
        if len(kems) != 1:
            raise ValueError("an initiator's offered suites must all use one KEM (it sends one key share)")
        self._static = config.authenticator.responder_static(Role.INITIATOR)
        self._cookie_used = False

    def initiate(self) -> list[Event]:
        """Start the handshake: returns the InitHello to send."""
        return self._run(self._step, Input.START)

    def channel_confirmed(self) -> list[Event]:
        """The channel above (TLS Finished under a PSK from this session) proved the responder's key."""
        return self._run(self._step, Input.CHANNEL_CONFIRMED)

    def _initiate(self) -> tuple[State, list[Event]]:
        self._kem, self._ka = _schemes(self._backend, self.config.suites[0])
        self._kem_private, kem_key = self._kem.generate(self._rng(self._kem.sizes.decapsulation_key_seed))
        self._x_private, x_public = self._ka.generate(self._rng(self._ka.private_key_size))
        auth = self.config.authenticator
        hello = InitHello(int(self._wall()), self._rng(NONCE_SIZE), self.config.suites, auth.kind, self._policy,
                          self.config.context, x_public, kem_key, (), bytes(MAC_SIZE), bytes(MAC_SIZE))
        prefix = init_hello_prefix(hello)
        offer = auth.offer(prefix)
        self._hello_body = prefix + bytes([len(offer)]) + b"".join(offer)
        self._mac1 = _mac1_hmac(self._static).digest(self._hello_body)[:MAC_SIZE]
        return State.WAIT_RESP_HELLO, [SendMessage(self._send_hello(bytes(MAC_SIZE)))]

    def _send_hello(self, mac2: bytes) -> bytes:
        self._ih = build_frame(MessageType.INIT_HELLO, self._hello_body + self._mac1 + mac2)
        return self._ih

    def _on_cookie_reply(self, msg: CookieReply, frame: bytes) -> tuple[State, list[Event]]:
        if self._cookie_used:
            raise RemoteProtocolError("responder sent a second CookieReply")
        self._cookie_used = True
        try:
            cookie = ChaCha20Poly1305(_cookie_key(self._static)).decrypt(msg.nonce, msg.sealed_cookie, self._mac1)
        except InvalidTag:
            raise RemoteProtocolError("CookieReply does not open under the responder's identity") from None
        mac2 = hmac_digest(cookie, self._hello_body + self._mac1, "sha256")[:MAC_SIZE]
        return State.WAIT_RESP_HELLO, [SendMessage(self._send_hello(mac2))]

    def _on_resp_hello(self, msg: RespHello, frame: bytes) -> tuple[State, list[Event]]:
        if msg.suite not in self.config.suites:
            raise NegotiationError(f"responder chose suite 0x{msg.suite:04x}, which this side did not offer "
                                   "(downgrade attempt or broken peer)")
        if msg.qkd_policy > _REQUIRED:
            raise RemoteProtocolError(f"malformed RespHello: QKD policy {msg.qkd_policy}")
        self.suite = SUITES[msg.suite]
        self._peer_policy = msg.qkd_policy
        auth = self.config.authenticator
        self._psk = auth.accept(msg.psk_choice)
        self._th = _Transcript(self.suite.hash)
        th = self.transcript
        th.absorb(self._ih)
        # The public part as received: a valid frame has one encoding, so these are the bytes re-encoding makes.
        self._rh_public = frame[HEADER_SIZE:len(frame) - 2 - len(msg.sealed)]
        self._k1 = self._ka.exchange(self._x_private, msg.x25519)
        self._k2 = self._kem.decapsulate(self._kem_private, msg.kem_ciphertext)
        self._handshake_secret()
        self._rh_plain = self._open(_labels.KEY_RESP_HELLO, th.hash(self._rh_public), msg.sealed,
                                    "responder")
        payload = pull_resp_hello_payload(self._rh_plain)
        self._peer_identity = payload.identity
        self._peer = auth.verify_peer(Role.INITIATOR, self._psk, Purpose.RESPONDER, payload.identity,
                                      th.hash(self._rh_public, vec16(payload.identity)),
                                      payload.auth_tag)
        self.authenticated = True
        th.absorb(frame)
        if self._policy == _REQUIRED and self._peer_policy == _OFF:
            raise QKDPolicyError("this side requires QKD but the responder runs without QKD; configure a QKD "
                                 f"source on the responder or use {_PREFERRED_HINT} here")
        if self._policy != _OFF and self._peer_policy != _OFF:
            return State.WAIT_QKD_MASTER, [NeedQKDKeys("master", 1, self.config.qkd_key_bits,
                                                       peer_sae_id=self.config.peer_sae_id)]
        return self._send_finish(QKDBlock(QKDStatus.OFF))

    def _on_qkd_keys(self, keys: list[QKDKey]) -> tuple[State, list[Event]]:
        if len(keys) != 1 or len(keys[0].key) * 8 != self.config.qkd_key_bits:
            raise QKDUnavailable(f"QKD source returned {len(keys)} key(s) of the wrong size; expected one "
                                 f"{self.config.qkd_key_bits}-bit key")
        self._qkd = keys
        return self._send_finish(QKDBlock(QKDStatus.USED, QKDReason.NONE, self.config.sae_id,
                                          self.config.peer_sae_id, self.config.qkd_key_bits,
                                          tuple(k.key_id for k in keys)))

    def _on_qkd_failed(self, error: QKDError) -> tuple[State, list[Event]]:
        if isinstance(error, QKDKeyReplay):
            raise error
        if _REQUIRED in (self._policy, self._peer_policy):
            side = "this side" if self._policy == _REQUIRED else "the responder"
            raise QKDPolicyError(f"no QKD key ({error}) and {side} requires QKD; fix the QKD source, "
                                 f"or use {_PREFERRED_HINT} to go on with ML-KEM and X25519 only")
        self._local_reason = f"this side's QKD source failed: {error}"
        return self._send_finish(QKDBlock(QKDStatus.UNAVAILABLE, _qkd_reason(error), self.config.sae_id,
                                          self.config.peer_sae_id, self.config.qkd_key_bits))

    def _send_finish(self, block: QKDBlock) -> tuple[State, list[Event]]:
        auth = self.config.authenticator
        self._block = block
        self._if_core = push_init_finish_core(auth.local_identity(), block)
        self._encoded_block = (block, init_finish_core_block(self._if_core))
        th = self.transcript
        tag = auth.make_tag(Role.INITIATOR, self._psk, Purpose.INITIATOR, th.hash(self._if_core))
        self._if_tagged = self._if_core + vec16(tag)
        psk = b"".join(k.key for k in self._qkd) if block.status is QKDStatus.USED else b""
        self._session = self._session_secret(block, psk)
        confirm = self._mac(self._session, _labels.SECRET_INIT_FINISHED, th.hash(self._if_tagged))
        sealed = self._seal(_labels.KEY_INIT_FINISH, th.hash(), self._if_tagged + vec8(confirm))
        frame = encode(InitFinish(sealed))
        th.absorb(frame)
        events: list[Event] = [SendMessage(frame)]
        if self._channel:
            self._provisional = self._result(self._session, block, self._local_reason)
            events.append(NeedChannelConfirmation(self._provisional))
            return State.WAIT_CHANNEL, events
        return State.WAIT_RESP_FINISH, events

    def _on_channel_confirmed(self) -> tuple[State, list[Event]]:
        return State.DONE, [HandshakeComplete(self._finish(self._provisional))]

    def _on_resp_finish(self, msg: RespFinish, frame: bytes) -> tuple[State, list[Event]]:
        th = self.transcript
        plain = self._open(_labels.KEY_RESP_FINISH, th.hash(), msg.sealed, "responder")
        payload = pull_resp_finish_payload(plain)
        core = push_resp_finish_core(payload.status, payload.reason)
        tagged = core + vec16(payload.auth_tag)
        if payload.status is QKDStatus.OFF:
            if self.state is State.WAIT_CHANNEL:
                raise RemoteProtocolError("responder sent a RespFinish although the channel confirms the session")
            expected = self._mac(self._session, _labels.SECRET_RESP_FINISHED, th.hash(tagged))
            self._check_mac(expected, payload.confirm, "the responder's final key confirmation")
            th.absorb(frame)
            result = self._result(self._session, self._block, self._local_reason)
            return State.DONE, [HandshakeComplete(self._finish(result))]
        # The responder could not get the QKD key: accept that only under its long-term credential.
        if self._block.status is not QKDStatus.USED:
            raise RemoteProtocolError("responder fell back without QKD although no QKD key was used")
        self._peer = self.config.authenticator.verify_peer(Role.INITIATOR, self._psk, Purpose.RESPONDER_FALLBACK,
                                                           self._peer_identity, th.hash(core),
                                                           payload.auth_tag)
        if _REQUIRED in (self._policy, self._peer_policy):
            raise QKDPolicyError(f"the responder could not get the QKD key ({QKD_REASON_TEXT[payload.reason]}) and "
                                 f"QKD is required; fix its QKD source, or use {_PREFERRED_HINT}")
        fallback = replace(self._block, status=QKDStatus.UNAVAILABLE, reason=payload.reason)
        session = self._session_secret(fallback, b"", tagged)
        expected = self._mac(session, _labels.SECRET_RESP_FINISHED, th.hash(tagged))
        self._check_mac(expected, payload.confirm, "the responder's fallback key confirmation")
        th.absorb(frame)
        confirm = self._mac(session, _labels.SECRET_INIT_CONFIRM, th.hash())
        confirm_frame = encode(InitConfirm(self._seal(_labels.KEY_INIT_CONFIRM, th.hash(),
                                                      vec8(confirm))))
        th.absorb(confirm_frame)
        result = self._result(session, fallback, f"the responder's QKD source failed: "
                                                 f"{QKD_REASON_TEXT[payload.reason].removeprefix('its ')}")
        return State.DONE, [SendMessage(confirm_frame), HandshakeComplete(self._finish(result))]


@functools.lru_cache(maxsize=64)
def _schemes(backend: Backend, suite_code: int) -> tuple[KEM, KeyAgreement]:
    """A suite's KEM and key agreement from ``backend``, made once per backend and suite (they hold no state)."""
    suite = SUITES[suite_code]
    return backend.kem(suite.kem), backend.key_agreement(suite.key_agreement)


# Both keys hash a responder's public key (kilobytes for ML-DSA) and are public: made once per key.
@functools.lru_cache(maxsize=256)
def _mac1_key(static: bytes) -> bytes:
    return hashlib.sha256(_labels.MAC1 + static).digest()


@functools.lru_cache(maxsize=256)
def _mac1_hmac(static: bytes) -> HMACKey:
    """HMAC under :func:`_mac1_key`, its key blocks absorbed once: a mac1 costs the hashing of the message only."""
    return HMACKey(_mac1_key(static), "sha256")


@functools.lru_cache(maxsize=256)
def _cookie_key(static: bytes) -> bytes:
    return hashlib.sha256(_labels.COOKIE + static).digest()


class Responder(Connection):
    """The side that listens.  As ETSI 014 slave SAE it fetches QKD keys by key_ID.

    ``guard`` (shared by all connections of this responder) and ``source`` (the peer's address)
    enable the replay cache, the cookie challenge under load and the per-source rate limit.
    """

    role = Role.RESPONDER

    def __init__(self, config: HandshakeConfig, *, rng: Callable[[int], bytes] = os.urandom,
                 now: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 guard: DoSGuard | None = None, source: bytes = b"") -> None:
        super().__init__(config, rng=rng, now=now, wall=wall)
        self._static = config.authenticator.responder_static(Role.RESPONDER)
        self._guard = guard
        self._source = source

    def _on_init_hello(self, msg: InitHello, frame: bytes) -> tuple[State, list[Event]]:
        body = frame[HEADER_SIZE:]
        signed, mac1, mac2 = body[:-2 * MAC_SIZE], body[-2 * MAC_SIZE:-MAC_SIZE], body[-MAC_SIZE:]
        if not hmac.compare_digest(_mac1_hmac(self._static).digest(signed)[:MAC_SIZE], mac1):
            raise UnverifiedMessage("dropped an InitHello without a valid mac1 (the sender does not know this "
                                    "responder's identity)")
        if self._guard is not None:
            verdict = self._guard.check(self._source, msg.timestamp, signed, body[:-MAC_SIZE], mac2)
            if verdict.action == "cookie":
                nonce = self._rng(COOKIE_NONCE_SIZE)
                sealed = ChaCha20Poly1305(_cookie_key(self._static)).encrypt(
                    nonce, self._guard.cookie_for(self._source), mac1)
                return State.START, [SendMessage(encode(CookieReply(nonce, sealed)))]
            if verdict.action == "drop":
                raise UnverifiedMessage(f"dropped an InitHello: {verdict.reason}")
        elif abs(self._wall() - msg.timestamp) > self.config.replay_window:
            raise UnverifiedMessage("dropped a stale InitHello: its timestamp is outside the replay window "
                                    "(check both clocks)")
        accepted = [s for s in msg.suites if s in self.config.suites]
        if not accepted:
            raise NegotiationError("no common suite: the peer offers none this side accepts; use the same --kem on "
                                   "both sides")
        self.suite = SUITES[accepted[0]]
        share_suite = SUITES.get(msg.suites[0])
        if share_suite is None or share_suite.kem != self.suite.kem:
            raise NegotiationError(f"peer's key share is not for {self.suite.kem}; use the same --kem on both sides")
        if msg.context != self.config.context:
            raise ContextMismatch("application context differs: the peer runs a different application or "
                                   "integration over hybridkex")
        if msg.qkd_policy > _REQUIRED:
            raise RemoteProtocolError(f"malformed InitHello: QKD policy {msg.qkd_policy}")
        self._peer_policy = msg.qkd_policy
        if self._policy == _REQUIRED and self._peer_policy == _OFF:
            raise QKDPolicyError("this side requires QKD but the initiator runs without QKD; configure a QKD "
                                 f"source on the initiator or use {_PREFERRED_HINT} here")
        if self._peer_policy == _REQUIRED and self._policy == _OFF:
            raise QKDPolicyError("the initiator requires QKD but this side runs without QKD; configure a QKD "
                                 "source here (--qkd) or relax the initiator's policy")
        auth = self.config.authenticator
        auth.check_kind(msg.auth_kind)
        self._peer_kind = msg.auth_kind
        prefix = signed[:len(signed) - 1 - len(b"".join(msg.psk_ids))]
        choice, self._psk = auth.select(prefix, msg.psk_ids)
        kem, ka = _schemes(self._backend, self.suite.code)
        if len(msg.kem_key) != kem.sizes.encapsulation_key:
            raise RemoteProtocolError(f"peer's {kem.name} encapsulation key is {len(msg.kem_key)} bytes, "
                                      f"expected {kem.sizes.encapsulation_key}")
        x_private, x_public = ka.generate(self._rng(ka.private_key_size))
        self._k1 = ka.exchange(x_private, msg.x25519)
        self._k2, ciphertext = kem.encapsulate(msg.kem_key)
        self._ih = frame
        self._th = _Transcript(self.suite.hash)
        th = self.transcript
        th.absorb(frame)
        reply = RespHello(self._rng(NONCE_SIZE), self.suite.code, self._policy, x_public, ciphertext, choice, b"")
        self._rh_public = resp_hello_public(reply)
        self._handshake_secret()
        identity = auth.local_identity()
        tag = auth.make_tag(Role.RESPONDER, self._psk, Purpose.RESPONDER,
                            th.hash(self._rh_public, vec16(identity)))
        self._rh_plain = vec16(identity) + vec16(tag)
        sealed = self._seal(_labels.KEY_RESP_HELLO, th.hash(self._rh_public), self._rh_plain)
        frame_out = build_frame(MessageType.RESP_HELLO, resp_hello_body(self._rh_public, sealed))
        th.absorb(frame_out)
        return State.WAIT_INIT_FINISH, [SendMessage(frame_out)]

    def _on_init_finish(self, msg: InitFinish, frame: bytes) -> tuple[State, list[Event]]:
        th = self.transcript
        plain = self._open(_labels.KEY_INIT_FINISH, th.hash(), msg.sealed, "initiator")
        payload = pull_init_finish_payload(plain)
        # Authenticate the initiator before touching any QKD key.
        self._peer = self.config.authenticator.verify_peer(Role.RESPONDER, self._psk, Purpose.INITIATOR,
                                                           payload.identity, th.hash(payload.core),
                                                           payload.auth_tag)
        if self._peer.auth != auth_name(self._peer_kind):
            raise AuthenticationError(f"the initiator announced {auth_name(self._peer_kind)} but its key is "
                                      f"{self._peer.auth}")
        self.authenticated = True
        self._peer_identity = payload.identity
        self._if_core = payload.core
        self._if_tagged = payload.core + vec16(payload.auth_tag)
        self._confirm_i = payload.confirm
        self._if_frame = frame
        block = self._block = payload.qkd
        self._encoded_block = (block, init_finish_core_block(payload.core))  # the bytes as sent (§6.3)
        self._require_qkd_block(block)
        if block.status is QKDStatus.USED:
            expected = self.config.expected_master(self._peer)
            if block.master_sae_id != expected or block.slave_sae_id != self.config.sae_id:
                raise AuthenticationError(
                    f"the initiator's QKD key is for master SAE {block.master_sae_id!r} -> slave "
                    f"{block.slave_sae_id!r}, but this peer is SAE {expected!r} and this side {self.config.sae_id!r}"
                    "; refusing another SAE's key (set the peer's SAE ID to match its KME account)")
            if block.key_bits != self.config.qkd_key_bits or len(block.key_ids) != 1:
                raise RemoteProtocolError(f"initiator declared {len(block.key_ids)} QKD key(s) of {block.key_bits} "
                                          f"bits; this side expects one {self.config.qkd_key_bits}-bit key")
            return State.WAIT_QKD_SLAVE, [NeedQKDKeys("slave", 1, block.key_bits, block.key_ids,
                                                      peer_sae_id=block.master_sae_id)]
        reason = f"the initiator's QKD source failed: {QKD_REASON_TEXT[block.reason].removeprefix('its ')}" \
            if block.status is QKDStatus.UNAVAILABLE else ""
        return self._confirm_initiator(b"", reason)

    def _confirm_initiator(self, psk: bytes, reason: str) -> tuple[State, list[Event]]:
        session = self._session_secret(self._block, psk)
        th = self.transcript
        expected = self._mac(session, _labels.SECRET_INIT_FINISHED, th.hash(self._if_tagged))
        self._check_mac(expected, self._confirm_i, "the initiator's final key confirmation")
        th.absorb(self._if_frame)
        events: list[Event] = []
        if not self._channel:
            core = push_resp_finish_core(QKDStatus.OFF, QKDReason.NONE)
            tagged = core + vec16(b"")
            confirm = self._mac(session, _labels.SECRET_RESP_FINISHED, th.hash(tagged))
            frame = encode(RespFinish(self._seal(_labels.KEY_RESP_FINISH, th.hash(),
                                                 tagged + vec8(confirm))))
            th.absorb(frame)
            events.append(SendMessage(frame))
        result = self._result(session, self._block, reason)
        events.append(HandshakeComplete(self._finish(result)))
        return State.DONE, events

    def _on_qkd_keys(self, keys: list[QKDKey]) -> tuple[State, list[Event]]:
        if tuple(k.key_id for k in keys) != self._block.key_ids or any(
                len(k.key) * 8 != self._block.key_bits for k in keys):
            raise QKDUnavailable("QKD source returned keys that do not match the requested key_IDs or size")
        return self._confirm_initiator(b"".join(k.key for k in keys), "")

    def _on_qkd_failed(self, error: QKDError) -> tuple[State, list[Event]]:
        if isinstance(error, QKDKeyReplay):
            raise error
        if _REQUIRED in (self._policy, self._peer_policy):
            side = "this side" if self._policy == _REQUIRED else "the initiator"
            raise QKDPolicyError(f"no QKD key ({error}) and {side} requires QKD; fix the QKD source, "
                                 f"or use {_PREFERRED_HINT} to go on with ML-KEM and X25519 only")
        # Fall back, saying so under this side's long-term credential, and wait for the initiator's proof.
        reason = _qkd_reason(error)
        core = push_resp_finish_core(QKDStatus.UNAVAILABLE, reason)
        th = self.transcript
        th.absorb(self._if_frame)
        tag = self.config.authenticator.make_tag(Role.RESPONDER, self._psk, Purpose.RESPONDER_FALLBACK,
                                                 th.hash(core))
        tagged = core + vec16(tag)
        self._block = replace(self._block, status=QKDStatus.UNAVAILABLE, reason=reason)
        self._session = self._session_secret(self._block, b"", tagged)
        confirm = self._mac(self._session, _labels.SECRET_RESP_FINISHED, th.hash(tagged))
        frame = encode(RespFinish(self._seal(_labels.KEY_RESP_FINISH, th.hash(), tagged + vec8(confirm))))
        th.absorb(frame)
        self._local_reason = f"this side's QKD source failed: {error}"
        return State.WAIT_INIT_CONFIRM, [SendMessage(frame)]

    def _on_init_confirm(self, msg: InitConfirm, frame: bytes) -> tuple[State, list[Event]]:
        th = self.transcript
        plain = self._open(_labels.KEY_INIT_CONFIRM, th.hash(), msg.sealed, "initiator")
        confirm = pull_init_confirm_payload(plain)
        expected = self._mac(self._session, _labels.SECRET_INIT_CONFIRM, th.hash())
        self._check_mac(expected, confirm, "the initiator's fallback key confirmation")
        th.absorb(frame)
        result = self._result(self._session, self._block, self._local_reason)
        return State.DONE, [HandshakeComplete(self._finish(result))]
