"""The sans-I/O handshake, wire v2: two state machines wired back to back, and the attacks v1 lost to.

Every attack of the v2 review has a test here that mounts it through the public state
machines (the network versions are in test_transport.py and test_cli.py).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable

import pytest
from handshake_harness import BACKEND, QKDPair, configs, no_key, ok, run

from hybridkex import (
    AuthenticationError,
    ConfigError,
    HandshakeResult,
    HandshakeTimeout,
    HybridKexError,
    LocalProtocolError,
    NegotiationError,
    PeerAlertError,
    QKDKey,
    QKDPolicyError,
    QKDUnavailable,
    RemoteProtocolError,
    UnknownPeerError,
    UnverifiedMessage,
    generate_identity,
)
from hybridkex.protocol import (
    DoSGuard,
    HandshakeConfig,
    Initiator,
    PSKAuthenticator,
    Responder,
    SendMessage,
    SignatureAuthenticator,
    psk_identity,
)
from hybridkex.protocol import _labels as labels
from hybridkex.protocol._auth import Purpose
from hybridkex.protocol._state import State
from hybridkex.protocol._wire import CookieReply, decode

ALICE = generate_identity("ml-dsa-65")
BOB = generate_identity("ml-dsa-44")
CAROL = generate_identity("ml-dsa-65")
PSK = os.urandom(32)


def sig_pair(i_peers: list | None = None, r_peers: list | None = None) -> tuple:
    return (SignatureAuthenticator(ALICE, i_peers or [BOB.public], BACKEND),
            SignatureAuthenticator(BOB, r_peers or [ALICE.public], BACKEND))


def psk_auth(name: str, peer: str, psk: bytes = PSK) -> PSKAuthenticator:
    return PSKAuthenticator([psk], name=name, peer_name=peer)


def psk_pair(i_psk: bytes = PSK, r_psk: bytes = PSK) -> tuple:
    return psk_auth("alice", "bob", i_psk), psk_auth("bob", "alice", r_psk)


QKD_ON = {"i_policy": "preferred", "r_policy": "preferred"}


# -- honest peers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["ml-dsa", "psk"])
@pytest.mark.parametrize("suites", [(1, 3), (2, 4), (3,), (4,)], ids=["768-hkdf", "1024-hkdf", "768-hmac", "1024-hmac"])
def test_keys_match(auth: str, suites: tuple[int, ...]) -> None:
    pair = sig_pair() if auth == "ml-dsa" else psk_pair()
    o = run(*pair, i_suites=suites)
    i, r = ok(o)
    assert i.key() == r.key() and len(i.key()) == 32
    assert i.transcript_hash == r.transcript_hash
    assert i.suite.code == suites[0] == r.suite.code
    assert i.export(b"a", 48) == r.export(b"a", 48) != r.export(b"b", 48)
    assert i.ratchet_psk() == r.ratchet_psk()
    assert i.qkd.status == r.qkd.status == "off"
    assert [decode(f).__class__.__name__ for f in o.frames] == ["InitHello", "RespHello", "InitFinish", "RespFinish"]
    assert i.message_sizes == r.message_sizes == tuple(len(f) for f in o.frames)


def test_identities_reported() -> None:
    i, r = ok(run(*sig_pair()))
    assert (i.peer.fingerprint, r.peer.fingerprint) == (BOB.fingerprint, ALICE.fingerprint)
    assert (i.local_fingerprint, r.local_fingerprint) == (ALICE.fingerprint, BOB.fingerprint)
    i, r = ok(run(*psk_pair()))
    assert (i.peer.fingerprint, r.peer.fingerprint, i.peer.name) == ("psk:bob", "psk:alice", "bob")


def test_fresh_key_every_time() -> None:
    keys = {ok(run(*psk_pair()))[0].key() for _ in range(3)}
    assert len(keys) == 3


def test_qkd_key_used_and_bound() -> None:
    qkd = QKDPair()
    i, r = ok(run(*psk_pair(), qkd=qkd, i_policy="required", r_policy="required"))
    assert i.qkd.used and r.qkd.used and i.qkd.key_ids == r.qkd.key_ids and len(i.qkd.key_ids) == 1
    assert i.key() == r.key()
    # The QKD key is in the key: the same handshake without it gives another key (checked through CatKDF's psk).
    assert qkd.consumed == set(i.qkd.key_ids)


def test_replay_is_byte_for_byte_with_injected_randomness() -> None:
    """InitHello is a function of the injected randomness and clock (the other messages carry ML-KEM
    ciphertexts and hedged ML-DSA signatures, whose randomness cryptography does not let us inject)."""
    def seeded(seed: int) -> Callable[[int], bytes]:
        rnd = random.Random(seed)
        return lambda n: rnd.randbytes(n)

    a, b = configs(*psk_pair())
    first = Initiator(a, rng=seeded(7), wall=lambda: 1_700_000_000.0).initiate()
    again = Initiator(a, rng=seeded(7), wall=lambda: 1_700_000_000.0).initiate()
    assert first == again
    assert Initiator(a, rng=seeded(8), wall=lambda: 1_700_000_000.0).initiate() != first


# -- attack 1: reflection of a PSK node onto itself ---------------------------------------------------------

def test_reflection_is_dropped_before_any_work() -> None:
    """A node that listens and initiates for the same peer, connected to itself: its own InitHello
    does not carry the mac1 of its own name, so its responder drops it without a reply."""
    node_as_initiator, node_as_responder = psk_auth("node", "peer"), psk_auth("node", "peer")
    o = run(node_as_initiator, node_as_responder)
    no_key(o)
    assert isinstance(o.responder, UnverifiedMessage) and o.res.error_alert is None
    assert len(o.frames) == 1


def test_reflection_with_a_recomputed_mac1_is_refused() -> None:
    """An attacker who knows the names (they are not secret) rewrites mac1 for the node's own name:
    the blinded PSK identifiers and both MAC keys are bound to the ordered names, so nothing matches."""
    import hmac as hmac_module

    from hybridkex.protocol._handshake import _mac1_key

    def remac(index: int, frame: bytes) -> bytes:
        if index != 0:
            return frame
        body = frame[8:-32]
        mac1 = hmac_module.digest(_mac1_key(b"node"), body, "sha256")[:16]
        return frame[:-32] + mac1 + frame[-16:]

    o = run(psk_auth("node", "peer"), psk_auth("node", "peer"), tamper=remac)
    no_key(o)
    assert isinstance(o.responder, UnknownPeerError)
    assert isinstance(o.initiator, PeerAlertError)


def test_own_name_and_own_key_cannot_be_the_peer() -> None:
    with pytest.raises(ConfigError, match="own name"):
        PSKAuthenticator([PSK], name="node", peer_name="node")
    with pytest.raises(ConfigError, match="both names"):
        PSKAuthenticator([PSK], name="node", peer_name=None)
    with pytest.raises(ConfigError, match="own public key"):
        SignatureAuthenticator(ALICE, [BOB.public, ALICE.public], BACKEND)


def test_names_must_match_crosswise() -> None:
    o = run(psk_auth("alice", "bob"), psk_auth("bob", "mallory"))
    no_key(o)
    assert isinstance(o.responder, UnknownPeerError)


# -- attack 2: final key confirmation on both sides ---------------------------------------------------------

class LyingKME(QKDPair):
    """A KME that hands the slave other bytes under the master's key_ID."""

    def answer(self, conn, need):  # type: ignore[no-untyped-def]
        if need.role == "slave":
            return conn.qkd_keys([QKDKey(need.key_ids[0], os.urandom(32))])
        return super().answer(conn, need)


