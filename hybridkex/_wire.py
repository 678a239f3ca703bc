"""Wire format, version 1: framed messages with explicit lengths and a hard size limit.

Frame: ``"HX" | version u8 | type u8 | body length u32 | body``.  Every variable field in a
body carries its own length prefix; a body must be consumed exactly.  Decoders return the
message and the raw bytes it was parsed from, because the transcript, the signatures and
CatKDF's MA/MB are computed over the exact bytes on the wire, never over a re-encoding.

Encoders are ``push_*`` and decoders ``pull_*`` over a :class:`Buffer`, after aioquic.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from ._errors import RemoteProtocolError

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "HEADER_SIZE", "MAX_BODY_SIZE", "MessageType",
    "InitHello", "RespHello", "InitFinish", "RespFinish", "Alert", "AlertCode", "Message",
    "encode", "decode", "parse_header", "build_frame", "auth_fields", "core_of",
]

MAGIC = b"HX"
PROTOCOL_VERSION = 1
HEADER_SIZE = 8
#: Largest body accepted: ML-DSA-87 RespHello is ~8.9 KiB; anything past 32 KiB is an attack or a bug.
MAX_BODY_SIZE = 32 * 1024
NONCE_SIZE = 32
MAX_QKD_KEYS = 16
MAX_SUITES = 0x7F


class MessageType(IntEnum):
    INIT_HELLO = 1
    RESP_HELLO = 2
    INIT_FINISH = 3
    RESP_FINISH = 4
    ALERT = 21


class AlertCode(IntEnum):
    """Why a side aborted.  Sent unauthenticated, for diagnosis only (as TLS alerts)."""

    BAD_MESSAGE = 1
    AUTH_FAILED = 2
    UNKNOWN_PEER = 3
    NO_COMMON_SUITE = 4
    QKD_POLICY = 5
    QKD_UNAVAILABLE = 6
    QKD_REPLAY = 7
    CONFIRM_FAILED = 8
    TIMEOUT = 9
    INTERNAL = 10
    CONTEXT_MISMATCH = 11


@dataclass(frozen=True)
class InitHello:
    nonce: bytes
    suites: tuple[int, ...]
    auth_kind: int
    identity: bytes
    x25519: bytes
    kem_key: bytes
    qkd_policy: int
    context: bytes


@dataclass(frozen=True)
class RespHello:
    nonce: bytes
    suite: int
    auth_kind: int
    identity: bytes
    x25519: bytes
    kem_ciphertext: bytes
    qkd_policy: int
    auth_tag: bytes = b""
    confirm: bytes = b""


@dataclass(frozen=True)
class InitFinish:
    qkd_key_ids: tuple[uuid.UUID, ...]
    auth_tag: bytes = b""
    confirm: bytes = b""


@dataclass(frozen=True)
class RespFinish:
    qkd_used: bool
    confirm: bytes = b""


@dataclass(frozen=True)
class Alert:
    code: AlertCode
    reason: str = field(default="")


Message = InitHello | RespHello | InitFinish | RespFinish | Alert

_TYPES: dict[type, MessageType] = {
    InitHello: MessageType.INIT_HELLO, RespHello: MessageType.RESP_HELLO,
    InitFinish: MessageType.INIT_FINISH, RespFinish: MessageType.RESP_FINISH, Alert: MessageType.ALERT,
}


class Buffer:
    """A read cursor over a body; every pull checks the bytes are there."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _take(self, n: int, field_name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise RemoteProtocolError(f"truncated {self.what}: field {field_name} needs {n} bytes, "
                                      f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def pull_u8(self, name: str) -> int:
        return self._take(1, name)[0]

    def pull_u16(self, name: str) -> int:
        value: int = struct.unpack(">H", self._take(2, name))[0]
        return value

    def pull_bytes(self, n: int, name: str) -> bytes:
        return self._take(n, name)

    def pull_vec8(self, name: str) -> bytes:
        return self._take(self.pull_u8(name), name)

    def pull_vec16(self, name: str) -> bytes:
        return self._take(self.pull_u16(name), name)

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise RemoteProtocolError(f"malformed {self.what}: {len(self.data) - self.pos} trailing bytes")


