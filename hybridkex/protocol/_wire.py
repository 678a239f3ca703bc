"""Wire format, version 2 (``docs/protocol.md`` §3-§4): framed messages with explicit lengths.

Frame: ``"HX" | version u8 | type u8 | body length u32 | body``.  Every variable field in a
body carries its own length prefix; a body must be consumed exactly, so each valid frame
has exactly one parse.  Everything after InitHello that names a party (identities,
signatures, MACs, QKD key_IDs) travels in a ``sealed`` field (ChaCha20-Poly1305 under a
key from the handshake secret); its plaintext has its own codec here too.

Encoders are ``push_*`` and decoders ``pull_*`` over a :class:`Buffer`, after aioquic.
"""

from __future__ import annotations

import functools
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from .._errors import RemoteProtocolError
from ._record import fast_init

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "HEADER_SIZE", "MAX_BODY_SIZE", "NONCE_SIZE", "MAC_SIZE", "BLIND_SIZE",
    "MAX_QKD_KEYS", "MAX_SUITES", "MAX_PSK_OFFER", "MessageType", "AlertCode", "ALERT_TEXT",
    "QKDStatus", "QKDReason", "QKD_REASON_TEXT", "QKDBlock",
    "InitHello", "RespHello", "InitFinish", "RespFinish", "InitConfirm", "CookieReply", "Alert", "Message",
    "RespHelloPayload", "InitFinishPayload", "RespFinishPayload",
    "encode", "decode", "parse_header", "build_frame", "vec8", "vec16",
    "push_qkd_block", "push_resp_hello_payload", "pull_resp_hello_payload", "push_init_finish_core",
    "init_finish_core_block", "resp_hello_body",
    "pull_init_finish_payload", "push_resp_finish_core", "pull_resp_finish_payload", "pull_init_confirm_payload",
    "init_hello_prefix", "resp_hello_public",
]

MAGIC = b"HX"
PROTOCOL_VERSION = 2
HEADER_SIZE = 8
#: Largest body accepted: an ML-DSA-87 InitFinish is ~7.3 KiB; anything past 32 KiB is an attack or a bug.
MAX_BODY_SIZE = 32 * 1024
NONCE_SIZE = 32
#: InitHello's mac1 and mac2, and each blinded PSK identifier.
MAC_SIZE = 16
BLIND_SIZE = 16
MAX_QKD_KEYS = 16
MAX_SUITES = 0x7F
#: PSKs an initiator may offer at once (the ratchet's current and previous key).
MAX_PSK_OFFER = 4
#: ``psk_choice`` in a RespHello of signature mode.
NO_PSK = 0xFF
COOKIE_NONCE_SIZE = 12
COOKIE_SIZE = 16
AEAD_TAG_SIZE = 16


class MessageType(IntEnum):
    INIT_HELLO = 1
    RESP_HELLO = 2
    INIT_FINISH = 3
    RESP_FINISH = 4
    INIT_CONFIRM = 5
    COOKIE_REPLY = 6
    ALERT = 21


class AlertCode(IntEnum):
    """Why a side aborted.  Sent unauthenticated (as TLS alerts), so it carries a code only: the
    receiver shows the fixed text of :data:`ALERT_TEXT`, never words chosen by the peer."""

    BAD_MESSAGE = 1
    AUTH_FAILED = 2
    UNKNOWN_PEER = 3
    NO_COMMON_SUITE = 4
    QKD_POLICY = 5
    QKD_UNAVAILABLE = 6
    QKD_REPLAY = 7
    TIMEOUT = 9
    INTERNAL = 10
    CONTEXT_MISMATCH = 11


ALERT_TEXT: dict[AlertCode, str] = {
    AlertCode.BAD_MESSAGE: "it received a malformed or unexpected message",
    AlertCode.AUTH_FAILED: "authentication or key confirmation failed",
    AlertCode.UNKNOWN_PEER: "it does not know this side's identity or pre-shared key",
    AlertCode.NO_COMMON_SUITE: "no common suite or authentication mode (check --kem and the auth mode on both sides)",
    AlertCode.QKD_POLICY: "its QKD policy does not allow going on without a QKD key",
    AlertCode.QKD_UNAVAILABLE: "it could not get the QKD key",
    AlertCode.QKD_REPLAY: "the QKD key_ID was already used",
    AlertCode.TIMEOUT: "the handshake timed out",
    AlertCode.INTERNAL: "internal error",
    AlertCode.CONTEXT_MISMATCH: "the application context differs (another application or integration)",
}


