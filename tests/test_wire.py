"""The wire decoder and the state machines under fuzzing: malformed input is a RemoteProtocolError, nothing else."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hybridkex import (
    HandshakeConfig,
    HybridKexError,
    Initiator,
    PeerAlertError,
    PSKAuthenticator,
    RemoteProtocolError,
    Responder,
    SendMessage,
    SignatureAuthenticator,
    generate_identity,
    get_backend,
)
from hybridkex._state import State
from hybridkex._transport import read_frame
from hybridkex._wire import (
    HEADER_SIZE,
    MAGIC,
    MAX_BODY_SIZE,
    MAX_QKD_KEYS,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Alert,
    AlertCode,
    InitFinish,
    InitHello,
    Message,
    MessageType,
    RespFinish,
    RespHello,
    decode,
    encode,
    parse_header,
)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Each example of the state-machine fuzzers builds fresh state machines (a few ML-KEM and X25519 operations).
FUZZ_SM = settings(FUZZ, max_examples=200)

# Every test here must finish in bounded time, whatever Hypothesis generates.
pytestmark = pytest.mark.timeout(240)


# -- strategies for valid messages ---------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)


def vec8(max_size: int = 0xFF) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


def vec16(max_size: int = 2048) -> st.SearchStrategy[bytes]:
    # Kept well below 0xFFFF so that every message fits MAX_BODY_SIZE; the size limits have their own tests.
    return st.binary(max_size=max_size)


init_hellos = st.builds(InitHello, nonce=nonces, suites=st.lists(u16, min_size=1, max_size=0x7F).map(tuple),
                        auth_kind=u8, identity=vec16(), x25519=vec8(), kem_key=vec16(), qkd_policy=u8,
                        context=vec8())
resp_hellos = st.builds(RespHello, nonce=nonces, suite=u16, auth_kind=u8, identity=vec16(), x25519=vec8(),
                        kem_ciphertext=vec16(), qkd_policy=u8, auth_tag=vec16(), confirm=vec8())
init_finishes = st.builds(InitFinish, qkd_key_ids=st.lists(st.uuids(), max_size=MAX_QKD_KEYS, unique=True).map(tuple),
                          auth_tag=vec16(), confirm=vec8())
resp_finishes = st.builds(RespFinish, qkd_used=st.booleans(), confirm=vec8())
# Alert reasons travel as short printable ASCII; anything else is cleaned on the way (tested below).
printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
alerts = st.builds(Alert, code=st.sampled_from(list(AlertCode)), reason=printable)
messages: st.SearchStrategy[Message] = st.one_of(init_hellos, resp_hellos, init_finishes, resp_finishes, alerts)
frames = messages.map(encode)


def _header(mtype: int, length: int, *, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    return magic + bytes([version, mtype]) + struct.pack(">I", length)


def _reframe(frame: bytes, body: bytes) -> bytes:
    """Same header (magic, version, type) with ``body`` and a header length that matches it."""
    return _header(frame[3], len(body)) + body


@st.composite
def mutated_frames(draw: st.DrawFn, base: st.SearchStrategy[bytes] = frames) -> bytes:
    """A valid frame with bytes flipped, set, inserted or deleted; half the time re-framed so the body gets parsed."""
    frame = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        pos = draw(st.integers(0, len(frame)))
        if op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif pos < len(frame) and op == "delete":
            del frame[pos:pos + draw(st.integers(1, 8))]
        elif pos < len(frame) and op == "flip":
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif pos < len(frame):
            frame[pos] = draw(u8)
    out = bytes(frame)
    if len(out) >= HEADER_SIZE and draw(st.booleans()):
        out = _reframe(out, out[HEADER_SIZE:])
    return out


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A correct header for a known type over an arbitrary body: gets past parse_header into the pullers."""
    body = draw(st.binary(max_size=600))
    return _header(draw(st.sampled_from(list(MessageType))), len(body)) + body


@st.composite
def _vec(draw: st.DrawFn, width: int) -> bytes:
    """A length-prefixed field whose prefix usually, but not always, tells the truth."""
    data = draw(st.binary(max_size=300))
    length = len(data) if draw(st.integers(0, 9)) else draw(st.integers(0, (1 << (8 * width)) - 1))
    return length.to_bytes(width, "big") + data