def _vec8(data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise ValueError("field too long for an 8-bit length")
    return bytes([len(data)]) + data


def _vec16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("field too long for a 16-bit length")
    return struct.pack(">H", len(data)) + data


def push_init_hello(m: InitHello) -> bytes:
    if not 0 < len(m.suites) <= MAX_SUITES:
        raise ValueError(f"InitHello must offer 1..{MAX_SUITES} suites")
    return (m.nonce + bytes([len(m.suites)]) + b"".join(struct.pack(">H", s) for s in m.suites)
            + bytes([m.auth_kind]) + _vec16(m.identity) + _vec8(m.x25519) + _vec16(m.kem_key)
            + bytes([m.qkd_policy]) + _vec8(m.context))


def push_resp_hello_core(m: RespHello) -> bytes:
    return (m.nonce + struct.pack(">H", m.suite) + bytes([m.auth_kind]) + _vec16(m.identity)
            + _vec8(m.x25519) + _vec16(m.kem_ciphertext) + bytes([m.qkd_policy]))


def push_resp_hello(m: RespHello) -> bytes:
    return push_resp_hello_core(m) + _vec16(m.auth_tag) + _vec8(m.confirm)


def push_init_finish_core(m: InitFinish) -> bytes:
    if len(m.qkd_key_ids) > MAX_QKD_KEYS:
        raise ValueError("too many QKD key IDs")
    return bytes([len(m.qkd_key_ids)]) + b"".join(k.bytes for k in m.qkd_key_ids)


def push_init_finish(m: InitFinish) -> bytes:
    return push_init_finish_core(m) + _vec16(m.auth_tag) + _vec8(m.confirm)


def push_resp_finish_core(m: RespFinish) -> bytes:
    return bytes([1 if m.qkd_used else 0])


def push_resp_finish(m: RespFinish) -> bytes:
    return push_resp_finish_core(m) + _vec8(m.confirm)


def _clean_reason(reason: str) -> str:
    # Alerts come from an unauthenticated peer: keep only short printable ASCII.
    return "".join(ch for ch in reason if 32 <= ord(ch) < 127)[:200]


def push_alert(m: Alert) -> bytes:
    return bytes([int(m.code)]) + _vec8(_clean_reason(m.reason).encode("ascii"))


def build_frame(mtype: MessageType, body: bytes) -> bytes:
    """Frame header + body, refusing bodies over the wire limit."""
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"message body of {len(body)} bytes exceeds the {MAX_BODY_SIZE}-byte limit")
    return MAGIC + bytes([PROTOCOL_VERSION, int(mtype)]) + struct.pack(">I", len(body)) + body


def auth_fields(auth_tag: bytes, confirm: bytes) -> bytes:
    """The trailing signature/MAC and confirmation fields of RespHello and InitFinish."""
    return _vec16(auth_tag) + _vec8(confirm)


def core_of(frame: bytes, message: RespHello | InitFinish | RespFinish) -> bytes:
    """The part of a received frame's body that its own tags cover: everything before them.

    Sliced from the bytes on the wire, never re-encoded, so the transcript is what was sent.
    """
    tail = 1 + len(message.confirm)
    if not isinstance(message, RespFinish):
        tail += 2 + len(message.auth_tag)
    return frame[HEADER_SIZE:len(frame) - tail]


def encode(message: Message) -> bytes:
    """Encode a message with its frame header."""
    mtype = _TYPES[type(message)]
    if isinstance(message, InitHello):
        body = push_init_hello(message)
    elif isinstance(message, RespHello):
        body = push_resp_hello(message)
    elif isinstance(message, InitFinish):
        body = push_init_finish(message)
    elif isinstance(message, RespFinish):
        body = push_resp_finish(message)
    else:
        body = push_alert(message)
    return build_frame(mtype, body)


def parse_header(header: bytes) -> tuple[MessageType, int]:
    """Check a frame header and return (type, body length).  Raises RemoteProtocolError."""
    if len(header) != HEADER_SIZE:
        raise RemoteProtocolError(f"truncated frame header ({len(header)} of {HEADER_SIZE} bytes)")
    if header[:2] != MAGIC:
        raise RemoteProtocolError("garbage on the connection: this is not a hybridkex peer (bad magic)")
    if header[2] != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"peer speaks hybridkex wire version {header[2]}, this side speaks "
                                  f"{PROTOCOL_VERSION}; upgrade the older side")
    try:
        mtype = MessageType(header[3])
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {header[3]}") from None
    (length,) = struct.unpack(">I", header[4:8])
    if length > MAX_BODY_SIZE:
        raise RemoteProtocolError(f"oversized frame: body of {length} bytes exceeds the {MAX_BODY_SIZE}-byte limit")
    return mtype, length


