"""The sans-I/O handshake: two state machines wired back to back, no network."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from handshake_harness import QKDPair, ok, run

from hybridkex import (
    AuthenticationError,
    HandshakeConfig,
    HandshakeResult,
    HandshakeTimeout,
    HybridKexError,
    Initiator,
    LocalProtocolError,
    NegotiationError,
    PeerAlertError,
    PSKAuthenticator,
    QKDKey,
    QKDKeyReplay,
    QKDPolicyError,
    QKDUnavailable,
    RemoteProtocolError,
    Responder,
    SendMessage,
    SignatureAuthenticator,
    generate_identity,
    get_backend,
)
from hybridkex._state import State

BACKEND = get_backend("cryptography")
ALICE = generate_identity("ml-dsa-65")
BOB = generate_identity("ml-dsa-44")
MALLORY = generate_identity("ml-dsa-65")
PSK = os.urandom(32)


def sig_pair(i_peers: list = [BOB.public], r_peers: list = [ALICE.public]) -> tuple:  # noqa: B006
    return (SignatureAuthenticator(ALICE, i_peers, BACKEND), SignatureAuthenticator(BOB, r_peers, BACKEND))


def psk_pair(i_psk: bytes = PSK, r_psk: bytes = PSK) -> tuple:
    return PSKAuthenticator([i_psk]), PSKAuthenticator([r_psk])


@pytest.mark.parametrize("auth", ["ml-dsa", "psk"])
@pytest.mark.parametrize("suites", [(1, 3), (2, 4), (3,), (4,)], ids=["768-hkdf", "1024-hkdf", "768-hmac", "1024-hmac"])
def test_keys_match(auth: str, suites: tuple[int, ...]) -> None:
    pair = sig_pair() if auth == "ml-dsa" else psk_pair()
    i, r = ok(run(*pair, i_suites=suites))
    assert i.key() == r.key() and len(i.key()) == 32
    assert i.transcript_hash == r.transcript_hash
    assert i.suite.code == suites[0] == r.suite.code
    assert i.export(b"a", 48) == r.export(b"a", 48) != r.export(b"b", 48)[:48]
    assert i.qkd.status == r.qkd.status == "off"


def test_identities_reported() -> None:
    i, r = ok(run(*sig_pair()))
    assert i.peer.fingerprint == BOB.fingerprint and i.peer.auth == "ml-dsa-44"
    assert r.peer.fingerprint == ALICE.fingerprint and r.peer.auth == "ml-dsa-65"


def test_fresh_key_every_time() -> None:
    a, _ = ok(run(*sig_pair()))
    b, _ = ok(run(*sig_pair()))
    assert a.key() != b.key()


def test_qkd_key_used_and_bound() -> None:
    qkd = QKDPair()
    i, r = ok(run(*psk_pair(), i_policy="required", r_policy="required", qkd=qkd))
    assert i.qkd.status == r.qkd.status == "used"
    assert i.qkd.key_ids == r.qkd.key_ids == tuple(qkd.issued)
    assert i.key() == r.key()


def test_differing_qkd_keys_detected() -> None:
    class Lying(QKDPair):
        def answer(self, conn, need):  # type: ignore[no-untyped-def]
            if need.role == "slave":
                return conn.qkd_keys([QKDKey(k, os.urandom(32)) for k in need.key_ids])
            return super().answer(conn, need)

    o = run(*psk_pair(), i_policy="required", r_policy="required", qkd=Lying())
    assert isinstance(o.initiator, AuthenticationError) and "confirmation" in str(o.initiator)
    assert not isinstance(o.responder, HandshakeResult)


def test_replayed_key_id_refused_even_when_preferred() -> None:
    qkd = QKDPair()
    ok(run(*psk_pair(), i_policy="preferred", r_policy="preferred", qkd=qkd))
    issued = dict(qkd.issued)

    class Replaying(QKDPair):
        def answer(self, conn, need):  # type: ignore[no-untyped-def]
            if need.role == "master":
                kid, key = next(iter(issued.items()))
                return conn.qkd_keys([QKDKey(kid, key)])
            return qkd.answer(conn, need)

    o = run(*psk_pair(), i_policy="preferred", r_policy="preferred", qkd=Replaying())
    assert isinstance(o.responder, QKDKeyReplay)
    assert isinstance(o.initiator, PeerAlertError) and "qkd_replay" in str(o.initiator)


@pytest.mark.parametrize("side", ["master", "slave"])
def test_qkd_down_required_fails(side: str) -> None:
    down = QKDUnavailable("KME unreachable")
    qkd = QKDPair(fail_master=down) if side == "master" else QKDPair(fail_slave=down)
    o = run(*psk_pair(), i_policy="required", r_policy="required", qkd=qkd)
    assert isinstance(o.initiator, HybridKexError) and isinstance(o.responder, HybridKexError)
    failed = o.initiator if side == "master" else o.responder
    assert isinstance(failed, QKDPolicyError) and "KME unreachable" in str(failed) and "preferred" in str(failed)


@pytest.mark.parametrize("side", ["master", "slave"])
def test_qkd_down_preferred_proceeds_and_says_so(side: str) -> None:
    down = QKDUnavailable("KME unreachable")
    qkd = QKDPair(fail_master=down) if side == "master" else QKDPair(fail_slave=down)
    i, r = ok(run(*psk_pair(), i_policy="preferred", r_policy="preferred", qkd=qkd))
    assert i.qkd.status == r.qkd.status == "unavailable"
    assert i.key() == r.key()
    assert i.summary()["qkd"] == "unavailable" and i.summary()["qkd_reason"]


def test_qkd_policy_mismatch() -> None:
    o = run(*psk_pair(), i_policy="required", r_policy="off")
    assert isinstance(o.responder, QKDPolicyError) and isinstance(o.initiator, PeerAlertError)
    o = run(*psk_pair(), i_policy="off", r_policy="required")
    assert isinstance(o.responder, QKDPolicyError)
    i, r = ok(run(*psk_pair(), i_policy="preferred", r_policy="off"))
    assert i.qkd.status == r.qkd.status == "off"


def test_unpinned_peer_refused() -> None:
    o = run(*sig_pair(r_peers=[MALLORY.public]))
    assert isinstance(o.responder, AuthenticationError) and "not pinned" in str(o.responder)
    assert isinstance(o.initiator, PeerAlertError)
    o = run(*sig_pair(i_peers=[MALLORY.public]))
    assert isinstance(o.initiator, AuthenticationError) and BOB.fingerprint in str(o.initiator)
    assert isinstance(o.responder, PeerAlertError)


def test_wrong_psk_refused() -> None:
    o = run(*psk_pair(r_psk=os.urandom(32)))
    assert isinstance(o.responder, AuthenticationError) and isinstance(o.initiator, PeerAlertError)


def test_mixed_auth_modes_refused() -> None:
    o = run(SignatureAuthenticator(ALICE, [BOB.public], BACKEND), PSKAuthenticator([PSK]))
    assert isinstance(o.responder, NegotiationError)


def test_no_common_suite() -> None:
    o = run(*psk_pair(), i_suites=(2, 4), r_suites=(1, 3))
    assert isinstance(o.responder, NegotiationError) and "--kem" in str(o.responder)
    assert isinstance(o.initiator, PeerAlertError) and "no_common_suite" in str(o.initiator)


def test_context_mismatch() -> None:
    o = run(*psk_pair(), i_context=b"tls", r_context=b"wireguard")
    assert isinstance(o.responder, NegotiationError) and "context" in str(o.responder)


def test_downgrade_of_offer_detected() -> None:
    # An attacker strips the HKDF suite from the offer so the responder picks HMAC: the
    # initiator's transcript differs and the responder's signature fails to verify.
    def strip(index: int, frame: bytes) -> bytes:
        if index == 0:
            return frame.replace(b"\x02\x00\x01\x00\x03", b"\x02\x00\x03\x00\x03", 1)
        return frame

    o = run(*sig_pair(), tamper=strip)
    assert not isinstance(o.initiator, HandshakeResult) and not isinstance(o.responder, HandshakeResult)


def _flip_runner(auth_pair: Callable[[], tuple], message: int, positions: list[int], policy: str) -> None:
    for pos in positions:
        def flip(index: int, frame: bytes, pos: int = pos) -> bytes:
            if index != message or pos >= len(frame):
                return frame
            return frame[:pos] + bytes([frame[pos] ^ (1 << (pos % 8))]) + frame[pos + 1:]
        o = run(*auth_pair(), i_policy=policy, r_policy=policy, tamper=flip)
        assert isinstance(o.initiator, HybridKexError), (message, pos, o.initiator)
        assert isinstance(o.responder, HybridKexError), (message, pos, o.responder)


def _frame_sizes(pair: Callable[[], tuple], policy: str) -> list[int]:
    return [len(f) for f in run(*pair(), i_policy=policy, r_policy=policy).frames]


@pytest.mark.parametrize("message", [0, 1, 2, 3], ids=["InitHello", "RespHello", "InitFinish", "RespFinish"])
def test_every_byte_flip_fails_both_sides_psk(message: int) -> None:
    size = _frame_sizes(psk_pair, "required")[message]
    _flip_runner(psk_pair, message, list(range(size)), "required")


@pytest.mark.parametrize("message", [0, 1, 2, 3], ids=["InitHello", "RespHello", "InitFinish", "RespFinish"])
def test_byte_flips_fail_both_sides_mldsa(message: int) -> None:
    size = _frame_sizes(sig_pair, "off")[message]
    positions = sorted(set(range(min(size, 64))) | set(random.Random(message).sample(range(size), min(size, 120))))
    _flip_runner(sig_pair, message, positions, "off")


def test_replay_is_byte_for_byte_with_injected_randomness() -> None:
    def seeded(seed: int) -> Callable[[int], bytes]:
        r = random.Random(seed)
        return lambda n: r.randbytes(n)

    a = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND), rng=seeded(7)).initiate()
    b = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND), rng=seeded(7)).initiate()
    c = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND), rng=seeded(8)).initiate()
    assert isinstance(a[0], SendMessage) and a == b and a != c


def test_deadline_from_injected_clock() -> None:
    clock = [0.0]
    ini = Initiator(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND, timeout=5), now=lambda: clock[0])
    res = Responder(HandshakeConfig(PSKAuthenticator([PSK]), backend=BACKEND))
    reply = res.receive(ini.initiate()[0].data)  # type: ignore[union-attr]
    clock[0] = 6.0
    with pytest.raises(HandshakeTimeout):
        ini.receive(reply[0].data)  # type: ignore[union-attr]
    assert ini.state is State.ERROR and ini.error_alert is not None


def test_no_use_after_error_or_done() -> None:
    i_auth, r_auth = psk_pair()
    res = Responder(HandshakeConfig(r_auth, backend=BACKEND))
    with pytest.raises(RemoteProtocolError):
        res.receive(b"HX\x01\x01\x00\x00\x00\x00")
    assert res.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        res.receive(b"anything")


def test_out_of_order_message_is_remote_error() -> None:
    i_auth, r_auth = psk_pair()
    ini = Initiator(HandshakeConfig(i_auth, backend=BACKEND))
    first = ini.initiate()[0]
    assert isinstance(first, SendMessage)
    with pytest.raises(RemoteProtocolError, match="unexpected InitHello"):
        ini.receive(first.data)


def test_result_repr_and_summary_hide_secrets() -> None:
    i, _ = ok(run(*psk_pair()))
    key = i.key()
    assert key.hex() not in repr(i) and key.hex() not in str(i.summary())
    assert i._session.hex() not in repr(i)