@st.composite
def field_bodies(draw: st.DrawFn) -> bytes:
    """A frame built field by field from each body's grammar, with counts and lengths drawn on their own,
    so values the encoder would never produce (0 or 255 suites, 17 key IDs, qkd_used=7) reach the decoder."""
    mtype = draw(st.sampled_from(list(MessageType)))
    nonce = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
    v8, v16, byte = _vec(1), _vec(2), st.binary(min_size=1, max_size=1)
    if mtype is MessageType.INIT_HELLO:
        count = draw(u8)
        parts = [nonce, st.just(bytes([count])), st.binary(min_size=2 * count, max_size=2 * count),
                 byte, v16, v8, v16, byte, v8]
    elif mtype is MessageType.RESP_HELLO:
        parts = [nonce, st.binary(min_size=2, max_size=2), byte, v16, v8, v16, byte, v16, v8]
    elif mtype is MessageType.INIT_FINISH:
        count = draw(st.integers(0, MAX_QKD_KEYS + 2))
        ids = st.lists(st.sampled_from([bytes(16), bytes(range(16))]) | st.binary(min_size=16, max_size=16),
                       min_size=count, max_size=count).map(b"".join)
        parts = [st.just(bytes([count])), ids, v16, v8]
    else:  # RespFinish (qkd_used, confirm) and Alert (code, reason) share one shape
        parts = [byte, v8]
    body = b"".join(draw(p) for p in parts)
    if draw(st.integers(0, 9)) == 0:
        body = body[:draw(st.integers(0, len(body)))] + draw(st.binary(max_size=4))
    return _header(mtype, len(body)) + body


any_bytes = st.one_of(st.binary(max_size=200), framed_garbage(), field_bodies(), mutated_frames())


# -- (a) arbitrary bytes: decode or RemoteProtocolError ----------------------------------------------------------

# A 128..255-suite InitHello: decodes field by field, but the encoder caps the offer at 127 suites.
_MANY_SUITES_BODY = (bytes(NONCE_SIZE) + bytes([200]) + b"\x00\x01" * 200 + b"\x02" + b"\x00\x00" + b"\x00"
                     + b"\x00\x00" + b"\x00" + b"\x00")


@FUZZ
@given(any_bytes)
@example(_header(MessageType.INIT_HELLO, len(_MANY_SUITES_BODY)) + _MANY_SUITES_BODY)
def test_arbitrary_bytes_decode_or_raise_remote_error(data: bytes) -> None:
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    # Whatever is accepted is canonical: re-encoding gives the bytes received (Alerts are cleaned, not bound).
    if not isinstance(message, Alert):
        assert encode(message) == data


def test_too_many_suites_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="suites"):
        decode(_header(MessageType.INIT_HELLO, len(_MANY_SUITES_BODY)) + _MANY_SUITES_BODY)


def test_decode_wants_bytes() -> None:
    with pytest.raises(TypeError):
        decode("HX")  # type: ignore[arg-type]
    assert decode(bytearray(encode(RespFinish(True)))) == RespFinish(True)


# -- (b) round trip ---------------------------------------------------------------------------------------------

@FUZZ
@given(messages)
def test_round_trip(message: Message) -> None:
    frame = encode(message)
    assert frame[:2] == MAGIC and frame[2] == PROTOCOL_VERSION
    assert parse_header(frame[:HEADER_SIZE]) == (MessageType(frame[3]), len(frame) - HEADER_SIZE)
    assert decode(frame) == message


@FUZZ
@given(st.sampled_from(list(AlertCode)), st.text(max_size=400))
def test_alert_reason_is_cleaned_to_short_printable_ascii(code: AlertCode, reason: str) -> None:
    decoded = decode(encode(Alert(code, reason)))
    assert isinstance(decoded, Alert) and decoded.code is code
    assert len(decoded.reason) <= 200 and all(32 <= ord(ch) < 127 for ch in decoded.reason)
    assert decoded.reason == "".join(ch for ch in reason if 32 <= ord(ch) < 127)[:200]