def _pull_init_hello(buf: Buffer) -> InitHello:
    nonce = buf.pull_bytes(NONCE_SIZE, "nonce")
    count = buf.pull_u8("suites")
    if not 0 < count <= MAX_SUITES:
        raise RemoteProtocolError(f"malformed InitHello: {count} suites offered (1..{MAX_SUITES} allowed)")
    suites = tuple(buf.pull_u16("suites") for _ in range(count))
    return InitHello(nonce, suites, buf.pull_u8("auth_kind"), buf.pull_vec16("identity"),
                     buf.pull_vec8("x25519"), buf.pull_vec16("kem_key"), buf.pull_u8("qkd_policy"),
                     buf.pull_vec8("context"))


def _pull_resp_hello(buf: Buffer) -> RespHello:
    return RespHello(buf.pull_bytes(NONCE_SIZE, "nonce"), buf.pull_u16("suite"), buf.pull_u8("auth_kind"),
                     buf.pull_vec16("identity"), buf.pull_vec8("x25519"), buf.pull_vec16("kem_ciphertext"),
                     buf.pull_u8("qkd_policy"), buf.pull_vec16("auth_tag"), buf.pull_vec8("confirm"))


def _pull_init_finish(buf: Buffer) -> InitFinish:
    count = buf.pull_u8("qkd_key_ids")
    if count > MAX_QKD_KEYS:
        raise RemoteProtocolError(f"malformed InitFinish: {count} QKD key IDs (at most {MAX_QKD_KEYS})")
    ids = tuple(uuid.UUID(bytes=buf.pull_bytes(16, "qkd_key_id")) for _ in range(count))
    if len(set(ids)) != len(ids):
        raise RemoteProtocolError("malformed InitFinish: a QKD key ID is repeated")
    return InitFinish(ids, buf.pull_vec16("auth_tag"), buf.pull_vec8("confirm"))


def _pull_resp_finish(buf: Buffer) -> RespFinish:
    flag = buf.pull_u8("qkd_used")
    if flag > 1:
        raise RemoteProtocolError("malformed RespFinish: qkd_used must be 0 or 1")
    return RespFinish(flag == 1, buf.pull_vec8("confirm"))


def _pull_alert(buf: Buffer) -> Alert:
    raw = buf.pull_u8("code")
    try:
        code = AlertCode(raw)
    except ValueError:
        code = AlertCode.INTERNAL
    reason = buf.pull_vec8("reason").decode("ascii", "replace")
    return Alert(code, _clean_reason(reason))


_PULL: dict[MessageType, Callable[[Buffer], Message]] = {
    MessageType.INIT_HELLO: _pull_init_hello, MessageType.RESP_HELLO: _pull_resp_hello,
    MessageType.INIT_FINISH: _pull_init_finish, MessageType.RESP_FINISH: _pull_resp_finish,
    MessageType.ALERT: _pull_alert,
}


def decode(frame: bytes) -> Message:
    """Decode one whole frame (header and body).  Raises RemoteProtocolError on anything malformed."""
    if not isinstance(frame, (bytes, bytearray)):
        raise TypeError("frame must be bytes")
    frame = bytes(frame)
    mtype, length = parse_header(frame[:HEADER_SIZE])
    body = frame[HEADER_SIZE:]
    if len(body) != length:
        raise RemoteProtocolError(f"truncated {mtype.name} frame: header says {length} bytes, got {len(body)}")
    buf = Buffer(body, mtype.name)
    message = _PULL[mtype](buf)
    buf.finish()
    # Every field is fixed-size or length-prefixed, every count is range-checked, and the body
    # must be consumed exactly, so each valid frame has exactly one parse (tests check that
    # re-encoding gives the same bytes).  Signatures and MACs cover the received bytes.
    return message