@pytest.mark.parametrize("auth", ["psk", "ml-dsa"])
def test_differing_qkd_keys_leave_neither_side_with_a_key(auth: str) -> None:
    """v1: the responder finished and wrote its key; v2: it checks the initiator's proof of the
    QKD-bearing session secret first, fails, and tells the initiator."""
    o = run(*(psk_pair() if auth == "psk" else sig_pair()), qkd=LyingKME(), **QKD_ON)
    no_key(o)
    assert isinstance(o.responder, AuthenticationError) and "final key confirmation" in str(o.responder)
    assert isinstance(o.initiator, PeerAlertError)


def _flip(frame: bytes, pos: int) -> bytes:
    out = bytearray(frame)
    out[pos] ^= 0x01
    return bytes(out)


def _flip_runner(pair: Callable[[], tuple], message: int, positions: list[int], **kwargs: object) -> None:
    for pos in positions:
        def flip(index: int, frame: bytes, pos: int = pos) -> bytes:
            return _flip(frame, pos) if index == message else frame
        o = run(*pair(), tamper=flip, **kwargs)  # type: ignore[arg-type]
        no_key(o)


def _frame_sizes(pair: Callable[[], tuple], **kwargs: object) -> list[int]:
    return [len(f) for f in run(*pair(), **kwargs).frames]  # type: ignore[arg-type]