@FUZZ
@given(st.integers(0, 0xFF).filter(lambda c: c not in {int(a) for a in AlertCode}), st.binary(max_size=255))
def test_alert_from_a_newer_peer_still_decodes(code: int, reason: bytes) -> None:
    # An unknown code or non-ASCII reason must not hide that the peer aborted.
    decoded = decode(_header(MessageType.ALERT, 2 + len(reason)) + bytes([code, len(reason)]) + reason)
    assert isinstance(decoded, Alert) and decoded.code is AlertCode.INTERNAL
    assert all(32 <= ord(ch) < 127 for ch in decoded.reason)


# -- (c) truncation -----------------------------------------------------------------------------------------------

@FUZZ
@given(frames, st.data())
def test_every_strict_prefix_is_truncated(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(frame[:cut])


@FUZZ
@given(frames, st.data())
def test_every_strict_prefix_of_a_body_is_truncated(frame: bytes, data: st.DataObject) -> None:
    # The header agrees with the shortened body, so the field pullers themselves must notice.
    body = frame[HEADER_SIZE:]
    cut = data.draw(st.integers(0, len(body) - 1), label="cut")
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(_reframe(frame, body[:cut]))


def test_all_prefixes_of_real_frames_are_truncated() -> None:
    """Exhaustive over each prefix of one frame of each type as a real handshake sends them."""
    for frame in _live(3, "ml-dsa")[2]:
        for cut in range(len(frame)):
            with pytest.raises(RemoteProtocolError, match="truncated"):
                decode(frame[:cut])
            if cut >= HEADER_SIZE:
                with pytest.raises(RemoteProtocolError, match="truncated"):
                    decode(_reframe(frame, frame[HEADER_SIZE:cut]))


# -- (d) header checks, size limit, trailing bytes, canonical encodings ------------------------------------------

@FUZZ
@given(st.sampled_from(list(MessageType)), st.integers(MAX_BODY_SIZE + 1, 0xFFFFFFFF))
def test_oversized_length_rejected_from_the_header_alone(mtype: MessageType, length: int) -> None:
    # parse_header sees only the 8 header bytes: the body is never read, let alone buffered.
    with pytest.raises(RemoteProtocolError, match="oversized") as info:
        parse_header(_header(mtype, length))
    assert str(MAX_BODY_SIZE) in str(info.value)
    with pytest.raises(RemoteProtocolError, match="oversized"):
        decode(_header(mtype, length))


def test_oversized_header_refused_without_waiting_for_the_body() -> None:
    # What parse_header buys a reader: the peer sends only a header announcing 4 GiB and keeps the
    # connection open; the frame reader refuses at once instead of waiting for (or buffering) the body.
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_header(MessageType.INIT_HELLO, 0xFFFFFFFF))
        started = time.monotonic()
        with pytest.raises(RemoteProtocolError, match="oversized"):
            read_frame(b, started + 30)
        assert time.monotonic() - started < 5


def test_largest_body_accepted_by_the_header() -> None:
    assert parse_header(_header(MessageType.RESP_HELLO, MAX_BODY_SIZE)) == (MessageType.RESP_HELLO, MAX_BODY_SIZE)


def test_encoder_refuses_oversized_bodies() -> None:
    big = RespHello(bytes(32), 1, 2, bytes(0xFFFF), bytes(32), bytes(1088), 0)
    with pytest.raises(ValueError, match="limit"):
        encode(big)


