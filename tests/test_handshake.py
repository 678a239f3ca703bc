"""The sans-I/O handshake: two state machines wired back to back, no network."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest

from hybridkex import (
    AuthenticationError, HandshakeComplete, HandshakeConfig, HandshakeResult, HandshakeTimeout, HybridKexError,
    Initiator, LocalProtocolError, NeedQKDKeys, NegotiationError, PeerAlertError, PSKAuthenticator, QKDKey,
    QKDKeyReplay, QKDPolicyError, QKDUnavailable, RemoteProtocolError, Responder, SendMessage,
    SignatureAuthenticator, generate_identity, get_backend,
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


@dataclass
class QKDPair:
    """Both ends of a QKD link as plain data: keys the master hands out are found by ID at the slave once."""

    fail_master: Exception | None = None
    fail_slave: Exception | None = None
    issued: dict[uuid.UUID, bytes] = field(default_factory=dict)
    consumed: set[uuid.UUID] = field(default_factory=set)

    def answer(self, conn: Initiator | Responder, need: NeedQKDKeys) -> list:
        if need.role == "master":
            if self.fail_master:
                return conn.qkd_failed(self.fail_master)  # type: ignore[arg-type]
            key = QKDKey(uuid.uuid4(), os.urandom(need.size_bits // 8))
            self.issued[key.key_id] = key.key
            return conn.qkd_keys([key])
        if self.fail_slave:
            return conn.qkd_failed(self.fail_slave)  # type: ignore[arg-type]
        if any(k in self.consumed for k in need.key_ids):
            return conn.qkd_failed(QKDKeyReplay("key_ID already used"))
        self.consumed.update(need.key_ids)
        return conn.qkd_keys([QKDKey(k, self.issued[k]) for k in need.key_ids])


@dataclass
class Outcome:
    initiator: HandshakeResult | Exception
    responder: HandshakeResult | Exception
    frames: list[bytes]


Tamper = Callable[[int, bytes], bytes]


def run(i_auth, r_auth, *, i_policy="off", r_policy="off", qkd: QKDPair | None = None, tamper: Tamper | None = None,
        i_suites=(1, 3), r_suites=(1, 2, 3, 4), i_context=b"", r_context=b"", rng=os.urandom) -> Outcome:
    """Run a whole handshake, delivering alerts on failure as a real transport would."""
    qkd = qkd or QKDPair()
    ini = Initiator(HandshakeConfig(i_auth, i_suites, i_policy, backend=BACKEND, context=i_context), rng=rng)
    res = Responder(HandshakeConfig(r_auth, r_suites, r_policy, backend=BACKEND, context=r_context))
    results: dict[str, HandshakeResult | Exception] = {}
    frames: list[bytes] = []
    sides = {"i": ini, "r": res}
    pending: list[tuple[str, list]] = [("i", ini.initiate())]
    while pending:
        who, events = pending.pop(0)
        other = "r" if who == "i" else "i"
        for ev in events:
            if isinstance(ev, SendMessage):
                data = ev.data
                if tamper is not None:
                    data = tamper(len(frames), data)
                frames.append(data)
                if other in results:  # the peer already finished or failed
                    continue
                try:
                    pending.append((other, sides[other].receive(data)))
                except HybridKexError as exc:
                    results[other] = exc
                    if sides[other].error_alert and who not in results:
                        try:
                            sides[who].receive(sides[other].error_alert)
                        except HybridKexError as exc2:
                            results[who] = exc2
                        else:  # pragma: no cover - an alert must never be accepted
                            raise AssertionError("an alert was accepted as a handshake message")
            elif isinstance(ev, NeedQKDKeys):
                try:
                    pending.append((who, qkd.answer(sides[who], ev)))
                except HybridKexError as exc:
                    results[who] = exc
                    if sides[who].error_alert and other not in results:
                        try:
                            sides[other].receive(sides[who].error_alert)
                        except HybridKexError as exc2:
                            results[other] = exc2
            elif isinstance(ev, HandshakeComplete):
                results[who] = ev.result
    # The responder's success stands only if the initiator did not fail on its last message
    # (the transport waits for the initiator's close or alert before writing the key).
    if isinstance(results.get("i"), Exception) and isinstance(results.get("r"), HandshakeResult):
        results["r"] = PeerAlertError("initiator failed after the last message", 8)
    return Outcome(results.get("i", RuntimeError("initiator stuck")), results.get("r", RuntimeError("stuck")), frames)


def ok(o: Outcome) -> tuple[HandshakeResult, HandshakeResult]:
    assert isinstance(o.initiator, HandshakeResult), o.initiator
    assert isinstance(o.responder, HandshakeResult), o.responder
    return o.initiator, o.responder


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