class QKDStatus(IntEnum):
    OFF = 0
    USED = 1
    UNAVAILABLE = 2


class QKDReason(IntEnum):
    """Why a side went on without QKD (sent to the peer; the local log has the details)."""

    NONE = 0
    SOURCE_FAILED = 1
    LINK_ABORTED = 2
    NO_SOURCE = 3
    NO_KEY_MATERIAL = 4


QKD_REASON_TEXT: dict[QKDReason, str] = {
    QKDReason.NONE: "",
    QKDReason.SOURCE_FAILED: "its QKD source (KME) failed or is unreachable",
    QKDReason.LINK_ABORTED: "its QKD link aborted (error rate too high: possible eavesdropper)",
    QKDReason.NO_SOURCE: "it has no QKD source configured",
    QKDReason.NO_KEY_MATERIAL: "its QKD source has no key material left",
}


@fast_init
@dataclass(frozen=True)
class QKDBlock:
    """What QKD contributes: in InitFinish (the master's view) and in the session context."""

    status: QKDStatus
    reason: QKDReason = QKDReason.NONE
    master_sae_id: str = ""
    slave_sae_id: str = ""
    key_bits: int = 0
    key_ids: tuple[uuid.UUID, ...] = ()


@fast_init
@dataclass(frozen=True)
class InitHello:
    timestamp: int
    nonce: bytes
    suites: tuple[int, ...]
    auth_kind: int
    qkd_policy: int
    context: bytes
    x25519: bytes
    kem_key: bytes
    psk_ids: tuple[bytes, ...]
    mac1: bytes
    mac2: bytes


@fast_init
@dataclass(frozen=True)
class RespHello:
    nonce: bytes
    suite: int
    qkd_policy: int
    x25519: bytes
    kem_ciphertext: bytes
    psk_choice: int
    sealed: bytes


@dataclass(frozen=True)
class InitFinish:
    sealed: bytes


@dataclass(frozen=True)
class RespFinish:
    sealed: bytes


@dataclass(frozen=True)
class InitConfirm:
    sealed: bytes


@dataclass(frozen=True)
class CookieReply:
    nonce: bytes
    sealed_cookie: bytes


@dataclass(frozen=True)
class Alert:
    code: AlertCode

    @property
    def text(self) -> str:
        return ALERT_TEXT[self.code]


Message = InitHello | RespHello | InitFinish | RespFinish | InitConfirm | CookieReply | Alert


@dataclass(frozen=True)
class RespHelloPayload:
    identity: bytes
    auth_tag: bytes


@fast_init
@dataclass(frozen=True)
class InitFinishPayload:
    identity: bytes
    qkd: QKDBlock
    auth_tag: bytes
    confirm: bytes
    core: bytes
    """``vec16(identity) || qkd block``: what the initiator's signature covers."""


@fast_init
@dataclass(frozen=True)
class RespFinishPayload:
    status: QKDStatus
    reason: QKDReason
    auth_tag: bytes
    confirm: bytes


_TYPES: dict[type, MessageType] = {
    InitHello: MessageType.INIT_HELLO, RespHello: MessageType.RESP_HELLO, InitFinish: MessageType.INIT_FINISH,
    RespFinish: MessageType.RESP_FINISH, InitConfirm: MessageType.INIT_CONFIRM,
    CookieReply: MessageType.COOKIE_REPLY, Alert: MessageType.ALERT,
}


_E = TypeVar("_E", bound=IntEnum)
#: Each wire enum's members by value, for decoding without the enum's (Python-level) call.
_MEMBERS: dict[type[IntEnum], dict[int, IntEnum]] = {}


