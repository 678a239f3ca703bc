"""The hybridkex handshake as sans-I/O state machines.

Four messages, two round trips::

    Initiator                                              Responder
    InitHello  (nonce, suites, identity, X25519 pk, ML-KEM ek, QKD policy, context) ->
           <-  RespHello (nonce, suite, identity, X25519 pk, ML-KEM ct, QKD policy,
                          signature|MAC over the transcript, confirmation under the PQC secret)
    [master SAE: fetch a fresh QKD key (ETSI 014 enc_keys)]
    InitFinish (QKD key_IDs, signature|MAC, confirmation under the PQC secret)  ->
                                 [slave SAE: fetch the QKD key by key_ID (ETSI 014 dec_keys)]
           <-  RespFinish (QKD used?, confirmation under the final secret)

The X25519 and ML-KEM secrets first give a *handshake secret* (CatKDF with an empty psk)
that both sides prove they hold, together with their identities, before any QKD key is
consumed: the initiator fetches its key only after authenticating the responder, and the
responder fetches by key_ID only after authenticating the initiator, so nobody can make a
side burn QKD keys without passing authentication.  The *session secret* is CatKDF with
psk := QKD key, k1 := X25519, k2 := ML-KEM, MA := InitHello||InitFinish, MB := RespHello,
so every public key, ciphertext, nonce, offer and QKD key_ID is bound into the key.

Nothing here does I/O.  Feed received frames to :meth:`Connection.receive`, answer
:class:`NeedQKDKeys` with :meth:`Connection.qkd_keys` or :meth:`Connection.qkd_failed`,
and send every :class:`SendMessage`.  Time and randomness are injected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from . import _labels
from ._auth import Authenticator, PeerInfo
from ._catkdf import HASHES, catkdf_unchecked
from ._errors import (
    AuthenticationError,
    ContextMismatch,
    HandshakeTimeout,
    HybridKexError,
    LocalProtocolError,
    NegotiationError,
    PeerAlertError,
    QKDError,
    QKDKeyReplay,
    QKDPolicyError,
    QKDUnavailable,
    RemoteProtocolError,
    UnknownPeerError,
)
from ._primitives import Backend, get_backend
from ._state import Input, Role, State, transition
from ._suites import QKD_POLICIES, QKD_POLICY_CODES, SUITES, Suite
from ._wire import (
    NONCE_SIZE,
    Alert,
    AlertCode,
    InitFinish,
    InitHello,
    MessageType,
    RespFinish,
    RespHello,
    auth_fields,
    build_frame,
    core_of,
    decode,
    encode,
    push_init_finish_core,
    push_resp_finish_core,
    push_resp_hello_core,
)
from .qkd._source import QKD_KEY_BYTES, QKDKey

__all__ = [
    "HandshakeConfig", "Initiator", "Responder", "Connection", "HandshakeResult", "QKDOutcome",
    "SendMessage", "NeedQKDKeys", "HandshakeComplete", "Event", "key_fingerprint",
]

_OFF, _PREFERRED, _REQUIRED = (QKD_POLICY_CODES[p] for p in QKD_POLICIES)
_PREFERRED_HINT = "--qkd-policy preferred"


@dataclass(frozen=True)
class HandshakeConfig:
    """Everything one side needs to run a handshake."""

    authenticator: Authenticator
    """How this side proves who it is and checks the peer (ML-DSA pins or a PSK)."""
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

    def __post_init__(self) -> None:
        if self.qkd_policy not in QKD_POLICY_CODES:
            raise ValueError(f"qkd_policy must be one of {QKD_POLICIES}, not {self.qkd_policy!r}")
        if not self.suites or any(s not in SUITES for s in self.suites):
            raise ValueError(f"suites must be a non-empty subset of {sorted(SUITES)}")
        if len(self.context) > 255:
            raise ValueError("context must be at most 255 bytes")
        if self.qkd_key_bits % 8 or not 128 <= self.qkd_key_bits <= 8192:
            raise ValueError("qkd_key_bits must be a multiple of 8 between 128 and 8192")


@dataclass(frozen=True)
class QKDOutcome:
    """What QKD contributed to the key."""

    status: str
    """``used``, ``off`` (not configured or not agreed) or ``unavailable`` (policy allowed going on without)."""
    key_ids: tuple[uuid.UUID, ...] = ()
    reason: str = ""

    @property
    def used(self) -> bool:
        return self.status == "used"


def key_fingerprint(key: bytes) -> str:
    """A name for a derived key that is safe to show: ``SHA256:`` + 22 base64 characters."""
    digest = hashlib.sha256(_labels.KEY_FINGERPRINT + key).digest()[:16]
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class HandshakeResult:
    """A finished, mutually authenticated and confirmed handshake.  Holds the session secret."""

    role: str
    suite: Suite
    auth: str
    peer: PeerInfo
    local_fingerprint: str
    qkd: QKDOutcome
    transcript_hash: bytes
    message_sizes: tuple[int, ...]
    _session: bytes = field(repr=False, compare=False)

    def export(self, label: bytes, length: int = 32) -> bytes:
        """Derive ``length`` bytes for one use, named by ``label`` (HKDF-Expand of the session secret)."""
        if not isinstance(label, bytes) or not label:
            raise TypeError("label must be non-empty bytes")
        if not 1 <= length <= 255 * self.suite.hash_len:
            raise ValueError("length out of range")
        info = _labels.KEY_EXPORTER + struct.pack(">H", len(label)) + label + struct.pack(">H", length)
        return HKDFExpand(_hash_algorithm(self.suite), length, info).derive(self._session)

    def key(self) -> bytes:
        """The 32-byte key ``hybridkex exchange --out`` writes."""
        return self.export(_labels.EXPORT_EXCHANGE_KEY, 32)

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


@dataclass(frozen=True)
class NeedQKDKeys:
    """Ask the QKD key source: as ``master`` for ``number`` new keys, as ``slave`` for ``key_ids``."""

    role: str
    number: int
    size_bits: int
    key_ids: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake finished; ``result`` holds the confirmed session."""

    result: HandshakeResult