@pytest.mark.parametrize("message", [0, 1, 2, 3], ids=["InitHello", "RespHello", "InitFinish", "RespFinish"])
def test_every_byte_flip_fails_both_sides_psk(message: int) -> None:
    """Altering any single message, at any byte, in either direction: neither side has a key.
    (A flip in InitHello's mac2, which the responder checks only under load, still changes the
    transcript both sides hash, so the sealed RespHello does not open.)"""
    size = _frame_sizes(psk_pair, **QKD_ON)[message]
    positions = list(range(size))
    _flip_runner(psk_pair, message, positions, qkd=None, **QKD_ON)


@pytest.mark.parametrize("message", [0, 1, 2, 3], ids=["InitHello", "RespHello", "InitFinish", "RespFinish"])
def test_byte_flips_fail_both_sides_mldsa(message: int) -> None:
    size = _frame_sizes(sig_pair)[message]
    rnd = random.Random(message)
    positions = sorted(set(range(min(size, 48))) | set(range(size - 48, size))
                       | set(rnd.sample(range(size), min(size, 120))))
    _flip_runner(sig_pair, message, positions)


@pytest.mark.parametrize("lost", [1, 2, 3], ids=["RespHello", "InitFinish", "RespFinish"])
def test_a_lost_message_leaves_a_key_only_where_the_peers_proof_is(lost: int) -> None:
    o = run(*psk_pair(), tamper=lambda i, f: None if i == lost else f, **QKD_ON)
    assert not isinstance(o.initiator, HandshakeResult)
    if lost == 3:
        # The responder holds the initiator's proof of the final secret (in InitFinish): it may keep its key.
        assert isinstance(o.responder, HandshakeResult)
    else:
        assert not isinstance(o.responder, HandshakeResult)


def test_lost_init_confirm_in_a_fallback_leaves_the_key_only_with_the_initiator() -> None:
    o = run(*psk_pair(), qkd=QKDPair(fail_slave=QKDUnavailable("KME down")),
            tamper=lambda i, f: None if i == 4 else f, **QKD_ON)
    assert isinstance(o.initiator, HandshakeResult) and not isinstance(o.responder, HandshakeResult)


# -- attack 3: downgrade of `preferred` ---------------------------------------------------------------------

def test_qkd_down_at_the_initiator_preferred_proceeds_and_says_so() -> None:
    i, r = ok(run(*psk_pair(), qkd=QKDPair(fail_master=QKDUnavailable("KME at A down")), **QKD_ON))
    assert i.qkd.status == r.qkd.status == "unavailable" and i.key() == r.key()
    assert "this side's QKD source failed: KME at A down" in i.qkd.reason
    assert "initiator's QKD source failed" in r.qkd.reason


def test_qkd_down_at_the_responder_falls_back_under_its_signature() -> None:
    o = run(*sig_pair(), qkd=QKDPair(fail_slave=QKDUnavailable("KME at B down")), **QKD_ON)
    i, r = ok(o)
    assert i.qkd.status == r.qkd.status == "unavailable" and i.key() == r.key()
    assert "responder's QKD source failed" in i.qkd.reason and "KME at B down" in r.qkd.reason
    assert [decode(f).__class__.__name__ for f in o.frames][3:] == ["RespFinish", "InitConfirm"]


@pytest.mark.parametrize("side", ["master", "slave"])
def test_qkd_down_required_fails(side: str) -> None:
    qkd = QKDPair(fail_master=QKDUnavailable("down")) if side == "master" else \
        QKDPair(fail_slave=QKDUnavailable("down"))
    o = run(*psk_pair(), qkd=qkd, i_policy="required", r_policy="required")
    no_key(o)
    failed = o.initiator if side == "master" else o.responder
    assert isinstance(failed, QKDPolicyError)


