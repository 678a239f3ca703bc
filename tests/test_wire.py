"""The v2 wire codec under fuzzing: every valid message round-trips, malformed input is a RemoteProtocolError."""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridkex import RemoteProtocolError
from hybridkex.io._transport import read_frame
from hybridkex.protocol._wire import (
    BLIND_SIZE,
    HEADER_SIZE,
    MAC_SIZE,
    MAGIC,
    MAX_BODY_SIZE,
    MAX_PSK_OFFER,
    MAX_QKD_KEYS,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Alert,
    AlertCode,
    CookieReply,
    InitConfirm,
    InitFinish,
    InitHello,
    Message,
    MessageType,
    QKDBlock,
    QKDReason,
    QKDStatus,
    RespFinish,
    RespHello,
    decode,
    encode,
    init_finish_core_block,
    parse_header,
    pull_init_finish_payload,
    pull_resp_finish_payload,
    push_init_finish_core,
    push_qkd_block,
    push_resp_finish_core,
    vec8,
    vec16,
)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(240)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def short(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


init_hellos = st.builds(
    InitHello, timestamp=st.integers(0, 2**64 - 1), nonce=fixed(NONCE_SIZE),
    suites=st.lists(u16, min_size=1, max_size=0x7F).map(tuple), auth_kind=u8, qkd_policy=u8, context=short(0xFF),
    x25519=short(0xFF), kem_key=short(2048), psk_ids=st.lists(fixed(BLIND_SIZE), max_size=MAX_PSK_OFFER).map(tuple),
    mac1=fixed(MAC_SIZE), mac2=fixed(MAC_SIZE))
resp_hellos = st.builds(RespHello, nonce=fixed(NONCE_SIZE), suite=u16, qkd_policy=u8, x25519=short(0xFF),
                        kem_ciphertext=short(2048), psk_choice=u8, sealed=short(4096))
sealed_messages = st.one_of(*(st.builds(cls, sealed=short(4096)) for cls in (InitFinish, RespFinish, InitConfirm)))
cookie_replies = st.builds(CookieReply, nonce=fixed(12), sealed_cookie=fixed(32))
alerts = st.builds(Alert, code=st.sampled_from(list(AlertCode)))
messages: st.SearchStrategy[Message] = st.one_of(init_hellos, resp_hellos, sealed_messages, cookie_replies, alerts)
frames = messages.map(encode)


def _header(mtype: int, length: int, *, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    return magic + bytes([version, mtype]) + struct.pack(">I", length)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, inserted or deleted; half the time re-framed so the body gets parsed."""
    frame = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 4))):
        if not frame:  # deletions may have eaten it all; the strategy itself must never fail
            break
        pos = draw(st.integers(0, len(frame) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[pos:pos + draw(st.integers(1, 8))]
    out = bytes(frame)
    if len(out) >= HEADER_SIZE and draw(st.booleans()):
        out = out[:4] + struct.pack(">I", len(out) - HEADER_SIZE) + out[HEADER_SIZE:]
    return out


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A correct header for a known type over an arbitrary body: gets past parse_header into the pullers."""
    body = draw(st.binary(max_size=600))
    return _header(draw(st.sampled_from(list(MessageType))), len(body)) + body


@st.composite
def lying_vec(draw: st.DrawFn, width: int) -> bytes:
    """A length-prefixed field whose prefix usually tells the truth.  The data never outgrows its prefix
    (a one-byte prefix holds at most 255 bytes), so the strategy itself cannot fail."""
    limit = (1 << (8 * width)) - 1
    data = draw(st.binary(max_size=min(300, limit)))
    length = len(data) if draw(st.integers(0, 9)) else draw(st.integers(0, limit))
    return length.to_bytes(width, "big") + data


@settings(FUZZ, max_examples=2000)
@given(lying_vec(1))
def test_lying_vec_never_overflows_its_prefix(field: bytes) -> None:
    # The strategy is total (its v1 twin raised OverflowError about one full run in three).
    assert len(field) - 1 <= 0xFF


any_bytes = st.one_of(st.binary(max_size=200), framed_garbage(), mutated_frames(),
                      st.builds(lambda t, a, b: _header(t, len(a + b)) + a + b,
                                st.sampled_from(list(MessageType)), lying_vec(1), lying_vec(2)))


@FUZZ
@given(any_bytes)
def test_arbitrary_bytes_decode_or_raise_remote_error(data: bytes) -> None:
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    if isinstance(message, Alert) and data[HEADER_SIZE] not in {int(c) for c in AlertCode}:
        return  # a newer peer's alert code decodes as INTERNAL
    assert encode(message) == data  # a frame that decodes has exactly one encoding


@FUZZ
@given(messages)
def test_round_trip(message: Message) -> None:
    frame = encode(message)
    assert decode(frame) == message
    assert parse_header(frame[:HEADER_SIZE]) == (MessageType(frame[3]), len(frame) - HEADER_SIZE)


@FUZZ
@given(frames, st.data())
def test_every_strict_prefix_is_truncated(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(frame[:cut])


@FUZZ
@given(frames, st.binary(min_size=1, max_size=64))
def test_trailing_bytes_in_the_body(frame: bytes, extra: bytes) -> None:
    body = frame[HEADER_SIZE:] + extra
    with pytest.raises(RemoteProtocolError, match="trailing|malformed|truncated"):
        decode(frame[:4] + struct.pack(">I", len(body)) + body)


@FUZZ
@given(st.sampled_from(list(MessageType)), st.integers(MAX_BODY_SIZE + 1, 0xFFFFFFFF))
def test_oversized_length_rejected_from_the_header_alone(mtype: MessageType, length: int) -> None:
    with pytest.raises(RemoteProtocolError, match="oversized"):
        parse_header(_header(mtype, length))


def test_oversized_header_refused_without_waiting_for_the_body() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_header(MessageType.INIT_HELLO, MAX_BODY_SIZE + 1))
        started = time.monotonic()
        with pytest.raises(RemoteProtocolError, match="oversized"):
            read_frame(b, time.monotonic() + 5)
        assert time.monotonic() - started < 4  # refused on the header, not after a timeout


@FUZZ
@given(st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC), st.binary(min_size=6, max_size=64))
def test_bad_magic(magic: bytes, rest: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a hybridkex peer"):
        decode(magic + rest)


@FUZZ
@given(st.integers(0, 0xFF).filter(lambda v: v != PROTOCOL_VERSION), frames)
def test_wrong_version_names_both_versions(version: int, frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"version {version}.*speaks {PROTOCOL_VERSION}"):
        decode(frame[:2] + bytes([version]) + frame[3:])


def test_version_one_is_refused() -> None:
    v1 = _header(1, 0, version=1)
    with pytest.raises(RemoteProtocolError, match="version 1, this side speaks 2"):
        decode(v1)


@FUZZ
@given(st.integers(0, 0xFF).filter(lambda t: t not in {int(m) for m in MessageType}), st.binary(max_size=64))
def test_unknown_message_type(mtype: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        decode(_header(mtype, len(body)) + body)


def test_encoder_refuses_oversized_bodies() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(InitFinish(bytes(MAX_BODY_SIZE)))


def test_alerts_carry_a_code_only() -> None:
    """An unauthenticated peer cannot put words in our mouth: the text is ours, chosen by the code."""
    frame = encode(Alert(AlertCode.AUTH_FAILED))
    assert frame == _header(MessageType.ALERT, 1) + bytes([AlertCode.AUTH_FAILED])
    assert decode(frame).text == "authentication or key confirmation failed"  # type: ignore[union-attr]
    # A code from a newer peer decodes as INTERNAL, with our fixed words.
    assert decode(_header(MessageType.ALERT, 1) + b"\xee") == Alert(AlertCode.INTERNAL)
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode(_header(MessageType.ALERT, 5) + b"\x02evil")


def test_no_identity_travels_in_clear() -> None:
    """InitHello and RespHello's public part carry no identity field: everything naming a party is sealed."""
    assert "identity" not in InitHello.__dataclass_fields__
    assert "identity" not in RespHello.__dataclass_fields__
    assert set(InitFinish.__dataclass_fields__) == {"sealed"} == set(RespFinish.__dataclass_fields__)


# -- the sealed payloads' own codecs -----------------------------------------------------------------------

blocks = st.one_of(
    st.builds(QKDBlock, status=st.just(QKDStatus.OFF)),
    st.builds(QKDBlock, status=st.just(QKDStatus.USED), master_sae_id=st.text(max_size=40),
              slave_sae_id=st.text(max_size=40), key_bits=u16,
              key_ids=st.lists(st.uuids(), min_size=1, max_size=MAX_QKD_KEYS, unique=True).map(tuple)),
    st.builds(QKDBlock, status=st.just(QKDStatus.UNAVAILABLE),
              reason=st.sampled_from([r for r in QKDReason if r is not QKDReason.NONE]), key_bits=u16))


@FUZZ
@given(st.binary(max_size=3000), blocks, st.binary(max_size=5000), st.binary(max_size=64))
def test_init_finish_payload_round_trip(identity: bytes, block: QKDBlock, tag: bytes, confirm: bytes) -> None:
    core = push_init_finish_core(identity, block)
    payload = pull_init_finish_payload(core + vec16(tag) + vec8(confirm))
    assert (payload.identity, payload.qkd, payload.auth_tag, payload.confirm, payload.core) == \
        (identity, block, tag, confirm, core)
    # The encoding is canonical (§6.3): the bytes sent are what the decoded block encodes to again,
    # so the session context may take either.
    assert init_finish_core_block(payload.core) == push_qkd_block(payload.qkd) == push_qkd_block(block)


@pytest.mark.parametrize("block, why", [
    (QKDBlock(QKDStatus.USED), "used without key_IDs"),
    (QKDBlock(QKDStatus.OFF, key_ids=(uuid.uuid4(),)), "off with key_IDs"),
    (QKDBlock(QKDStatus.UNAVAILABLE), "unavailable without a reason"),
    (QKDBlock(QKDStatus.OFF, QKDReason.SOURCE_FAILED), "off with a reason"),
])
def test_incoherent_qkd_blocks_are_refused(block: QKDBlock, why: str) -> None:
    data = push_init_finish_core(b"", block) + vec16(b"t") + vec8(b"c")
    with pytest.raises(RemoteProtocolError, match="disagree"):
        pull_init_finish_payload(data)


def test_repeated_and_too_many_key_ids_are_refused() -> None:
    k = uuid.uuid4()
    twice = push_init_finish_core(b"", QKDBlock(QKDStatus.USED, key_ids=(k,))).replace(b"\x01" + k.bytes,
                                                                                   b"\x02" + k.bytes * 2)
    with pytest.raises(RemoteProtocolError, match="repeated"):
        pull_init_finish_payload(twice + vec16(b"") + vec8(b""))
    with pytest.raises(ValueError, match="too many"):
        push_init_finish_core(b"", QKDBlock(QKDStatus.USED, key_ids=tuple(uuid.uuid4() for _ in range(17))))


@pytest.mark.parametrize("status, reason, tag, ok", [
    (QKDStatus.OFF, QKDReason.NONE, b"", True),
    (QKDStatus.UNAVAILABLE, QKDReason.LINK_ABORTED, b"sig", True),
    (QKDStatus.UNAVAILABLE, QKDReason.LINK_ABORTED, b"", False),   # a fallback must be signed
    (QKDStatus.OFF, QKDReason.NONE, b"sig", False),
    (QKDStatus.USED, QKDReason.NONE, b"", False),                  # not an outcome RespFinish can state
])
def test_resp_finish_payload_rules(status: QKDStatus, reason: QKDReason, tag: bytes, ok: bool) -> None:
    data = push_resp_finish_core(status, reason) + vec16(tag) + vec8(b"c" * 32)
    if ok:
        assert pull_resp_finish_payload(data).auth_tag == tag
    else:
        with pytest.raises(RemoteProtocolError):
            pull_resp_finish_payload(data)