@FUZZ
@given(st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC), st.binary(min_size=6, max_size=64))
def test_bad_magic(magic: bytes, rest: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a hybridkex peer"):
        decode(magic + rest)


@FUZZ
@given(st.integers(0, 0xFF).filter(lambda v: v != PROTOCOL_VERSION), frames)
def test_wrong_version_names_both_versions(version: int, frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame[:2] + bytes([version]) + frame[3:])
    text = str(info.value)
    assert f"version {version}" in text and f"speaks {PROTOCOL_VERSION}" in text


@FUZZ
@given(st.integers(0, 0xFF).filter(lambda t: t not in {int(m) for m in MessageType}), st.binary(max_size=64))
def test_unknown_message_type(mtype: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=f"unknown message type {mtype}"):
        decode(_header(mtype, len(body)) + body)


def test_short_header() -> None:
    for n in range(HEADER_SIZE):
        with pytest.raises(RemoteProtocolError, match="truncated frame header"):
            parse_header(_header(MessageType.ALERT, 0)[:n])


@FUZZ
@given(frames, st.binary(min_size=1, max_size=64))
def test_trailing_bytes_in_the_body(frame: bytes, extra: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="trailing bytes"):
        decode(_reframe(frame, frame[HEADER_SIZE:] + extra))


@FUZZ
@given(frames, st.binary(min_size=1, max_size=64))
def test_bytes_after_the_frame(frame: bytes, extra: bytes) -> None:
    # One decode call takes exactly one frame; the next frame's bytes are not silently dropped.
    with pytest.raises(RemoteProtocolError):
        decode(frame + extra)


# Field values with no meaning: each has exactly one way to say "nothing", "yes/no" or "these keys".
MALFORMED_FIELDS = {
    "no-suites": _header(MessageType.INIT_HELLO, NONCE_SIZE + 1) + bytes(NONCE_SIZE) + b"\x00",
    "qkd_used-2": _header(MessageType.RESP_FINISH, 2) + b"\x02\x00",
    "17-key-ids": _header(MessageType.INIT_FINISH, 1 + 16 * 17 + 3) + bytes([17]) + os.urandom(16 * 17) + bytes(3),
    "repeated-key-id": _header(MessageType.INIT_FINISH, 1 + 32 + 3) + b"\x02" + bytes(16) * 2 + bytes(3),
}


@pytest.mark.parametrize("frame", list(MALFORMED_FIELDS.values()), ids=list(MALFORMED_FIELDS))
def test_malformed_field_values_rejected(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed"):
        decode(frame)


def test_core_is_sliced_from_the_wire_and_equals_the_encoders_core() -> None:
    """Tags cover the received bytes before them; for any valid message that slice is exactly
    what the sender's encoder produced as the core (so both sides hash the same transcript)."""
    import uuid

    from hybridkex._wire import core_of, push_init_finish_core, push_resp_finish_core, push_resp_hello_core

    rh = RespHello(b"n" * 32, 1, 2, b"id" * 10, b"x" * 32, b"c" * 1088, 1, b"t" * 300, b"m" * 32)
    fi = InitFinish((uuid.UUID(int=1), uuid.UUID(int=2)), b"t" * 40, b"m" * 48)
    rf = RespFinish(True, b"m" * 32)
    assert core_of(encode(rh), rh) == push_resp_hello_core(rh)
    assert core_of(encode(fi), fi) == push_init_finish_core(fi)
    assert core_of(encode(rf), rf) == push_resp_finish_core(rf)


# -- (e) the state machines under fuzzing -----------------------------------------------------------------------

BACKEND = get_backend("cryptography")
PSK = bytes(range(32))
ALICE, BOB = generate_identity("ml-dsa-44"), generate_identity("ml-dsa-44")
CONFIGS = {
    "psk": (HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND),
            HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND)),
    "ml-dsa": (HandshakeConfig(SignatureAuthenticator(ALICE, [BOB.public], BACKEND), backend=BACKEND),
               HandshakeConfig(SignatureAuthenticator(BOB, [ALICE.public], BACKEND), backend=BACKEND)),
}
auth_modes = pytest.mark.parametrize("auth", list(CONFIGS))


def _data(event: object) -> bytes:
    assert isinstance(event, SendMessage)
    return event.data


def _live(upto: int, auth: str = "psk") -> tuple[Initiator, Responder, list[bytes]]:
    """Run a handshake until frame ``upto`` (0 InitHello .. 3 RespFinish) is sent, not yet delivered."""
    i_config, r_config = CONFIGS[auth]
    ini, res = Initiator(i_config), Responder(r_config)
    sent = [_data(ini.initiate()[0])]
    for step in range(1, upto + 1):
        receiver: Initiator | Responder = res if step % 2 else ini
        sent.append(_data(receiver.receive(sent[-1])[0]))
    return ini, res, sent