class _ForgedFallback(PSKAuthenticator):
    """What an attacker who computes X25519 and ML-KEM in real time can do: everything but the
    long-term credential.  Its 'no QKD key here' carries a tag it had to make up."""

    def make_tag(self, role, key, purpose, transcript):  # type: ignore[no-untyped-def]
        if purpose is Purpose.RESPONDER_FALLBACK:
            return os.urandom(32)
        return super().make_tag(role, key, purpose, transcript)


def test_a_forged_qkd_not_used_is_refused() -> None:
    """v1 accepted "QKD was not used" under a key from X25519 and ML-KEM alone; v2 wants the
    responder's signature or PSK MAC over it.  The forger's RespFinish seals and confirms
    correctly (it knows the handshake secrets) but cannot make that tag."""
    forger = _ForgedFallback([PSK], name="bob", peer_name="alice")
    o = run(psk_auth("alice", "bob"), forger, qkd=QKDPair(fail_slave=QKDUnavailable("claimed down")), **QKD_ON)
    no_key(o)
    assert isinstance(o.initiator, AuthenticationError) and "fallback PSK MAC" in str(o.initiator)


def test_qkd_policy_mismatch() -> None:
    o = run(*psk_pair(), i_policy="required", r_policy="off")
    no_key(o)
    assert isinstance(o.responder, QKDPolicyError)


# -- attack 4: the exporter cannot reach internal keys ------------------------------------------------------

def test_exporter_is_separate_from_internal_secrets() -> None:
    i, r = ok(run(*psk_pair(), qkd=None, **QKD_ON))
    internal = [v for k, v in vars(labels).items() if k.isupper() and isinstance(v, bytes) and v]
    for label in internal:
        if label.startswith(labels.RESERVED_PREFIX):
            with pytest.raises(ValueError, match="reserved"):
                i.export(label)
    # v1's labels for the key file and the ratchet now name ordinary application exports, nothing else.
    others = {i.export(b"hybridkex exchange key"), i.export(b"hybridkex auth ratchet next psk"), i.export(b"x")}
    assert i.key() not in others and i.ratchet_psk() not in others and len(others) == 3
    assert i.key() != i.ratchet_psk()


# -- attack 5: QKD keys bound to their SAEs ------------------------------------------------------------------

def test_an_insider_cannot_spend_another_peers_qkd_key() -> None:
    """A responder pins Alice (SAE-A) and Carol (SAE-C).  Carol claims Alice's SAE as master: the
    responder refuses before asking its KME for anything."""
    responder_auth = SignatureAuthenticator(BOB, [ALICE.public, CAROL.public], BACKEND)
    carol = SignatureAuthenticator(CAROL, [BOB.public], BACKEND)
    qkd = QKDPair()
    o = run(carol, responder_auth, qkd=qkd, **QKD_ON,
            i_extra={"sae_id": "SAE-A", "peer_sae_id": "SAE-B"},
            r_extra={"sae_id": "SAE-B", "peer_sae_ids": {ALICE.fingerprint: "SAE-A", CAROL.fingerprint: "SAE-C"}})
    no_key(o)
    assert isinstance(o.responder, AuthenticationError) and "SAE-A" in str(o.responder)
    assert qkd.slave_asked == 0
    # With her own SAE ID it works, and the responder fetched as her master.
    i, r = ok(run(carol, responder_auth, **QKD_ON, i_extra={"sae_id": "SAE-C", "peer_sae_id": "SAE-B"},
                  r_extra={"sae_id": "SAE-B", "peer_sae_ids": {CAROL.fingerprint: "SAE-C"}}))
    assert i.qkd.used and r.key() == i.key()