Event = SendMessage | NeedQKDKeys | HandshakeComplete


def _hash_algorithm(suite: Suite) -> hashes.HashAlgorithm:
    return hashes.SHA256() if suite.hash == "sha256" else hashes.SHA384()


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _alert_code(exc: BaseException) -> AlertCode:
    if isinstance(exc, AuthenticationError):
        return AlertCode.UNKNOWN_PEER if isinstance(exc, UnknownPeerError) else AlertCode.AUTH_FAILED
    if isinstance(exc, QKDKeyReplay):
        return AlertCode.QKD_REPLAY
    if isinstance(exc, (QKDPolicyError,)):
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


class Connection:
    """State shared by both roles: state, transcript, secrets, errors."""

    role: Role

    def __init__(self, config: HandshakeConfig, *, rng: Callable[[int], bytes] = os.urandom,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._rng = rng
        self._now = now
        self._started = now()
        self.state = State.START
        self._backend = config.backend if isinstance(config.backend, Backend) else get_backend(config.backend)
        self._policy = QKD_POLICY_CODES[config.qkd_policy]
        self._peer_policy = _OFF
        self._suite: Suite | None = None
        self._frames: dict[str, bytes] = {}
        self._th: Any = None
        self._th_frames: list[bytes] = []
        self._hs_secret = b""
        self._k1 = b""
        self._k2 = b""
        self._qkd: list[QKDKey] = []
        self._qkd_status = QKDOutcome("off")
        self._peer: PeerInfo | None = None
        self.result: HandshakeResult | None = None
        #: after a failure: an Alert frame to send to the peer, if the peer should be told
        self.error_alert: bytes | None = None

    # -- the interface both roles implement ---------------------------------------------
    def receive(self, frame: bytes) -> list[Event]:
        """Handle one whole frame from the peer."""
        raise NotImplementedError

    def qkd_keys(self, keys: Sequence[QKDKey]) -> list[Event]:
        """Answer a :class:`NeedQKDKeys` with the keys the source delivered."""
        raise NotImplementedError

    def qkd_failed(self, error: QKDError) -> list[Event]:
        """Answer a :class:`NeedQKDKeys` with the source's failure; the policies decide."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    @property
    def suite(self) -> Suite:
        assert self._suite is not None
        return self._suite

    def _h(self, *parts: bytes) -> bytes:
        """H(TRANSCRIPT || lp(part)...).  The frames before the last part are already on the
        wire and absorbed once into a running hash; each call copies it and adds the last part."""
        frames, last = parts[:-1], parts[-1]
        absorbed = self._th_frames
        stale = len(absorbed) > len(frames) or any(a is not f for a, f in zip(absorbed, frames, strict=False))
        if self._th is None or stale:
            self._th = HASHES[self.suite.hash](_labels.TRANSCRIPT)
            absorbed = self._th_frames = []
        for frame in frames[len(absorbed):]:
            self._th.update(struct.pack(">I", len(frame)))
            self._th.update(frame)
            absorbed.append(frame)
        h = self._th.copy()
        h.update(struct.pack(">I", len(last)))
        h.update(last)
        digest: bytes = h.digest()
        return digest

    def _expand(self, secret: bytes, label: bytes) -> bytes:
        # HKDF-Expand for one hash length is T(1) = HMAC(PRK, info || 0x01) (RFC 5869 §2.3).
        return hmac.digest(secret, label + b"\x01", self.suite.hash)

    def _mac(self, secret: bytes, label: bytes, data: bytes) -> bytes:
        return hmac.digest(self._expand(secret, label), data, self.suite.hash)

    def _check_mac(self, secret: bytes, label: bytes, data: bytes, tag: bytes, what: str) -> None:
        if not hmac.compare_digest(self._mac(secret, label, data), tag):
            raise AuthenticationError(f"{what} key confirmation failed: the peer derived a different key "
                                      "(tampered handshake, or differing QKD keys)")

    def _catkdf(self, *, psk: bytes, ma: bytes, mb: bytes, context: bytes, label: bytes) -> bytes:
        suite = self.suite
        return catkdf_unchecked(suite.hash, suite.kdf, psk, self._k1, self._k2, ma, mb, context, label,
                                suite.hash_len)

    def _check_deadline(self) -> None:
        if self._now() - self._started > self.config.timeout:
            raise HandshakeTimeout(f"handshake did not finish within {self.config.timeout:g} s; "
                                   "check that the peer is up and the network is not dropping packets")

    def _go(self, event: Input, target: State) -> None:
        self.state = transition(self.role, self.state, event, target)

    def _fail(self, exc: BaseException) -> None:
        """Enter ERROR, drop secrets, and prepare an alert for the peer."""
        self.state = State.ERROR
        self._hs_secret = self._k1 = self._k2 = b""
        self._qkd = []
        if not isinstance(exc, (PeerAlertError, LocalProtocolError)):
            reason = str(exc) if isinstance(exc, HybridKexError) else "internal error"
            self.error_alert = encode(Alert(_alert_code(exc), reason))

    def _guard(self, fn: Callable[[], list[Event]]) -> list[Event]:
        if self.state in (State.ERROR, State.DONE):
            raise LocalProtocolError(f"the handshake is already {self.state.value}; start a new one")
        try:
            self._check_deadline()
            return fn()
        except HybridKexError as exc:
            self._fail(exc)
            raise
        except (ValueError, TypeError) as exc:
            # Primitives reject malformed peer keys/ciphertexts with ValueError.
            err = RemoteProtocolError(f"peer sent an invalid value: {exc}")
            self._fail(err)
            raise err from None

    def _decode(self, frame: bytes, expected: type) -> object:
        message = decode(frame)
        if isinstance(message, Alert):
            raise PeerAlertError(f"peer aborted the handshake ({message.code.name.lower()}); it said: {message.reason}",
                                 int(message.code))
        if not isinstance(message, expected):
            name = type(message).__name__
            raise RemoteProtocolError(f"unexpected {name} while the {self.role.value} waits for {expected.__name__}")
        return message

    def _finish_result(self, session: bytes, th_final: bytes) -> HandshakeResult:
        assert self._peer is not None
        result = HandshakeResult(
            role=self.role.value, suite=self.suite, auth=self.config.authenticator.mode, peer=self._peer,
            local_fingerprint=self.config.authenticator.local_fingerprint(), qkd=self._qkd_status,
            transcript_hash=th_final,
            message_sizes=tuple(len(self._frames[k]) for k in ("ih", "rh", "if", "rf")),
            _session=session)
        self._hs_secret = self._k1 = self._k2 = b""
        self._qkd = []
        self.result = result
        return result

    def _session_and_finish(self, qkd_used: bool) -> tuple[bytes, bytes, bytes]:
        """Session secret, RespFinish core, and the final transcript hash."""
        psk = b"".join(k.key for k in self._qkd) if qkd_used else b""
        session = self._catkdf(psk=psk, ma=self._frames["ih"] + self._frames["if"], mb=self._frames["rh"],
                               context=_labels.CATKDF_CONTEXT_SESSION, label=_labels.CATKDF_LABEL_SESSION)
        core = push_resp_finish_core(RespFinish(qkd_used))
        th_final = self._h(self._frames["ih"], self._frames["rh"], self._frames["if"], core)
        return session, core, th_final

    def _qkd_refused(self, exc: QKDError, who: str) -> None:
        """A QKD key could not be had: fail, or note it and go on, as the policies say."""
        if isinstance(exc, QKDKeyReplay):
            raise exc
        if _REQUIRED in (self._policy, self._peer_policy):
            side = "this side" if self._policy == _REQUIRED else "the peer"
            raise QKDPolicyError(f"no QKD key ({who}: {exc}) and {side} requires QKD; fix the QKD source, "
                                 f"or run with {_PREFERRED_HINT} to go on with ML-KEM and X25519 only")
        self._qkd_status = QKDOutcome("unavailable", (), f"{who}: {exc}")
        self._qkd = []


class Initiator(Connection):
    """The side that connects.  As ETSI 014 master SAE it fetches new QKD keys."""

    role = Role.INITIATOR

    def __init__(self, config: HandshakeConfig, *, rng: Callable[[int], bytes] = os.urandom,
                 now: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, rng=rng, now=now)
        kems = {SUITES[s].kem for s in config.suites}
        if len(kems) != 1:
            raise ValueError("an initiator's offered suites must all use one KEM (it sends one key share)")

    def initiate(self) -> list[Event]:
        """Start the handshake: returns the InitHello to send."""
        return self._guard(self._initiate)

    def _initiate(self) -> list[Event]:
        self._go(Input.START, State.WAIT_RESP_HELLO)
        first = SUITES[self.config.suites[0]]
        self._kem = self._backend.kem(first.kem)
        self._ka = self._backend.key_agreement(first.key_agreement)
        self._kem_private, kem_key = self._kem.generate(self._rng(self._kem.sizes.decapsulation_key_seed))
        self._x_private, x_public = self._ka.generate(self._rng(self._ka.private_key_size))
        auth = self.config.authenticator
        self._identity = auth.local_identity(None)
        hello = InitHello(self._rng(NONCE_SIZE), self.config.suites, auth.kind, self._identity, x_public, kem_key,
                          self._policy, self.config.context)
        self._frames["ih"] = encode(hello)
        return [SendMessage(self._frames["ih"])]

    def receive(self, frame: bytes) -> list[Event]:
        """Handle one frame from the responder."""
        if self.state is State.WAIT_RESP_HELLO:
            return self._guard(lambda: self._on_resp_hello(frame))
        return self._guard(lambda: self._on_resp_finish(frame))

    def _on_resp_hello(self, frame: bytes) -> list[Event]:
        msg = self._decode(frame, RespHello)
        assert isinstance(msg, RespHello)
        if msg.suite not in self.config.suites:
            raise NegotiationError(f"responder chose suite 0x{msg.suite:04x}, which this side did not offer "
                                   "(downgrade attempt or broken peer)")
        self._suite = SUITES[msg.suite]
        self._frames["rh"] = frame
        self._peer_policy = msg.qkd_policy
        if self._peer_policy > _REQUIRED:
            raise RemoteProtocolError(f"malformed RespHello: QKD policy {self._peer_policy}")
        auth = self.config.authenticator
        auth.check_kind(msg.auth_kind)
        core = core_of(frame, msg)
        th_resp = self._h(self._frames["ih"], core)
        # The responder's identity names the shared key both tags use (PSK mode); it must be one we offered.
        self._key_id = auth.accept_key_id(self._identity, msg.identity)
        self._peer = auth.verify_peer(msg.auth_kind, msg.identity, Role.RESPONDER, th_resp, msg.auth_tag,
                                      key_id=self._key_id)
        self._k1 = self._ka.exchange(self._x_private, msg.x25519)
        self._k2 = self._kem.decapsulate(self._kem_private, msg.kem_ciphertext)
        self._hs_secret = self._catkdf(psk=b"", ma=self._frames["ih"], mb=core,
                                       context=_labels.CATKDF_CONTEXT_HANDSHAKE, label=_labels.CATKDF_LABEL_HANDSHAKE)
        self._check_mac(self._hs_secret, _labels.KEY_RESP_CONFIRM, th_resp + msg.auth_tag, msg.confirm, "responder")
        if self._policy == _REQUIRED and self._peer_policy == _OFF:
            raise QKDPolicyError("this side requires QKD but the responder runs without QKD; configure a QKD "
                                 f"source on the responder or use {_PREFERRED_HINT} here")
        if self._policy != _OFF and self._peer_policy != _OFF:
            self._go(Input.RESP_HELLO, State.WAIT_QKD_MASTER)
            return [NeedQKDKeys("master", 1, self.config.qkd_key_bits)]
        return self._send_finish(Input.RESP_HELLO)

    def qkd_keys(self, keys: Sequence[QKDKey]) -> list[Event]:
        """The QKD source delivered fresh keys (as master SAE)."""
        def run() -> list[Event]:
            if self.state is not State.WAIT_QKD_MASTER:
                raise LocalProtocolError("no QKD keys were asked for")
            if len(keys) != 1 or len(keys[0].key) * 8 != self.config.qkd_key_bits:
                raise QKDUnavailable(f"QKD source returned {len(keys)} key(s) of the wrong size; expected one "
                                     f"{self.config.qkd_key_bits}-bit key")
            self._qkd = list(keys)
            self._qkd_status = QKDOutcome("used", tuple(k.key_id for k in keys))
            return self._send_finish(Input.QKD_KEYS)
        return self._guard(run)

    def qkd_failed(self, error: QKDError) -> list[Event]:
        """The QKD source could not deliver; the policies decide whether to go on."""
        def run() -> list[Event]:
            if self.state is not State.WAIT_QKD_MASTER:
                raise LocalProtocolError("no QKD keys were asked for")
            self._qkd_refused(error, "QKD source")
            return self._send_finish(Input.QKD_KEYS)
        return self._guard(run)

    def _send_finish(self, event: Input) -> list[Event]:
        self._go(event, State.WAIT_RESP_FINISH)
        ids = tuple(k.key_id for k in self._qkd)
        core = push_init_finish_core(InitFinish(ids))
        th_init = self._h(self._frames["ih"], self._frames["rh"], core)
        tag = self.config.authenticator.make_tag(Role.INITIATOR, th_init, self._key_id)
        confirm = self._mac(self._hs_secret, _labels.KEY_INIT_CONFIRM, th_init + tag)
        self._frames["if"] = build_frame(MessageType.INIT_FINISH, core + auth_fields(tag, confirm))
        return [SendMessage(self._frames["if"])]

    def _on_resp_finish(self, frame: bytes) -> list[Event]:
        msg = self._decode(frame, RespFinish)
        assert isinstance(msg, RespFinish)
        self._frames["rf"] = frame
        if msg.qkd_used and not self._qkd:
            raise RemoteProtocolError("responder claims a QKD key was used, but none was sent")
        if self._qkd and not msg.qkd_used:
            self._qkd_refused(QKDUnavailable("it could not fetch the QKD key by key_ID"), "responder")
        session, _, th_final = self._session_and_finish(msg.qkd_used)
        self._check_mac(session, _labels.KEY_FINISH_CONFIRM, th_final, msg.confirm, "final")
        self._go(Input.RESP_FINISH, State.DONE)
        return [HandshakeComplete(self._finish_result(session, th_final))]


class Responder(Connection):
    """The side that listens.  As ETSI 014 slave SAE it fetches QKD keys by key_ID."""

    role = Role.RESPONDER

    def receive(self, frame: bytes) -> list[Event]:
        """Handle one frame from the initiator."""
        if self.state is State.START:
            return self._guard(lambda: self._on_init_hello(frame))
        return self._guard(lambda: self._on_init_finish(frame))

    def _on_init_hello(self, frame: bytes) -> list[Event]:
        msg = self._decode(frame, InitHello)
        assert isinstance(msg, InitHello)
        self._frames["ih"] = frame
        accepted = [s for s in msg.suites if s in self.config.suites]
        if not accepted:
            offered = ", ".join(SUITES[s].name if s in SUITES else f"0x{s:04x}" for s in msg.suites)
            mine = ", ".join(SUITES[s].name for s in self.config.suites)
            raise NegotiationError(f"no common suite: peer offers [{offered}], this side accepts [{mine}]; "
                                   "use the same --kem on both sides")
        self._suite = SUITES[accepted[0]]
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
        self._peer_kind, self._peer_identity = msg.auth_kind, msg.identity
        self._identity = auth.local_identity(msg.identity)
        kem = self._backend.kem(self.suite.kem)
        ka = self._backend.key_agreement(self.suite.key_agreement)
        if len(msg.kem_key) != kem.sizes.encapsulation_key:
            raise RemoteProtocolError(f"peer's {kem.name} encapsulation key is {len(msg.kem_key)} bytes, "
                                      f"expected {kem.sizes.encapsulation_key}")
        x_private, x_public = ka.generate(self._rng(ka.private_key_size))
        self._k1 = ka.exchange(x_private, msg.x25519)
        self._k2, ciphertext = kem.encapsulate(msg.kem_key)
        reply = RespHello(self._rng(NONCE_SIZE), self.suite.code, auth.kind, self._identity, x_public, ciphertext,
                          self._policy)
        core = push_resp_hello_core(reply)
        th_resp = self._h(frame, core)
        tag = auth.make_tag(Role.RESPONDER, th_resp, self._identity)
        self._hs_secret = self._catkdf(psk=b"", ma=frame, mb=core, context=_labels.CATKDF_CONTEXT_HANDSHAKE,
                                       label=_labels.CATKDF_LABEL_HANDSHAKE)
        confirm = self._mac(self._hs_secret, _labels.KEY_RESP_CONFIRM, th_resp + tag)
        self._frames["rh"] = build_frame(MessageType.RESP_HELLO, core + auth_fields(tag, confirm))
        self._go(Input.INIT_HELLO, State.WAIT_INIT_FINISH)
        return [SendMessage(self._frames["rh"])]

    def _on_init_finish(self, frame: bytes) -> list[Event]:
        msg = self._decode(frame, InitFinish)
        assert isinstance(msg, InitFinish)
        self._frames["if"] = frame
        core = core_of(frame, msg)
        th_init = self._h(self._frames["ih"], self._frames["rh"], core)
        # Authenticate the initiator and its possession of the PQC secrets before touching any QKD key.
        self._peer = self.config.authenticator.verify_peer(self._peer_kind, self._peer_identity, Role.INITIATOR,
                                                           th_init, msg.auth_tag, key_id=self._identity)
        self._check_mac(self._hs_secret, _labels.KEY_INIT_CONFIRM, th_init + msg.auth_tag, msg.confirm, "initiator")
        agreed = self._policy != _OFF and self._peer_policy != _OFF
        if msg.qkd_key_ids:
            if not agreed:
                raise RemoteProtocolError("initiator sent QKD key_IDs although QKD was not agreed")
            if len(msg.qkd_key_ids) != 1:
                raise RemoteProtocolError(f"initiator sent {len(msg.qkd_key_ids)} QKD key_IDs, expected 1")
            self._go(Input.INIT_FINISH, State.WAIT_QKD_SLAVE)
            self._wanted = msg.qkd_key_ids
            return [NeedQKDKeys("slave", len(msg.qkd_key_ids), self.config.qkd_key_bits, msg.qkd_key_ids)]
        if agreed:
            self._qkd_refused(QKDUnavailable("its QKD source delivered no key"), "initiator")
        self._go(Input.INIT_FINISH, State.DONE)
        return self._send_resp_finish(False)

    def qkd_keys(self, keys: Sequence[QKDKey]) -> list[Event]:
        """The QKD source delivered the keys asked for by key_ID (as slave SAE)."""
        def run() -> list[Event]:
            if self.state is not State.WAIT_QKD_SLAVE:
                raise LocalProtocolError("no QKD keys were asked for")
            if tuple(k.key_id for k in keys) != self._wanted or any(
                    len(k.key) * 8 != self.config.qkd_key_bits for k in keys):
                raise QKDUnavailable("QKD source returned keys that do not match the requested key_IDs or size")
            self._qkd = list(keys)
            self._qkd_status = QKDOutcome("used", self._wanted)
            self._go(Input.QKD_KEYS, State.DONE)
            return self._send_resp_finish(True)
        return self._guard(run)

    def qkd_failed(self, error: QKDError) -> list[Event]:
        """The QKD source could not deliver the keys; a replay always fails, otherwise the policies decide."""
        def run() -> list[Event]:
            if self.state is not State.WAIT_QKD_SLAVE:
                raise LocalProtocolError("no QKD keys were asked for")
            self._qkd_refused(error, "QKD source")
            self._go(Input.QKD_KEYS, State.DONE)
            return self._send_resp_finish(False)
        return self._guard(run)

    def _send_resp_finish(self, qkd_used: bool) -> list[Event]:
        session, core, th_final = self._session_and_finish(qkd_used)
        confirm = self._mac(session, _labels.KEY_FINISH_CONFIRM, th_final)
        self._frames["rf"] = encode(RespFinish(qkd_used, confirm))
        result = self._finish_result(session, th_final)
        return [SendMessage(self._frames["rf"]), HandshakeComplete(result)]