def _member(enum: type[_E], raw: int) -> _E | None:
    members = _MEMBERS.get(enum)
    if members is None:
        members = _MEMBERS[enum] = {int(m): m for m in enum}
    member = members.get(raw)
    return member  # type: ignore[return-value]  # the map holds members of ``enum`` only


# Enum members looked up on their class cost more than the checks that use them (Python 3.11).
_USED, _UNAVAILABLE, _NO_REASON = QKDStatus.USED, QKDStatus.UNAVAILABLE, QKDReason.NONE
_U16 = struct.Struct(">H").pack


class Buffer:
    """A read cursor over a body; every pull checks the bytes are there."""

    # A handshake pulls some seventy fields: each pull is one call that checks and slices in place.
    __slots__ = ("data", "pos", "end", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.what = what

    def _truncated(self, n: int, field_name: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"truncated {self.what}: field {field_name} needs {n} bytes, "
                                   f"{self.end - self.pos} left")

    def pull_u8(self, name: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self._truncated(1, name)
        self.pos = pos + 1
        return self.data[pos]

    def pull_u16(self, name: str) -> int:
        pos = self.pos
        if pos + 2 > self.end:
            raise self._truncated(2, name)
        self.pos = pos + 2
        data = self.data
        return data[pos] << 8 | data[pos + 1]

    def pull_bytes(self, n: int, name: str) -> bytes:
        pos = self.pos
        end = pos + n
        if end > self.end:
            raise self._truncated(n, name)
        self.pos = end
        return self.data[pos:end]

    def pull_vec8(self, name: str) -> bytes:
        data, pos = self.data, self.pos
        if pos >= self.end:
            raise self._truncated(1, name)
        end = pos + 1 + data[pos]
        if end > self.end:
            self.pos = pos + 1
            raise self._truncated(data[pos], name)
        self.pos = end
        return data[pos + 1:end]

    def pull_vec16(self, name: str) -> bytes:
        data, pos = self.data, self.pos
        if pos + 2 > self.end:
            raise self._truncated(2, name)
        n = data[pos] << 8 | data[pos + 1]
        end = pos + 2 + n
        if end > self.end:
            self.pos = pos + 2
            raise self._truncated(n, name)
        self.pos = end
        return data[pos + 2:end]

    def pull_struct(self, fields: struct.Struct, name: str) -> tuple[Any, ...]:
        """Several fixed-size fields at once (``name`` says which, for the error)."""
        pos = self.pos
        end = pos + fields.size
        if end > self.end:
            raise self._truncated(fields.size, name)
        self.pos = end
        return fields.unpack_from(self.data, pos)

    def pull_text8(self, name: str) -> str:
        raw = self.pull_vec8(name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"malformed {self.what}: {name} is not UTF-8") from None

    def pull_enum(self, enum: type[_E], name: str) -> _E:
        pos = self.pos
        if pos >= self.end:
            raise self._truncated(1, name)
        self.pos = pos + 1
        raw = self.data[pos]
        member = _member(enum, raw)
        if member is None:
            raise RemoteProtocolError(f"malformed {self.what}: {name} {raw} is not defined")
        return member

    def finish(self) -> None:
        if self.pos != self.end:
            raise RemoteProtocolError(f"malformed {self.what}: {self.end - self.pos} trailing bytes")


def vec8(data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise ValueError("field too long for an 8-bit length")
    return bytes([len(data)]) + data


def vec16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("field too long for a 16-bit length")
    return _U16(len(data)) + data


# -- InitHello -----------------------------------------------------------------------------------

_INIT_HELLO_START = struct.Struct(f">Q{NONCE_SIZE}sB")
_TWO_U8 = struct.Struct(">BB")


@functools.lru_cache(maxsize=MAX_SUITES)
def _suite_list(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def init_hello_prefix(m: InitHello) -> bytes:
    """The body up to the PSK offer: what the blinded PSK identifiers are computed over."""
    if not 0 < len(m.suites) <= MAX_SUITES:
        raise ValueError(f"InitHello must offer 1..{MAX_SUITES} suites")
    if len(m.nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 32 bytes")
    return (struct.pack(">Q", m.timestamp) + m.nonce + bytes([len(m.suites)])
            + struct.pack(f">{len(m.suites)}H", *m.suites) + bytes([m.auth_kind, m.qkd_policy])
            + vec8(m.context) + vec8(m.x25519) + vec16(m.kem_key))


def push_init_hello(m: InitHello) -> bytes:
    if len(m.psk_ids) > MAX_PSK_OFFER or any(len(p) != BLIND_SIZE for p in m.psk_ids):
        raise ValueError(f"InitHello offers at most {MAX_PSK_OFFER} blinded PSK identifiers of {BLIND_SIZE} bytes")
    if len(m.mac1) != MAC_SIZE or len(m.mac2) != MAC_SIZE:
        raise ValueError("mac1 and mac2 must be 16 bytes")
    return init_hello_prefix(m) + bytes([len(m.psk_ids)]) + b"".join(m.psk_ids) + m.mac1 + m.mac2


def _pull_init_hello(buf: Buffer) -> InitHello:
    timestamp, nonce, count = buf.pull_struct(_INIT_HELLO_START, "timestamp, nonce and suite count")
    if not 0 < count <= MAX_SUITES:
        raise RemoteProtocolError(f"malformed InitHello: {count} suites offered (1..{MAX_SUITES} allowed)")
    suites = buf.pull_struct(_suite_list(count), "suites")
    auth_kind, policy = buf.pull_struct(_TWO_U8, "auth_kind and qkd_policy")
    context, x25519, kem_key = buf.pull_vec8("context"), buf.pull_vec8("x25519"), buf.pull_vec16("kem_key")
    n_psk = buf.pull_u8("psk_ids")
    if n_psk > MAX_PSK_OFFER:
        raise RemoteProtocolError(f"malformed InitHello: {n_psk} PSK identifiers (at most {MAX_PSK_OFFER})")
    psk_ids = tuple(buf.pull_bytes(BLIND_SIZE, "psk_id") for _ in range(n_psk))
    return InitHello(timestamp, nonce, suites, auth_kind, policy, context, x25519, kem_key, psk_ids,
                     buf.pull_bytes(MAC_SIZE, "mac1"), buf.pull_bytes(MAC_SIZE, "mac2"))


# -- RespHello -----------------------------------------------------------------------------------

def _push_resp_hello_public(m: RespHello) -> bytes:
    return (m.nonce + struct.pack(">H", m.suite) + bytes([m.qkd_policy]) + vec8(m.x25519)
            + vec16(m.kem_ciphertext) + bytes([m.psk_choice]))


def resp_hello_public(m: RespHello) -> bytes:
    """RespHello's body before ``sealed``: MB's first part and the sealed part's AAD input."""
    return _push_resp_hello_public(m)


def push_resp_hello(m: RespHello) -> bytes:
    return resp_hello_body(_push_resp_hello_public(m), m.sealed)


def resp_hello_body(public: bytes, sealed: bytes) -> bytes:
    """RespHello's body from its public part (:func:`resp_hello_public`) and its sealed part."""
    return public + vec16(sealed)


_RESP_HELLO_START = struct.Struct(f">{NONCE_SIZE}sHB")


def _pull_resp_hello(buf: Buffer) -> RespHello:
    nonce, suite, policy = buf.pull_struct(_RESP_HELLO_START, "nonce, suite and qkd_policy")
    return RespHello(nonce, suite, policy, buf.pull_vec8("x25519"), buf.pull_vec16("kem_ciphertext"),
                     buf.pull_u8("psk_choice"), buf.pull_vec16("sealed"))


def push_resp_hello_payload(p: RespHelloPayload) -> bytes:
    return vec16(p.identity) + vec16(p.auth_tag)


def pull_resp_hello_payload(data: bytes) -> RespHelloPayload:
    buf = Buffer(data, "RespHello payload")
    payload = RespHelloPayload(buf.pull_vec16("identity"), buf.pull_vec16("auth_tag"))
    buf.finish()
    return payload


# -- InitFinish ----------------------------------------------------------------------------------

def push_qkd_block(q: QKDBlock) -> bytes:
    master, slave = q.master_sae_id.encode(), q.slave_sae_id.encode()
    if len(q.key_ids) > MAX_QKD_KEYS or len(master) > 0xFF or len(slave) > 0xFF:
        raise ValueError("too many QKD key IDs, or an SAE ID longer than 255 bytes")
    return b"".join((bytes((q.status, q.reason, len(master))), master, bytes((len(slave),)), slave,
                     _U16(q.key_bits), bytes((len(q.key_ids),)), *(k.bytes for k in q.key_ids)))


def _pull_qkd_block(buf: Buffer) -> QKDBlock:
    status = buf.pull_enum(QKDStatus, "qkd_status")
    reason = buf.pull_enum(QKDReason, "qkd_reason")
    master, slave = buf.pull_text8("master_sae_id"), buf.pull_text8("slave_sae_id")
    bits = buf.pull_u16("key_bits")
    count = buf.pull_u8("qkd_key_ids")
    if count > MAX_QKD_KEYS:
        raise RemoteProtocolError(f"malformed {buf.what}: {count} QKD key IDs (at most {MAX_QKD_KEYS})")
    ids = tuple(uuid.UUID(bytes=buf.pull_bytes(16, "qkd_key_id")) for _ in range(count))
    if len(set(ids)) != len(ids):
        raise RemoteProtocolError(f"malformed {buf.what}: a QKD key ID is repeated")
    if (status is _USED) != bool(ids) or (status is _UNAVAILABLE) != (reason is not _NO_REASON):
        raise RemoteProtocolError(f"malformed {buf.what}: QKD status, reason and key_IDs disagree")
    return QKDBlock(status, reason, master, slave, bits, ids)


def push_init_finish_core(identity: bytes, qkd: QKDBlock) -> bytes:
    return vec16(identity) + push_qkd_block(qkd)


def init_finish_core_block(core: bytes) -> bytes:
    """The QKD block's bytes inside an InitFinish core (``vec16(identity) || qkd block``)."""
    return core[2 + (core[0] << 8 | core[1]):]


def pull_init_finish_payload(data: bytes) -> InitFinishPayload:
    buf = Buffer(data, "InitFinish payload")
    identity = buf.pull_vec16("identity")
    qkd = _pull_qkd_block(buf)
    core = data[:buf.pos]
    payload = InitFinishPayload(identity, qkd, buf.pull_vec16("auth_tag"), buf.pull_vec8("confirm"), core)
    buf.finish()
    return payload


# -- RespFinish and InitConfirm ------------------------------------------------------------------

def push_resp_finish_core(status: QKDStatus, reason: QKDReason) -> bytes:
    return bytes([int(status), int(reason)])


def pull_resp_finish_payload(data: bytes) -> RespFinishPayload:
    buf = Buffer(data, "RespFinish payload")
    status = buf.pull_enum(QKDStatus, "qkd_status")
    reason = buf.pull_enum(QKDReason, "qkd_reason")
    payload = RespFinishPayload(status, reason, buf.pull_vec16("auth_tag"), buf.pull_vec8("confirm"))
    buf.finish()
    # The outcome is OFF ("confirmed as InitFinish declared") or UNAVAILABLE (the responder's signed fallback).
    if status is _USED or (status is _UNAVAILABLE) != (reason is not _NO_REASON) or \
            (status is _UNAVAILABLE) != bool(payload.auth_tag):
        raise RemoteProtocolError("malformed RespFinish payload: QKD status, reason and signature disagree")
    return payload


def pull_init_confirm_payload(data: bytes) -> bytes:
    buf = Buffer(data, "InitConfirm payload")
    confirm = buf.pull_vec8("confirm")
    buf.finish()
    return confirm


def _pull_sealed(cls: type[InitFinish] | type[RespFinish] | type[InitConfirm]) -> Callable[[Buffer], Message]:
    return lambda buf: cls(buf.pull_vec16("sealed"))


# -- CookieReply and Alert ---------------------------------------------------------------------

def _pull_cookie_reply(buf: Buffer) -> CookieReply:
    return CookieReply(buf.pull_bytes(COOKIE_NONCE_SIZE, "nonce"),
                       buf.pull_bytes(COOKIE_SIZE + AEAD_TAG_SIZE, "sealed_cookie"))


def _pull_alert(buf: Buffer) -> Alert:
    raw = buf.pull_u8("code")
    try:
        code = AlertCode(raw)
    except ValueError:
        code = AlertCode.INTERNAL
    return Alert(code)


# -- frames --------------------------------------------------------------------------------------

def build_frame(mtype: MessageType, body: bytes) -> bytes:
    """Frame header + body, refusing bodies over the wire limit."""
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"message body of {len(body)} bytes exceeds the {MAX_BODY_SIZE}-byte limit")
    return MAGIC + bytes([PROTOCOL_VERSION, int(mtype)]) + struct.pack(">I", len(body)) + body


def encode(message: Message) -> bytes:
    """Encode a message with its frame header."""
    mtype = _TYPES[type(message)]
    if isinstance(message, InitHello):
        body = push_init_hello(message)
    elif isinstance(message, RespHello):
        body = push_resp_hello(message)
    elif isinstance(message, (InitFinish, RespFinish, InitConfirm)):
        body = vec16(message.sealed)
    elif isinstance(message, CookieReply):
        if len(message.nonce) != COOKIE_NONCE_SIZE or len(message.sealed_cookie) != COOKIE_SIZE + AEAD_TAG_SIZE:
            raise ValueError("malformed CookieReply")
        body = message.nonce + message.sealed_cookie
    else:
        body = bytes([int(message.code)])
    return build_frame(mtype, body)


def parse_header(header: bytes) -> tuple[MessageType, int]:
    """Check a frame header and return (type, body length).  Raises RemoteProtocolError."""
    if len(header) != HEADER_SIZE:
        raise _truncated_header(len(header))
    return _parse_header(header)


def _truncated_header(got: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"truncated frame header ({got} of {HEADER_SIZE} bytes)")


_HEADER = struct.Struct(">2sBBI")


def _parse_header(frame: bytes) -> tuple[MessageType, int]:
    """:func:`parse_header` of the first :data:`HEADER_SIZE` bytes of ``frame`` (at least that long)."""
    magic, version, raw_type, length = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise RemoteProtocolError("garbage on the connection: this is not a hybridkex peer (bad magic)")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"peer speaks hybridkex wire version {version}, this side speaks "
                                  f"{PROTOCOL_VERSION}; upgrade the older side")
    mtype = _MESSAGE_TYPES.get(raw_type)
    if mtype is None:
        raise RemoteProtocolError(f"unknown message type {raw_type}")
    if length > MAX_BODY_SIZE:
        raise RemoteProtocolError(f"oversized frame: body of {length} bytes exceeds the {MAX_BODY_SIZE}-byte limit")
    return mtype, length


_MESSAGE_TYPES: dict[int, MessageType] = {int(m): m for m in MessageType}


_PULL: dict[MessageType, Callable[[Buffer], Message]] = {
    MessageType.INIT_HELLO: _pull_init_hello, MessageType.RESP_HELLO: _pull_resp_hello,
    MessageType.INIT_FINISH: _pull_sealed(InitFinish), MessageType.RESP_FINISH: _pull_sealed(RespFinish),
    MessageType.INIT_CONFIRM: _pull_sealed(InitConfirm), MessageType.COOKIE_REPLY: _pull_cookie_reply,
    MessageType.ALERT: _pull_alert,
}


#: Each message type's name (for error messages), read without the enum's Python-level ``name`` property.
_NAMES: dict[MessageType, str] = {m: m.name for m in MessageType}


def decode(frame: bytes) -> Message:
    """Decode one whole frame (header and body).  Raises RemoteProtocolError on anything malformed."""
    if not isinstance(frame, (bytes, bytearray)):
        raise TypeError("frame must be bytes")
    frame = bytes(frame)
    if len(frame) < HEADER_SIZE:
        raise _truncated_header(len(frame))
    mtype, length = _parse_header(frame)
    body = frame[HEADER_SIZE:]
    if len(body) != length:
        raise RemoteProtocolError(f"truncated {_NAMES[mtype]} frame: header says {length} bytes, got {len(body)}")
    buf = Buffer(body, _NAMES[mtype])
    message = _PULL[mtype](buf)
    buf.finish()
    return message