def test_sae_ids_and_key_size_are_bound_into_the_key() -> None:
    """Two sessions that differ only in the declared SAE IDs cannot share a key: the block is in
    CatKDF's context (checked here by deriving with the same inputs but another block)."""
    from hybridkex.protocol._wire import QKDBlock, QKDReason, QKDStatus

    conn = Initiator(configs(*psk_pair())[0])
    conn.suite = __import__("hybridkex.protocol").protocol.SUITES[1]
    conn._k1, conn._k2, conn._ih = b"1" * 32, b"2" * 32, b"ih"
    key_id = uuid.uuid4()
    a = conn._session_secret(QKDBlock(QKDStatus.USED, QKDReason.NONE, "A", "B", 256, (key_id,)), b"q" * 32)
    b = conn._session_secret(QKDBlock(QKDStatus.USED, QKDReason.NONE, "C", "B", 256, (key_id,)), b"q" * 32)
    c = conn._session_secret(QKDBlock(QKDStatus.USED, QKDReason.NONE, "A", "B", 512, (key_id,)), b"q" * 32)
    assert len({a, b, c}) == 3


def test_replayed_key_id_refused_even_when_preferred() -> None:
    class Replaying(QKDPair):
        def answer(self, conn, need):  # type: ignore[no-untyped-def]
            if need.role == "slave":
                self.consumed.update(need.key_ids)  # someone already consumed it
            return super().answer(conn, need)

    o = run(*psk_pair(), qkd=Replaying(), **QKD_ON)
    no_key(o)


# -- attack 7: denial of service ------------------------------------------------------------------------------

class CountingBackend:
    """Counts public-key operations: what a flood must not make the responder do."""

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, obj: object) -> object:
        counter = self

        class Wrapped:
            def __getattr__(self, name: str) -> object:
                attr = getattr(obj, name)
                if callable(attr) and name in {"encapsulate", "decapsulate", "exchange", "generate", "sign",
                                                "verify"}:
                    def counted(*a: object, **k: object) -> object:
                        counter.calls += 1
                        return attr(*a, **k)
                    return counted
                return attr
        return Wrapped()

    def kem(self, name: str) -> object:
        return self.wrap(BACKEND.kem(name))

    def key_agreement(self, name: str) -> object:
        return self.wrap(BACKEND.key_agreement(name))

    def signature(self, name: str) -> object:
        return self.wrap(BACKEND.signature(name))


def _hello(i_auth: object = None) -> bytes:
    i_config, _ = configs(i_auth or psk_auth("alice", "bob"), None)
    event = Initiator(i_config).initiate()[0]
    assert isinstance(event, SendMessage)
    return event.data


def _counted_responder(guard: DoSGuard | None, r_auth: object = None, source: bytes = b"10.0.0.1") -> \
        tuple[Responder, CountingBackend]:
    counting = CountingBackend()
    config = HandshakeConfig(r_auth or psk_auth("bob", "alice"), backend=BACKEND)
    res = Responder(config, guard=guard, source=source)
    res._backend = counting  # type: ignore[assignment]
    return res, counting


@pytest.mark.parametrize("auth", ["psk", "ml-dsa"])
def test_a_hello_without_mac1_gets_nothing_and_costs_no_public_key_work(auth: str) -> None:
    """A scanner that does not know the responder's public identity: no reply, no alert, no work."""
    stranger = psk_auth("alice", "someone-else") if auth == "psk" else \
        SignatureAuthenticator(ALICE, [CAROL.public], BACKEND)
    responder_auth = psk_auth("bob", "alice") if auth == "psk" else SignatureAuthenticator(BOB, [ALICE.public],
                                                                                           BACKEND)
    res, counting = _counted_responder(DoSGuard(), responder_auth)
    with pytest.raises(UnverifiedMessage):
        res.receive(_hello(stranger))
    assert counting.calls == 0 and res.error_alert is None


def test_a_replayed_hello_costs_no_public_key_work() -> None:
    guard = DoSGuard()
    hello = _hello()
    first, counting_first = _counted_responder(guard)
    assert isinstance(first.receive(hello)[0], SendMessage) and counting_first.calls > 0
    again, counting = _counted_responder(guard)
    with pytest.raises(UnverifiedMessage, match="replayed"):
        again.receive(hello)
    assert counting.calls == 0 and again.error_alert is None


def test_a_stale_hello_is_refused() -> None:
    i_config, _ = configs(psk_auth("alice", "bob"), None)
    old = Initiator(i_config, wall=lambda: 1_000_000.0).initiate()[0]
    assert isinstance(old, SendMessage)
    res, counting = _counted_responder(DoSGuard())
    with pytest.raises(UnverifiedMessage, match="stale"):
        res.receive(old.data)
    assert counting.calls == 0