def _fuzz_input(data: st.DataObject, sent: list[bytes]) -> bytes:
    """Garbage, any valid message, or a mutation of one of this handshake's real frames."""
    frame: bytes = data.draw(st.one_of(any_bytes, frames, mutated_frames(st.sampled_from(sent))), label="frame")
    return frame


def _must_fail(conn: Initiator | Responder, frame: bytes) -> HybridKexError:
    try:
        conn.receive(frame)
    except HybridKexError as exc:
        error = exc
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"{type(exc).__name__} escaped the {conn.role.value}: {exc}") from exc
    else:  # pragma: no cover - the property under test
        raise AssertionError(f"the {conn.role.value} accepted a frame it must refuse: {frame.hex()}")
    assert conn.state is State.ERROR and conn.result is None
    assert isinstance(error, RemoteProtocolError), error  # everything here is the peer's fault
    if isinstance(error, PeerAlertError):
        assert conn.error_alert is None  # never answer an alert with an alert
    else:
        assert conn.error_alert is not None and isinstance(decode(conn.error_alert), Alert)
    return error


@FUZZ_SM
@given(st.one_of(any_bytes, frames, mutated_frames(st.sampled_from(_live(3)[2]))))
def test_responder_in_start_accepts_an_init_hello_or_fails_cleanly(frame: bytes) -> None:
    res = Responder(CONFIGS["psk"][1])
    try:
        events = res.receive(frame)
    except HybridKexError:
        assert res.state is State.ERROR and res.result is None
        return
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"{type(exc).__name__} escaped the responder: {exc}") from exc
    # Only an InitHello is unauthenticated enough to be accepted before anything is known about the peer.
    assert isinstance(decode(frame), InitHello)
    assert res.state is State.WAIT_INIT_FINISH and len(events) == 1 and isinstance(events[0], SendMessage)


@FUZZ_SM
@given(st.one_of(resp_hellos, init_finishes, resp_finishes, alerts).map(encode))
def test_responder_refuses_valid_frames_of_the_wrong_type(frame: bytes) -> None:
    _must_fail(Responder(CONFIGS["psk"][1]), frame)


@FUZZ_SM
@given(st.one_of(init_hellos, init_finishes, resp_finishes, alerts).map(encode))
def test_initiator_refuses_valid_frames_of_the_wrong_type(frame: bytes) -> None:
    ini = Initiator(CONFIGS["psk"][0])
    ini.initiate()
    _must_fail(ini, frame)


@auth_modes
@FUZZ_SM
@given(data=st.data())
def test_initiator_after_initiate_takes_only_the_real_resp_hello(auth: str, data: st.DataObject) -> None:
    ini, _, sent = _live(1, auth)
    frame = _fuzz_input(data, sent)
    assume(frame != sent[1])
    _must_fail(ini, frame)


@auth_modes
@FUZZ_SM
@given(data=st.data())
def test_responder_waiting_for_init_finish_takes_only_the_real_one(auth: str, data: st.DataObject) -> None:
    _, res, sent = _live(2, auth)
    frame = _fuzz_input(data, sent)
    assume(frame != sent[2])
    _must_fail(res, frame)


@auth_modes
@FUZZ_SM
@given(data=st.data())
def test_initiator_waiting_for_resp_finish_takes_only_the_real_one(auth: str, data: st.DataObject) -> None:
    ini, _, sent = _live(3, auth)
    frame = _fuzz_input(data, sent)
    assume(frame != sent[3])
    _must_fail(ini, frame)


@auth_modes
def test_the_real_frames_are_accepted(auth: str) -> None:
    # The counterpart of the fuzzers above: the unmodified frame does finish the handshake.
    ini, res, sent = _live(3, auth)
    assert res.state is State.DONE
    ini.receive(sent[3])
    assert ini.state is State.DONE and ini.result is not None and res.result is not None
    assert ini.result.key() == res.result.key()
