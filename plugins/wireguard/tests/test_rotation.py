"""The per-peer rotation state machine, two ends wired back to back (no network, no sinks).

A fake session stands in for the hybridkex handshake: both ends export from the same
random secret, exactly as two confirmed HandshakeResults would.  ``Sinks`` records what
each end has installed, which is what must match.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import pytest
from hybridkex import LocalProtocolError

from hybridkex_wg._rotation import (
    EpochKey,
    FailurePolicy,
    Install,
    PeerRotation,
    Role,
    RotationPolicy,
    RotationRefused,
    Stale,
    StartExchange,
    State,
    derive_epoch_key,
)
from hybridkex_wg._wire import Accept, AcceptStatus, Commit, Done, DoneStatus, Request

KEY_I = bytes([1]) * 32   # the smaller key: initiator under role "auto"
KEY_R = bytes([2]) * 32
POLICY = RotationPolicy(interval=100.0, jitter=0.1, deadline=150.0, retry_initial=2.0, retry_max=16.0)


def no_jitter(a: float, b: float) -> float:
    return 0.0


@dataclass
class Side:
    state: PeerRotation
    installed: bytes | None = None
    history: list[tuple[str, int]] = field(default_factory=list)

    def apply(self, action: Install | None, ok: bool = True) -> bool:
        if action is not None and ok:
            self.installed = action.psk
            self.history.append((action.reason, action.epoch))
        return ok


def make_pair(policy: RotationPolicy = POLICY, *, now: float = 0.0, init_highest: int = 0,
              resp_highest: int = 0) -> tuple[Side, Side]:
    a = PeerRotation(Role.INITIATOR, KEY_I, KEY_R, policy, now=now, highest_epoch=init_highest, uniform=no_jitter)
    b = PeerRotation(Role.RESPONDER, KEY_R, KEY_I, policy, now=now, highest_epoch=resp_highest, uniform=no_jitter)
    return Side(a), Side(b)


def session_keys(epoch: int, now: float, secret: bytes | None = None) -> tuple[EpochKey, EpochKey]:
    """What two confirmed handshakes for ``epoch`` export on each side."""
    secret = secret or os.urandom(32)

    def export(label: bytes, length: int) -> bytes:
        return hashlib.sha256(secret + label).digest()[:length]

    return (derive_epoch_key(export, KEY_I, KEY_R, epoch, now, "used"),
            derive_epoch_key(export, KEY_I, KEY_R, epoch, now, "used"))


def start(a: Side, now: float) -> Request:
    actions = a.state.poll(now)
    starts = [x for x in actions if isinstance(x, StartExchange)]
    assert starts, f"no exchange due at {now}: {actions}"
    return starts[0].request


def request_and_accept(a: Side, b: Side, now: float, *, promote_ok: bool = True) -> int:
    """Request -> (maybe promotion) -> Accept -> agreed epoch (both sides)."""
    request = start(a, now)
    accept, promote = b.state.request(request, now)
    if promote is not None:
        b.state.promote_result(b.apply(promote, promote_ok), now)
    epoch = a.state.accepted(accept, now)
    assert epoch == b.state.epoch_for(request)
    return epoch


def rotate(a: Side, b: Side, now: float, *, lose: str = "", init_sink_ok: bool = True,
           resp_sink_ok: bool = True) -> int:
    """One full rotation; ``lose`` drops a message: "resp_finish", "commit" or "done"."""
    epoch = request_and_accept(a, b, now)
    ka, kb = session_keys(epoch, now)
    assert b.state.derived(kb, now) is None
    if lose == "resp_finish":   # the handshake's last message never reached the initiator
        a.state.failed("HandshakeTimeout", now)
        b.state.failed("TransportError: closed", now)
        return epoch
    install = a.state.derived(ka, now)
    reply = a.state.install_result(a.apply(install, init_sink_ok), now, "" if init_sink_ok else "boom")
    if not isinstance(reply, Commit):
        a.apply(reply)
        b.state.failed("TransportError: closed", now)
        return epoch
    if lose == "commit":
        a.state.failed("HandshakeTimeout", now)
        b.state.failed("HandshakeTimeout", now)
        return epoch
    done, rollback = b.state.commit_result(b.apply(b.state.commit(reply, now), resp_sink_ok), now, "boom")
    b.apply(rollback)
    if lose == "done":
        a.state.failed("HandshakeTimeout", now)
        return epoch
    a.apply(a.state.done(done, now))
    return epoch


def test_rotation_installs_the_same_fresh_key_on_both_ends() -> None:
    a, b = make_pair()
    epoch = rotate(a, b, 0.0)
    assert epoch == 1
    assert a.installed is not None and a.installed == b.installed
    assert a.state.confirmed and b.state.confirmed
    first = a.installed
    assert rotate(a, b, 100.0) == 2
    assert a.installed == b.installed != first
    assert a.state.status().epoch == b.state.status().epoch == 2
    assert a.state.status().fingerprint == b.state.status().fingerprint


def test_labels_bind_epoch_and_both_keys() -> None:
    secret = os.urandom(32)
    k1, _ = session_keys(1, 0.0, secret)
    k2, _ = session_keys(2, 0.0, secret)
    assert k1.psk != k2.psk and k1.confirm_key != k2.confirm_key and k1.psk != k1.confirm_key

    def export(label: bytes, length: int) -> bytes:
        return hashlib.sha256(secret + label).digest()[:length]

    swapped = derive_epoch_key(export, KEY_R, KEY_I, 1, 0.0, "used")
    assert swapped.psk != k1.psk


def test_epoch_resynchronises_to_max_plus_one() -> None:
    # The initiator restarted (highest 0); the responder has seen epoch 41.
    a, b = make_pair(init_highest=0, resp_highest=41)
    assert rotate(a, b, 0.0) == 42
    assert a.installed == b.installed
    # And the other way round.
    a, b = make_pair(init_highest=9, resp_highest=3)
    assert rotate(a, b, 0.0) == 10


def test_lost_commit_is_repaired_by_the_next_request_even_if_that_exchange_fails() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    old = b.installed
    rotate(a, b, 100.0, lose="commit")
    # The race: the initiator has the new key, the responder still the old one.
    assert a.installed != b.installed == old
    assert not a.state.confirmed
    assert a.state.next_due == pytest.approx(100.0 + POLICY.retry_initial)  # one retry, soon
    # The retry's Request proves epoch 2: the responder promotes before anything else ...
    request_and_accept(a, b, 102.0)
    assert a.installed == b.installed
    assert b.history[-1] == ("promote", 2)
    # ... so even a failing handshake (KME outage) leaves both ends equal.
    a.state.failed("QKDUnavailable: KME down", 102.5)
    b.state.failed("QKDUnavailable: KME down", 102.5)
    assert a.installed == b.installed


def test_lost_done_keeps_the_new_key_and_the_next_request_settles_it() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    rotate(a, b, 100.0, lose="done")
    assert a.installed == b.installed
    assert not a.state.confirmed
    epoch = request_and_accept(a, b, 102.0)
    assert epoch == 3 and b.history[-1] == ("rotate", 2)  # nothing to promote: the responder had it


def test_lost_resp_finish_never_installs_anything_and_the_next_handshake_replaces_the_pending_key() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    before = a.installed
    rotate(a, b, 100.0, lose="resp_finish")
    assert a.installed == b.installed == before
    assert b.state.pending is not None
    # The next Request proves epoch 1, not the pending epoch 2: nothing is promoted.  The Request is not
    # authenticated, so it does not drop the pending key either; the next handshake's key replaces it.
    request = start(a, 110.0)
    assert request.installed_epoch == 1
    accept, promote = b.state.request(request, 110.0)
    assert promote is None and b.state.pending is not None and b.state.pending.epoch == 2
    epoch = a.state.accepted(accept, 110.0)
    assert epoch == 3  # epochs never repeat
    _, kb = session_keys(epoch, 110.0)
    b.state.derived(kb, 110.0)
    assert b.state.pending is kb


def test_responder_sink_failure_rolls_both_ends_back() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    before = a.installed
    rotate(a, b, 100.0, resp_sink_ok=False)
    assert a.installed == b.installed == before
    assert a.history[-1] == ("rollback", 1) and b.history[-1] == ("rollback", 1)
    assert a.state.failures == 1 and "could not install" in a.state.last_error
    assert rotate(a, b, 104.0) == 3
    assert a.installed == b.installed != before


def test_initiator_sink_failure_rolls_back_and_sends_no_commit() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    before = a.installed
    rotate(a, b, 100.0, init_sink_ok=False)
    assert a.installed == b.installed == before
    assert a.state.state is State.IDLE and a.state.failures == 1


def test_failures_back_off_exponentially_up_to_retry_max() -> None:
    a, b = make_pair()
    now = 0.0
    delays = []
    for _ in range(6):
        start(a, now)
        a.state.failed("TransportError: connection refused", now)
        delays.append(a.state.next_due - now)
        now = a.state.next_due
    assert delays == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert a.state.status().last_error.startswith("TransportError")


def test_next_rotation_is_one_interval_after_the_last_within_jitter() -> None:
    spread = [-0.1, 0.1]
    a = PeerRotation(Role.INITIATOR, KEY_I, KEY_R, POLICY, now=0.0,
                     uniform=lambda lo, hi: spread.pop(0) if lo < 0 else 0.0)
    b = PeerRotation(Role.RESPONDER, KEY_R, KEY_I, POLICY, now=0.0, uniform=no_jitter)
    sa, sb = Side(a), Side(b)
    rotate(sa, sb, 0.0)
    assert a.next_due == pytest.approx(90.0)
    rotate(sa, sb, 90.0)
    assert a.next_due == pytest.approx(200.0)
    assert b.next_wakeup() == pytest.approx(90.0 + POLICY.deadline)  # the responder only has its deadline


def test_fail_closed_installs_a_random_key_once_after_the_deadline() -> None:
    policy = RotationPolicy(interval=100.0, jitter=0.0, deadline=150.0, failure_policy=FailurePolicy.FAIL_CLOSED)
    a, b = make_pair(policy)
    rotate(a, b, 0.0)
    shared = b.installed
    assert b.state.poll(149.9) == []
    actions = b.state.poll(150.0)
    assert len(actions) == 1 and isinstance(actions[0], Stale)
    stale = actions[0]
    assert stale.policy is FailurePolicy.FAIL_CLOSED and stale.epoch == 1 and stale.install is not None
    b.apply(stale.install)
    assert b.installed != shared and b.state.status().stale
    assert b.state.poll(500.0) == []  # reported once
    # A stale key is never proven nor re-installed: the initiator's Request proves nothing on B's side, and
    # the next exchange makes a fresh key that ends the stale state.
    a.state.next_due = 400.0
    assert rotate(a, b, 400.0) == 2
    assert a.installed == b.installed and not b.state.status().stale


def test_fail_closed_on_the_initiator_side_too_and_its_request_proves_nothing() -> None:
    policy = RotationPolicy(interval=100.0, jitter=0.0, deadline=150.0, failure_policy=FailurePolicy.FAIL_CLOSED)
    a, _ = make_pair(policy)
    # Never rotated: the deadline counts from start-up.
    actions = a.state.poll(150.0)
    kinds = [type(x) for x in actions]
    assert Stale in kinds and StartExchange in kinds
    request = next(x for x in actions if isinstance(x, StartExchange)).request
    assert request.installed_epoch == 0 and request.proof == bytes(32)


def test_keep_policy_reports_stale_and_keeps_the_key() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    actions = b.state.poll(150.0)
    assert len(actions) == 1 and isinstance(actions[0], Stale) and actions[0].install is None
    assert b.state.current is not None and b.state.status().stale


@pytest.mark.parametrize("policy, promoted", [(FailurePolicy.FAIL_CLOSED, False), (FailurePolicy.KEEP, True)])
def test_a_pending_key_past_its_deadline_is_promoted_only_when_keeping_old_keys(policy: FailurePolicy,
                                                                               promoted: bool) -> None:
    a, b = make_pair(RotationPolicy(interval=100.0, jitter=0.1, deadline=150.0, failure_policy=policy))
    rotate(a, b, 0.0)
    rotate(a, b, 100.0, lose="commit")
    a.state.next_due = 300.0
    request = start(a, 300.0)   # proves epoch 2, made at t=100, deadline 150: too old
    accept, promote = b.state.request(request, 300.0)
    assert accept.status is AcceptStatus.OK and (promote is not None) == promoted


def test_rollback_to_a_stale_key_only_when_keeping_old_keys() -> None:
    for policy, rolled_back in ((FailurePolicy.KEEP, True), (FailurePolicy.FAIL_CLOSED, False)):
        a, b = make_pair(RotationPolicy(interval=100.0, jitter=0.1, deadline=150.0, failure_policy=policy))
        rotate(a, b, 0.0)
        a.state.next_due = 200.0
        before = a.installed
        rotate(a, b, 200.0, init_sink_ok=False)   # epoch 1 is 200 s old: past its deadline
        assert (a.history[-1] == ("rollback", 1)) == rolled_back
        assert a.installed == before  # the failed sink took nothing in this model either way


def test_a_forged_proof_does_not_promote() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    rotate(a, b, 100.0, lose="commit")
    real = start(a, 102.0)
    forged = Request(real.initiator_public, real.responder_public, real.installed_epoch, real.highest_epoch,
                     bytes(32))
    _, promote = b.state.request(forged, 102.0)
    assert promote is None


def test_a_bad_commit_tag_is_refused_and_installs_nothing() -> None:
    a, b = make_pair()
    epoch = request_and_accept(a, b, 0.0)
    ka, kb = session_keys(epoch, 0.0)
    b.state.derived(kb, 0.0)
    with pytest.raises(RotationRefused):
        b.state.commit(Commit(epoch, bytes(32)), 0.0)
    with pytest.raises(RotationRefused):
        b.state.commit(Commit(epoch + 1, bytes(32)), 0.0)
    b.state.failed("RotationRefused", 0.0)
    assert b.installed is None and b.state.state is State.IDLE


def test_a_bad_done_tag_keeps_the_key_unconfirmed() -> None:
    a, b = make_pair()
    epoch = request_and_accept(a, b, 0.0)
    ka, kb = session_keys(epoch, 0.0)
    b.state.derived(kb, 0.0)
    commit = a.state.install_result(a.apply(a.state.derived(ka, 0.0)), 0.0)
    assert isinstance(commit, Commit)
    with pytest.raises(RotationRefused):
        a.state.done(Done(DoneStatus.INSTALLED, epoch, bytes(32)), 0.0)
    a.state.failed("RotationRefused", 0.0)
    assert not a.state.confirmed and a.state.current is not None
    assert a.state.next_due == pytest.approx(POLICY.retry_initial)


def test_concurrent_requests_are_not_busy_and_role_conflict_changes_nothing() -> None:
    # A Request holds nothing: a second one (the real initiator next to a stalled stranger) is accepted too.
    a, b = make_pair()
    request = start(a, 0.0)
    b.state.request(request, 0.0)
    accept, promote = b.state.request(request, 0.0)
    assert accept.status is AcceptStatus.OK and promote is None and b.state.state is State.IDLE
    accept, _ = a.state.request(request, 0.0)
    assert accept.status is AcceptStatus.ROLE_CONFLICT
    with pytest.raises(RotationRefused, match="already rotating"):
        a.state.accepted(Accept(AcceptStatus.BUSY, 0), 0.0)


def test_a_forged_huge_epoch_changes_nothing_and_is_refused() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    real = start(a, 100.0)
    forged = Request(real.initiator_public, real.responder_public, 0, 2**64 - 2, bytes(32))
    accept, promote = b.state.request(forged, 100.0)
    assert accept.status is AcceptStatus.EPOCH_REFUSED and promote is None
    assert b.state.highest_epoch == 1 and b.state.status().highest_epoch == 1
    # A forged Accept on the initiator's side is refused the same way, before any handshake.
    with pytest.raises(RotationRefused, match="2\\^32"):
        a.state.accepted(Accept(AcceptStatus.OK, 2**64 - 2), 100.0)
    assert a.state.highest_epoch == 1


def test_an_unauthenticated_request_changes_no_epoch_until_the_handshake_succeeds() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    real = start(a, 100.0)
    bold = Request(real.initiator_public, real.responder_public, 0, 1000, bytes(32))
    accept, _ = b.state.request(bold, 100.0)
    assert accept.status is AcceptStatus.OK and b.state.highest_epoch == 1
    assert b.state.epoch_for(bold) == 1001


def test_a_tampered_proof_keeps_the_pending_key_for_the_real_request() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    rotate(a, b, 100.0, lose="commit")
    real = start(a, 102.0)
    forged = Request(real.initiator_public, real.responder_public, real.installed_epoch, real.highest_epoch,
                     bytes(a ^ 1 for a in real.proof))
    _, promote = b.state.request(forged, 102.0)
    assert promote is None and b.state.pending is not None
    _, promote = b.state.request(real, 102.0)
    assert promote is not None and promote.epoch == 2


def test_both_ends_use_the_stricter_timing_after_an_authenticated_exchange() -> None:
    slow = RotationPolicy(interval=100.0, jitter=0.0, deadline=150.0)
    fast = RotationPolicy(interval=20.0, jitter=0.0, deadline=30.0)
    a = PeerRotation(Role.INITIATOR, KEY_I, KEY_R, slow, now=0.0, uniform=no_jitter)
    b = PeerRotation(Role.RESPONDER, KEY_R, KEY_I, fast, now=0.0, uniform=no_jitter)
    sa, sb = Side(a), Side(b)
    rotate(sa, sb, 0.0)
    assert a.interval == b.interval == 20.0 and a.deadline == b.deadline == 30.0
    assert a.next_due == pytest.approx(20.0) and a.fresh_until == b.fresh_until == pytest.approx(30.0)
    # A partner cannot talk this side below 10 s.
    tiny = PeerRotation(Role.RESPONDER, KEY_R, KEY_I, RotationPolicy(interval=1.0, jitter=0.0, deadline=2.0),
                        now=0.0)
    tiny._agree((1.0, 2.0))
    a._agree((1.0, 2.0))
    assert a.interval == 10.0 and a.deadline == 150.0 and tiny.interval == 1.0


def test_fail_closed_start_up_installs_a_random_key_with_a_forced_handshake() -> None:
    policy = RotationPolicy(interval=100.0, jitter=0.0, deadline=150.0, failure_policy=FailurePolicy.FAIL_CLOSED)
    b = PeerRotation(Role.RESPONDER, KEY_R, KEY_I, policy, now=0.0, cut_at_start=True)
    actions = b.poll(0.0)
    assert len(actions) == 1 and isinstance(actions[0], Stale) and actions[0].startup
    assert actions[0].install is not None and actions[0].install.force_handshake
    assert b.poll(1.0) == []


def test_installs_that_complete_a_rotation_force_a_wireguard_handshake() -> None:
    a, b = make_pair()
    epoch = request_and_accept(a, b, 0.0)
    ka, kb = session_keys(epoch, 0.0)
    b.state.derived(kb, 0.0)
    first = a.state.derived(ka, 0.0)
    assert first is not None and not first.force_handshake  # the responder does not have it yet
    commit = a.state.install_result(True, 0.0)
    assert isinstance(commit, Commit)
    second = b.state.commit(commit, 0.0)
    assert second.force_handshake  # both ends hold it now


def test_off_table_inputs_are_local_protocol_errors() -> None:
    a, b = make_pair()
    with pytest.raises(LocalProtocolError):
        b.state.commit(Commit(1, bytes(32)), 0.0)
    with pytest.raises(LocalProtocolError):
        a.state.accepted(Accept(AcceptStatus.OK, 0), 0.0)  # no Request sent
    start(a, 0.0)
    with pytest.raises(LocalProtocolError):
        a.state.start(0.0)
    with pytest.raises(LocalProtocolError):
        a.state.derived(session_keys(5, 0.0)[0], 0.0)  # wrong state (no Accept yet)


def test_only_due_initiators_start_and_never_twice() -> None:
    a, b = make_pair()
    assert [type(x) for x in a.state.poll(0.0)] == [StartExchange]
    assert a.state.poll(0.0) == []  # in flight
    assert b.state.poll(0.0) == []  # responders never start


@pytest.mark.parametrize("bad", [
    dict(interval=0), dict(jitter=1.0), dict(deadline=100.0), dict(retry_initial=5.0, retry_max=1.0),
])
def test_policy_rejects_inconsistent_timing(bad: dict[str, float]) -> None:
    values: dict[str, float] = dict(interval=100.0, jitter=0.1, deadline=150.0)
    values.update(bad)
    with pytest.raises(ValueError):
        RotationPolicy(**values)  # type: ignore[arg-type]


def test_repr_and_status_never_show_keys() -> None:
    a, b = make_pair()
    rotate(a, b, 0.0)
    key = a.state.current
    assert key is not None
    for text in (repr(key), repr(a.state.status()), repr(b.state.status())):
        assert key.psk.hex() not in text and str(key.psk) not in text