def test_under_load_a_cookie_is_required_and_then_honoured() -> None:
    guard = DoSGuard()
    guard.forced_load = True
    i_config, r_config = configs(*psk_pair())
    ini = Initiator(i_config)
    res, counting = _counted_responder(guard)
    hello = ini.initiate()[0]
    assert isinstance(hello, SendMessage)
    reply = res.receive(hello.data)
    assert counting.calls == 0 and res.state is State.START
    assert isinstance(reply[0], SendMessage) and isinstance(decode(reply[0].data), CookieReply)
    # The initiator echoes the cookie (mac2); now the responder does the work.
    retry = ini.receive(reply[0].data)
    assert isinstance(retry[0], SendMessage) and decode(retry[0].data).__class__.__name__ == "InitHello"
    answer = res.receive(retry[0].data)
    assert counting.calls > 0 and res.state is State.WAIT_INIT_FINISH
    assert decode(answer[0].data).__class__.__name__ == "RespHello"  # type: ignore[union-attr]
    # Another source cannot reuse that cookie.
    other, counting_other = _counted_responder(guard, source=b"10.0.0.2")
    assert isinstance(decode(other.receive(retry[0].data)[0].data), CookieReply)  # type: ignore[union-attr]
    assert counting_other.calls == 0


def _cookie_round(guard: DoSGuard, source: bytes) -> str:
    """One full InitHello from ``source`` that echoes the cookie when asked: what the responder did."""
    i_config, _ = configs(psk_auth("alice", "bob"), None)
    ini = Initiator(i_config)
    hello = ini.initiate()[0]
    res, _counting = _counted_responder(guard, source=source)
    try:
        reply = res.receive(hello.data)  # type: ignore[union-attr]
        if isinstance(decode(reply[0].data), CookieReply):  # type: ignore[union-attr]
            retry = ini.receive(reply[0].data)  # type: ignore[union-attr]
            res, _counting = _counted_responder(guard, source=source)
            res.receive(retry[0].data)  # type: ignore[union-attr]
        return "answered"
    except UnverifiedMessage as exc:
        return str(exc)


def test_per_source_rate_limit_under_load() -> None:
    """Under load even a source that echoes cookies gets only its share; others still get through."""
    guard = DoSGuard(source_rate=1.0, source_burst=3)
    guard.forced_load = True
    outcomes = [_cookie_round(guard, b"10.0.0.1") for _ in range(5)]
    assert outcomes[:3] == ["answered"] * 3 and all("rate limit" in o for o in outcomes[3:])
    assert _cookie_round(guard, b"10.0.0.9") == "answered"


def test_an_idle_responder_serves_a_burst_from_one_host() -> None:
    guard = DoSGuard(source_rate=1.0, source_burst=3, load_threshold=100)
    assert [_cookie_round(guard, b"10.0.0.1") for _ in range(10)] == ["answered"] * 10


# -- attack 8: identity hiding ------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["psk", "ml-dsa"])
def test_no_identity_appears_on_the_wire(auth: str) -> None:
    o = run(*(psk_pair() if auth == "psk" else sig_pair()), **QKD_ON)
    ok(o)
    wire = b"".join(o.frames)
    secrets_of_identity = [ALICE.public_key, BOB.public_key, ALICE.public_key[:32], BOB.public_key[:32],
                           ALICE.fingerprint.encode(), BOB.fingerprint.encode(), psk_identity(PSK), b"alice", b"bob"]
    for needle in secrets_of_identity:
        assert needle not in wire


def test_psk_identifiers_do_not_link_sessions() -> None:
    first, second = (decode(run(*psk_pair()).frames[0]) for _ in range(2))
    assert first.psk_ids and second.psk_ids and first.psk_ids != second.psk_ids  # type: ignore[union-attr]


# -- negotiation and misuse ----------------------------------------------------------------------------------

def test_unpinned_peer_refused() -> None:
    o = run(*sig_pair(r_peers=[CAROL.public]))
    no_key(o)
    assert isinstance(o.responder, UnknownPeerError) and "not pinned" in str(o.responder)
    assert isinstance(o.initiator, PeerAlertError)


def test_initiator_must_know_its_responder() -> None:
    with pytest.raises(ConfigError, match="pin exactly one responder"):
        Initiator(configs(SignatureAuthenticator(ALICE, [BOB.public, CAROL.public], BACKEND), None)[0])


def test_wrong_psk_refused() -> None:
    o = run(*psk_pair(r_psk=os.urandom(32)))
    no_key(o)
    assert isinstance(o.responder, UnknownPeerError)


def test_mixed_auth_modes_refused() -> None:
    o = run(psk_auth("alice", "bob"), SignatureAuthenticator(BOB, [ALICE.public], BACKEND))
    no_key(o)  # the ML-DSA responder's mac1 key is its public key, which the PSK initiator does not use


def test_no_common_suite() -> None:
    o = run(*psk_pair(), i_suites=(2, 4), r_suites=(1, 3))
    no_key(o)
    assert isinstance(o.responder, NegotiationError)


def test_context_mismatch() -> None:
    o = run(*psk_pair(), i_context=b"tls", r_context=b"wireguard")
    no_key(o)


def test_downgrade_of_offer_detected() -> None:
    """Removing the preferred suite from the offer changes InitHello, which both handshake keys bind."""
    def strip(index: int, frame: bytes) -> bytes:
        if index != 0:
            return frame
        return frame.replace(b"\x02\x00\x01\x00\x03", b"\x02\x00\x03\x00\x03", 1)
    no_key(run(*psk_pair(), tamper=strip))


def test_deadline_from_injected_clock() -> None:
    clock = [0.0]
    i_config, r_config = configs(*psk_pair())
    ini = Initiator(i_config, now=lambda: clock[0])
    res = Responder(r_config)
    hello = ini.initiate()[0]
    reply = res.receive(hello.data)  # type: ignore[union-attr]
    clock[0] = 31.0
    with pytest.raises(HandshakeTimeout, match="30 s"):
        ini.receive(reply[0].data)  # type: ignore[union-attr]
    assert ini.state is State.ERROR


def test_no_use_after_error_or_done() -> None:
    o = run(*psk_pair())
    ok(o)
    with pytest.raises(LocalProtocolError, match="already done"):
        o.ini.receive(o.frames[1])
    bad = run(*psk_pair(r_psk=os.urandom(32)))
    with pytest.raises(LocalProtocolError, match="already error"):
        bad.res.receive(bad.frames[0])


def test_result_repr_and_summary_hide_secrets() -> None:
    i, _ = ok(run(*psk_pair()))
    text = repr(i) + str(i.summary())
    assert i.key().hex() not in text and i.ratchet_psk().hex() not in text and PSK.hex() not in text
    assert i.summary()["key_fingerprint"].startswith("SHA256:")  # type: ignore[union-attr]


def test_every_error_is_a_hybridkex_error() -> None:
    for o in (run(*psk_pair(r_psk=os.urandom(32))), run(*psk_pair(), i_suites=(2,), r_suites=(1,))):
        assert isinstance(o.initiator, HybridKexError | RuntimeError)
        assert isinstance(o.responder, HybridKexError)
        assert isinstance(o.responder, RemoteProtocolError)



# -- channel confirmation (TLS Finished confirms the session) ------------------------------------------------

@pytest.mark.parametrize("policies, channel", [(("required", "required"), True), (("off", "off"), True),
                                               (("required", "preferred"), True), (("preferred", "preferred"), False)])
def test_channel_confirmation_only_where_no_fallback_can_happen(policies: tuple[str, str], channel: bool) -> None:
    """With channel confirmation the responder sends no RespFinish and the initiator hands its session
    to the channel right after InitFinish, unless both sides prefer QKD (then a fallback is possible
    and the exchange confirms itself first)."""
    o = run(*psk_pair(), i_policy=policies[0], r_policy=policies[1],
            i_extra={"channel_confirmation": True}, r_extra={"channel_confirmation": True})
    i, r = ok(o)
    assert i.key() == r.key() and i.transcript_hash == r.transcript_hash
    names = [decode(f).__class__.__name__ for f in o.frames]
    assert names == (["InitHello", "RespHello", "InitFinish"] if channel else
                     ["InitHello", "RespHello", "InitFinish", "RespFinish"])
