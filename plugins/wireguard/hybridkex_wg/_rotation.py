"""The per-peer rotation state machine: epochs, confirmation, retention, failure policy.

Rule: everything that decides which key a peer's sinks hold lives here, and nothing here
does I/O.  The daemon feeds it what happened (a Request arrived, the handshake produced a
key, the sinks took it, the peer's Done came back, time passed) and executes the actions
it returns (:class:`Install` a key, start an exchange, report a stale key).  Time and
randomness are injected, so the tests replay every race deterministically.

Epochs and the race between the two ends
----------------------------------------
Each rotation creates a new epoch ``E = max(highest epoch of either side) + 1``: the
initiator sends its highest epoch in the Request, the responder its own in the Accept,
both compute the same ``E``, and ``E`` is bound into the handshake context and into the
exporter labels together with both WireGuard public keys -- a disagreement on ``E`` (a
tampered or confused Request/Accept) fails the handshake instead of producing two
different PSKs.  Epochs only grow, so a restarted side (highest 0) resynchronises on the
first exchange.

Nothing in a Request or an Accept changes state before the epoch-bound handshake
succeeds: both are unauthenticated, so the agreed epoch, the announced timing and the
drop of an older pending key take effect only in :meth:`PeerRotation.derived`.  A remote
highest epoch more than :data:`MAX_EPOCH_GAP` beyond the local one is refused, so a forged
``2^64-2`` can neither overflow the counter nor poison the status file.  A responder holds
no lock on a pair while a handshake runs: several may run at once (a stalled or reset
stranger next to the real initiator), and the first to authenticate is the one that counts.
The one exception is promotion: a Request whose proof (a MAC under the pending epoch's
confirmation key) verifies is authentic, and installing a key the partner proved it holds
is idempotent.

Timing: each end announces its interval and deadline; after a successful handshake both
use the stricter (shorter) of the two, so a change on one side cannot make the other side
fail closed after every rotation.

Who installs when ("keep the previous key until the new one is confirmed"):

1. The handshake ends with hybridkex's key confirmation: the initiator finishes only after
   the responder proved it holds the session, so the responder already holds the epoch's
   key as *pending* (not installed) when the initiator installs it.
2. The initiator installs, then sends Commit (a MAC under the epoch's confirmation key).
3. Only on a valid Commit does the responder install, and it answers Done (another MAC).

The only window in which the two ends differ is between steps 2 and 3: milliseconds, or,
if Commit is lost, until the next Request.  Every Request carries the initiator's
installed epoch and a *proof* (a MAC under that epoch's confirmation key); a responder
whose pending epoch matches promotes the pending key before anything else -- so the
mismatch lasts at most one retry, even when that retry's handshake then fails (KME
outage).  A pending key is replaced only by the next authenticated handshake.

WireGuard mixes a pre-shared key only at its own handshakes, so installs that complete a
rotation on both ends (the responder's install after Commit, a promotion, rollbacks) and
random keys ask the sinks to force a new WireGuard handshake (``force_handshake``).

If the initiator's sinks fail it reinstalls the previous key and sends no Commit; if the
responder's sinks fail it reinstalls its previous key and answers Done(INSTALL_FAILED),
and the initiator rolls back too.  A lost Done is ambiguous (Commit may or may not have
arrived): the initiator keeps the new key and retries after ``retry_initial`` seconds, and
the next Request's proof settles it.

Failure policy: a key older than ``deadline`` seconds (counted from the handshake that
made it, or from start-up) is stale.  ``keep`` leaves it in place and reports it;
``fail-closed`` installs a random key, which stops the tunnel until a fresh exchange
succeeds, and never re-installs a stale shared key (by rollback or promotion).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from hybridkex import LocalProtocolError, RemoteProtocolError
from hybridkex.io import Backoff
from hybridkex.protocol import key_fingerprint

from . import _labels
from ._wire import TAG_SIZE, Accept, AcceptStatus, Commit, Done, DoneStatus, Request

__all__ = [
    "Role", "State", "FailurePolicy", "RotationPolicy", "EpochKey", "PeerRotation", "Install", "StartExchange",
    "Stale", "Action", "PeerStatus", "RotationRefused", "derive_epoch_key", "MAX_EPOCH_GAP", "MAX_EPOCH",
    "MIN_AGREED_INTERVAL",
]

PSK_BYTES = 32
_NO_PROOF = bytes(TAG_SIZE)
#: A remote highest epoch further than this beyond ours is refused (no honest peer is 2^32 rotations ahead).
MAX_EPOCH_GAP = 1 << 32
#: Epochs stay far below the 64-bit field, so max(...) + 1 can never overflow it.
MAX_EPOCH = 1 << 62
#: A partner cannot talk this side's interval below this (unless this side's own interval is lower).
MIN_AGREED_INTERVAL = 10.0


class Role(StrEnum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class FailurePolicy(StrEnum):
    KEEP = "keep"
    """After the deadline, leave the old key in place (tunnel keeps working, no longer rotated)."""
    FAIL_CLOSED = "fail-closed"
    """After the deadline, install a random key: the tunnel stops until a fresh exchange succeeds."""


class State(StrEnum):
    IDLE = "idle"
    REQUESTING = "requesting"        # initiator: Request sent, waiting for Accept
    PROMOTING = "promoting"          # responder: installing the pending key a Request proved
    HANDSHAKING = "handshaking"      # both: hybridkex handshake running for the agreed epoch
    INSTALLING = "installing"        # both: the new key is going into the sinks
    COMMITTING = "committing"        # initiator: Commit sent, waiting for Done
    AWAIT_COMMIT = "await-commit"    # responder: key derived, waiting for Commit


# The transition table: (role, state, input) -> next state.  Anything else is a LocalProtocolError.
_I, _R = Role.INITIATOR, Role.RESPONDER
_TABLE: dict[tuple[Role, State, str], State] = {
    (_I, State.IDLE, "start"): State.REQUESTING,
    (_I, State.REQUESTING, "accept"): State.HANDSHAKING,
    (_I, State.HANDSHAKING, "derived"): State.INSTALLING,
    (_I, State.INSTALLING, "installed"): State.COMMITTING,
    (_I, State.INSTALLING, "install_failed"): State.IDLE,
    (_I, State.COMMITTING, "done"): State.IDLE,
    # A responder is IDLE while handshakes run (none of them has authenticated yet).
    (_R, State.IDLE, "request_promote"): State.PROMOTING,
    (_R, State.AWAIT_COMMIT, "request_promote"): State.PROMOTING,
    (_R, State.PROMOTING, "promoted"): State.IDLE,
    (_R, State.IDLE, "derived"): State.AWAIT_COMMIT,
    (_R, State.AWAIT_COMMIT, "derived"): State.AWAIT_COMMIT,  # a newer authenticated exchange supersedes
    (_R, State.AWAIT_COMMIT, "abandon"): State.IDLE,
    (_R, State.AWAIT_COMMIT, "commit"): State.INSTALLING,
    (_R, State.INSTALLING, "installed"): State.IDLE,
    (_R, State.INSTALLING, "install_failed"): State.IDLE,
}


class RotationRefused(RemoteProtocolError):
    """The peer refused the rotation (unknown peer, busy, role conflict) or sent a bad confirmation."""


@dataclass(frozen=True)
class RotationPolicy:
    """When to rotate and what to do when rotation keeps failing (one peer)."""

    interval: float = 120.0
    """Seconds between rotations (the initiator's schedule)."""
    jitter: float = 0.1
    """Relative random spread of the interval (0.1: +-10 %), so many peers do not rotate in lock step."""
    deadline: float = 180.0
    """Seconds a key may live without a fresh exchange before the failure policy applies."""
    retry_initial: float = 2.0
    """First retry delay after a failed exchange; doubles per failure."""
    retry_max: float = 30.0
    """Longest retry delay."""
    failure_policy: FailurePolicy = FailurePolicy.KEEP
    """``keep`` or ``fail-closed``."""
    startup_spread: float = 5.0
    """The first exchange after start-up happens within this many seconds (random), capped by the jitter."""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("need 0 < retry_initial <= retry_max")
        if self.deadline <= self.interval * (1 + self.jitter):
            raise ValueError(f"deadline ({self.deadline:g} s) must exceed the longest interval "
                             f"({self.interval * (1 + self.jitter):g} s), or every rotation would go stale")
        if self.startup_spread < 0:
            raise ValueError("startup_spread must not be negative")


@dataclass(frozen=True)
class EpochKey:
    """The keys of one epoch, exported from one confirmed hybridkex session."""

    epoch: int
    psk: bytes = field(repr=False)
    """The 32-byte WireGuard pre-shared key."""
    confirm_key: bytes = field(repr=False)
    """MAC key of the rotation messages for this epoch (never installed anywhere)."""
    established: float
    """Clock value when the handshake produced it; the deadline counts from here."""
    qkd: str = "off"
    """What QKD contributed: ``used``, ``off`` or ``unavailable``."""

    @property
    def fingerprint(self) -> str:
        """Public name of the PSK (both ends print the same one)."""
        return key_fingerprint(self.psk)


def derive_epoch_key(export: Callable[[bytes, int], bytes], initiator_public: bytes, responder_public: bytes,
                     epoch: int, established: float, qkd: str) -> EpochKey:
    """Export an epoch's PSK and confirmation key from a session (``HandshakeResult.export``)."""
    return EpochKey(epoch, export(_labels.psk_label(initiator_public, responder_public, epoch), PSK_BYTES),
                    export(_labels.confirm_label(initiator_public, responder_public, epoch), 32),
                    established, qkd)


@dataclass(frozen=True)
class Install:
    """Action: put ``psk`` into every sink of the peer, then report back."""

    psk: bytes = field(repr=False)
    epoch: int
    reason: str
    """``rotate`` (a new epoch), ``promote`` (a pending key the partner proved it installed),
    ``rollback`` (back to the previous key) or ``stale`` (a random key: fail closed)."""
    key: EpochKey | None = None
    force_handshake: bool = False
    """Both ends now hold this key (or it is a random key): make WireGuard handshake with it at once."""


@dataclass(frozen=True)
class StartExchange:
    """Action (initiator): connect to the peer and send this Request."""

    request: Request


@dataclass(frozen=True)
class Stale:
    """Action: the installed key passed its deadline; report it (and install ``install`` if given)."""

    epoch: int
    age: float
    policy: FailurePolicy
    install: Install | None
    startup: bool = False
    """Not a deadline: fail-closed start-up, no hybrid key yet."""


Action = Install | StartExchange | Stale


@dataclass(frozen=True)
class PeerStatus:
    """Secret-free facts for the status file and ``hybridkex wg status``."""

    role: str
    state: str
    epoch: int
    highest_epoch: int
    last_rotation: float | None
    qkd: str
    fingerprint: str
    next_due: float | None
    fresh_until: float
    stale: bool
    confirmed: bool
    failures: int
    last_error: str
    last_error_at: float | None
    rotations: int
    interval: float
    """The agreed (stricter) interval in use."""
    deadline: float
    """The agreed (stricter) deadline in use."""
    established: float | None
    """When the current key's handshake finished (the key's age counts from here)."""
    installed_at: float | None
    """When the current key went into the sinks (a WireGuard handshake after this used it)."""


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, label + b"".join(parts), hashlib.sha256).digest()


def _ms(seconds: float) -> int:
    return max(0, min(int(round(seconds * 1000)), 0xFFFFFFFF))


class PeerRotation:
    """The rotation state of one (local interface key, peer key) pair."""

    def __init__(self, role: Role, local_public: bytes, peer_public: bytes, policy: RotationPolicy, *,
                 now: float, highest_epoch: int = 0, rng: Callable[[int], bytes] = os.urandom,
                 uniform: Callable[[float, float], float] = random.uniform, cut_at_start: bool = False) -> None:
        self.role = role
        self.policy = policy
        self._initiator_public, self._responder_public = (
            (local_public, peer_public) if role is Role.INITIATOR else (peer_public, local_public))
        self._rng = rng
        self._uniform = uniform
        self.state = State.IDLE
        self.highest_epoch = min(max(0, highest_epoch), MAX_EPOCH)
        #: the shared key in the sinks (None: nothing we derived, or a stale random key)
        self.current: EpochKey | None = None
        #: the shared key before ``current`` (for rollback)
        self.previous: EpochKey | None = None
        #: responder: derived but not installed (waiting for Commit or a Request's proof)
        self.pending: EpochKey | None = None
        self._new: EpochKey | None = None  # the key of the exchange in flight
        self._attempt_epoch = 0  # initiator: the epoch the Accept proposed (unauthenticated until derived)
        self._attempt_timing: tuple[float, float] = (0.0, 0.0)
        #: the partner's announced (interval, deadline), from its last authenticated exchange
        self.remote_timing: tuple[float, float] | None = None
        self._fresh_since = now
        self._fresh_before_new = now  # restored when the partner could not install the new key
        self.stale = False
        self.confirmed = False
        self.failures = 0
        self.rotations = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_rotation: float | None = None
        self._cut_due = cut_at_start
        spread = min(policy.startup_spread, policy.interval * policy.jitter) if policy.jitter else 0.0
        self.next_due = now + (self._uniform(0.0, spread) if spread else 0.0)

    # -- table ------------------------------------------------------------------------
    def _go(self, event: str) -> None:
        target = _TABLE.get((self.role, self.state, event))
        if target is None:
            raise LocalProtocolError(f"rotation state machine: {event!r} is not allowed for a {self.role.value} "
                                     f"in state {self.state.value}")
        self.state = target

    @property
    def busy(self) -> bool:
        return self.state is not State.IDLE

    # -- agreed timing --------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """The interval in use: the stricter of ours and the partner's (never pushed below 10 s by it)."""
        if self.remote_timing is None:
            return self.policy.interval
        floor = min(self.policy.interval, MIN_AGREED_INTERVAL)
        return max(floor, min(self.policy.interval, self.remote_timing[0]))

    @property
    def deadline(self) -> float:
        """The deadline in use: the stricter of ours and the partner's, if it still exceeds the interval."""
        if self.remote_timing is None:
            return self.policy.deadline
        remote = self.remote_timing[1]
        if self.interval * (1 + self.policy.jitter) < remote < self.policy.deadline:
            return remote
        return self.policy.deadline

    def announced(self) -> tuple[int, int]:
        """(interval, deadline) in milliseconds, as this side announces them."""
        return _ms(self.policy.interval), _ms(self.policy.deadline)

    def _agree(self, timing: tuple[float, float]) -> None:
        interval, deadline = timing
        self.remote_timing = (interval, deadline) if interval > 0 and deadline > 0 else None

    @property
    def fresh_until(self) -> float:
        return self._fresh_since + self.deadline

    def binding_keys(self) -> tuple[bytes, bytes]:
        """(initiator's, responder's) WireGuard public keys."""
        return self._initiator_public, self._responder_public

    def _proof(self, key: EpochKey) -> bytes:
        return _mac(key.confirm_key, _labels.PROOF_INSTALLED,
                    _labels.binding(self._initiator_public, self._responder_public, key.epoch))

    def _tag(self, label: bytes, key: EpochKey, extra: bytes = b"") -> bytes:
        return _mac(key.confirm_key, label, _labels.binding(self._initiator_public, self._responder_public,
                                                            key.epoch), extra)

    def _may_reinstall(self, key: EpochKey, now: float) -> bool:
        """Whether an older shared key may go back into the sinks (rollback, promotion): only while it is
        fresh, unless the policy is to keep old keys working."""
        return now < key.established + self.deadline or self.policy.failure_policy is FailurePolicy.KEEP

    def _installed_shared(self, key: EpochKey, now: float) -> None:
        if self.current is None or self.current.epoch != key.epoch:
            self.previous = self.current
        self.current = key
        self._fresh_since = key.established
        self.stale = False
        self.last_rotation = now
        self.rotations += 1

    def _backoff(self, now: float) -> None:
        self.failures += 1
        schedule = Backoff(self.policy.retry_initial, self.policy.retry_max, jitter=self.policy.jitter)
        self.next_due = now + schedule.delay(self.failures, self._uniform)

    def _check_remote_epoch(self, remote: int) -> None:
        if remote > self.highest_epoch + MAX_EPOCH_GAP or remote >= MAX_EPOCH:
            raise RotationRefused(f"the peer announced epoch {remote}, more than 2^32 beyond this side's "
                                  f"{self.highest_epoch}: a forged or confused message; nothing was changed")

    # -- time ---------------------------------------------------------------------------
    def poll(self, now: float) -> list[Action]:
        """What is due at ``now``: a stale report (and random key), and/or (initiator) an exchange."""
        actions: list[Action] = []
        if self._cut_due:
            self._cut_due = False
            if self.current is None and self.policy.failure_policy is FailurePolicy.FAIL_CLOSED:
                actions.append(Stale(0, 0.0, self.policy.failure_policy,
                                     Install(self._rng(PSK_BYTES), 0, "stale", force_handshake=True), startup=True))
        if not self.stale and now >= self.fresh_until:
            self.stale = True
            age = now - self._fresh_since
            epoch = self.current.epoch if self.current else 0
            install = None
            if self.policy.failure_policy is FailurePolicy.FAIL_CLOSED:
                install = Install(self._rng(PSK_BYTES), epoch, "stale", force_handshake=True)
                # The shared keys are dead: never re-install them (nor prove them to the partner).
                # A pending key from an exchange in flight is fresh and may still be committed.
                self.current = self.previous = None
                self.confirmed = False
            actions.append(Stale(epoch, age, self.policy.failure_policy, install))
        if self.role is Role.INITIATOR and self.state is State.IDLE and now >= self.next_due:
            actions.append(StartExchange(self.start(now)))
        return actions

    def next_wakeup(self) -> float:
        """The clock value at which :meth:`poll` may next have something to do."""
        if self._cut_due:
            return float("-inf")
        times = [] if self.stale else [self.fresh_until]
        if self.role is Role.INITIATOR and self.state is State.IDLE:
            times.append(self.next_due)
        return min(times) if times else float("inf")

    # -- both roles -------------------------------------------------------------------
    def derived(self, key: EpochKey, now: float, timing: tuple[float, float] | None = None) -> Install | None:
        """The handshake for the agreed epoch finished; ``key`` holds its exports.

        This is the first point at which the partner is authenticated: only now do the
        agreed epoch and the partner's announced ``timing`` (interval, deadline) take effect.
        """
        if self.role is Role.INITIATOR:
            if self.state is State.HANDSHAKING and key.epoch != self._attempt_epoch:
                raise LocalProtocolError(f"derived a key for epoch {key.epoch}, but epoch {self._attempt_epoch} "
                                         "was agreed")
            self._go("derived")
            self.highest_epoch = max(self.highest_epoch, key.epoch)
            self._agree(self._attempt_timing)
            self._new = key
            return Install(key.psk, key.epoch, "rotate", key)
        self._go("derived")
        self.highest_epoch = max(self.highest_epoch, key.epoch)
        if timing is not None:
            self._agree(timing)
        self.pending = key
        return None

    def failed(self, error: str, now: float) -> None:
        """The exchange in flight failed (network, handshake, peer refusal, timeout): back to idle."""
        self.last_error = error
        self.last_error_at = now
        if self.state is State.IDLE:  # e.g. the last message could not be sent: nothing in flight any more
            return
        self._new = None
        if self.state is State.COMMITTING:
            # Commit may or may not have arrived: keep the new key, let the next Request's proof settle it.
            self.confirmed = False
            self.state = State.IDLE
            self.next_due = now + self.policy.retry_initial
            return
        self.state = State.IDLE
        if self.role is Role.INITIATOR:
            self._backoff(now)
        else:
            self.failures += 1

    def abandon(self, key: EpochKey, now: float, error: str) -> None:
        """Responder: the authenticated exchange that derived ``key`` ended without a Commit.  The key stays
        pending (a later Request's proof may promote it); nothing happens if a newer exchange superseded it."""
        if self.state is State.AWAIT_COMMIT and self.pending is key:
            self._go("abandon")
            self.failures += 1
            self.last_error, self.last_error_at = error, now

    # -- initiator ----------------------------------------------------------------------
    def start(self, now: float) -> Request:
        """Begin an exchange: the Request to send."""
        self._go("start")
        proof_key = self.current
        interval_ms, deadline_ms = self.announced()
        return Request(self._initiator_public, self._responder_public,
                       proof_key.epoch if proof_key else 0, self.highest_epoch,
                       self._proof(proof_key) if proof_key else _NO_PROOF, interval_ms, deadline_ms)

    def accepted(self, accept: Accept, now: float) -> int:
        """The responder's Accept: returns the agreed epoch for the handshake context (it takes effect only
        when the handshake succeeds)."""
        if accept.status is not AcceptStatus.OK:
            reasons = {
                AcceptStatus.UNKNOWN_PEER: "the peer does not know this (interface, peer) pair; add this side's "
                                           "WireGuard public key to its configuration",
                AcceptStatus.BUSY: "the peer is already rotating this pair; will retry",
                AcceptStatus.ROLE_CONFLICT: "the peer is also configured to initiate for this pair; set role = "
                                            "\"responder\" on one side (or \"auto\" on both)",
                AcceptStatus.EPOCH_REFUSED: "the peer refused this side's epoch as too far ahead of its own "
                                            "(more than 2^32); reset the status file of one side",
            }
            raise RotationRefused(reasons.get(accept.status, f"the peer refused ({accept.status.name})"))
        if self.state is not State.REQUESTING:
            raise LocalProtocolError(f"rotation state machine: an Accept is not allowed for a {self.role.value} "
                                     f"in state {self.state.value}")
        self._check_remote_epoch(accept.highest_epoch)
        self._go("accept")
        self._attempt_epoch = max(self.highest_epoch, accept.highest_epoch) + 1
        self._attempt_timing = (accept.interval_ms / 1000, accept.deadline_ms / 1000)
        return self._attempt_epoch

    def install_result(self, ok: bool, now: float, error: str = "") -> Commit | Install | None:
        """Initiator: the sinks took the new key (-> Commit to send) or failed (-> rollback, if any)."""
        key = self._new
        assert key is not None
        if ok:
            self._go("installed")
            self._fresh_before_new = self._fresh_since
            self._installed_shared(key, now)
            self.confirmed = False
            return Commit(key.epoch, self._tag(_labels.TAG_COMMIT, key))
        self._go("install_failed")
        self._new = None
        self.last_error, self.last_error_at = f"installing the new key failed: {error}", now
        self._backoff(now)
        if self.current is not None and self._may_reinstall(self.current, now):
            return Install(self.current.psk, self.current.epoch, "rollback", self.current, force_handshake=True)
        return None

    def done(self, message: Done, now: float) -> Install | None:
        """Initiator: the responder's Done.  Returns a rollback when the responder could not install."""
        key = self._new
        assert key is not None
        expected = self._tag(_labels.TAG_DONE, key, bytes([message.status]))
        if message.epoch != key.epoch or not hmac.compare_digest(expected, message.tag):
            raise RotationRefused("the peer's Done message does not confirm this epoch's key (tampered or "
                                  "confused peer); the key stays installed and the next exchange re-checks it")
        self._go("done")
        self._new = None
        if message.status is DoneStatus.INSTALLED:
            self.confirmed = True
            self.failures = 0
            self.last_error = ""
            self.next_due = key.established + self.interval * (
                1 + self._uniform(-self.policy.jitter, self.policy.jitter))
            return None
        # The responder kept its previous key: go back to ours so both ends match again.
        self.last_error, self.last_error_at = "the peer could not install the new key; rolled back", now
        self._backoff(now)
        back = self.previous if self.previous is not None and self._may_reinstall(self.previous, now) else None
        self.current, self.previous = back, None
        self.confirmed = back is not None
        self._fresh_since = self._fresh_before_new
        # Without a fresh previous key there is nothing shared to go back to: the next exchange makes one.
        return Install(back.psk, back.epoch, "rollback", back, force_handshake=True) if back is not None else None

    # -- responder ----------------------------------------------------------------------
    def epoch_for(self, message: Request) -> int:
        """Responder: the epoch a Request's exchange will use (nothing changes until it succeeds)."""
        return max(self.highest_epoch, message.highest_epoch) + 1

    def timing_of(self, message: Request) -> tuple[float, float]:
        """The partner's announced (interval, deadline) in seconds (applied by :meth:`derived`)."""
        return message.interval_ms / 1000, message.deadline_ms / 1000

    def request(self, message: Request, now: float) -> tuple[Accept, Install | None]:
        """Responder: a Request for this pair arrived.  Returns the Accept and maybe a promotion.

        Nothing else changes: the Request is unauthenticated.  Only a proof that verifies
        under the pending key's confirmation key (so it comes from the partner, which
        installed that key) promotes the pending key.  The Accept is sent after the
        promotion (if any) was installed and reported with :meth:`promote_result`.
        """
        interval_ms, deadline_ms = self.announced()
        if self.role is not Role.RESPONDER:
            return Accept(AcceptStatus.ROLE_CONFLICT, 0), None
        if (message.initiator_public, message.responder_public) != (self._initiator_public, self._responder_public):
            raise LocalProtocolError("a Request for another pair was dispatched to this peer")
        try:
            self._check_remote_epoch(message.highest_epoch)
        except RotationRefused:
            return Accept(AcceptStatus.EPOCH_REFUSED, 0), None
        if self.state not in (State.IDLE, State.AWAIT_COMMIT):
            return Accept(AcceptStatus.BUSY, 0), None
        accept = Accept(AcceptStatus.OK, self.highest_epoch, interval_ms, deadline_ms)
        pending = self.pending
        if (pending is not None and message.installed_epoch == pending.epoch
                and hmac.compare_digest(self._proof(pending), message.proof) and self._may_reinstall(pending, now)):
            # The initiator installed this key but our Done/Commit got lost: install it now.
            self._go("request_promote")
            self.pending = None
            self._new = pending
            return accept, Install(pending.psk, pending.epoch, "promote", pending, force_handshake=True)
        return accept, None

    def promote_result(self, ok: bool, now: float, error: str = "") -> None:
        """Responder: the promoted key went into the sinks (or not); the handshake goes on regardless."""
        key = self._new
        assert key is not None
        self._go("promoted")
        self._new = None
        if ok:
            self._installed_shared(key, now)
            self.confirmed = True
        else:
            self.last_error, self.last_error_at = f"installing the promoted key failed: {error}", now

    def commit(self, message: Commit, now: float, key: EpochKey | None = None) -> Install:
        """Responder: the initiator installed the key and says so; install it too.  ``key`` is the key this
        connection derived (a newer authenticated exchange may have superseded it)."""
        pending = self.pending
        if self.state is not State.AWAIT_COMMIT or pending is None:
            raise LocalProtocolError("no key is waiting for a Commit")
        if key is not None and pending is not key:
            raise RotationRefused("a newer exchange for this pair superseded this one; its key is not installed")
        if message.epoch != pending.epoch or not hmac.compare_digest(self._tag(_labels.TAG_COMMIT, pending),
                                                                     message.tag):
            raise RotationRefused("the peer's Commit does not match this epoch's key (tampered or confused peer); "
                                  "keeping the previous key")
        self._go("commit")
        self._new = pending
        return Install(pending.psk, pending.epoch, "rotate", pending, force_handshake=True)

    def commit_result(self, ok: bool, now: float, error: str = "") -> tuple[Done, Install | None]:
        """Responder: the sinks took the key (Done INSTALLED) or not (rollback, Done INSTALL_FAILED)."""
        key = self._new
        assert key is not None
        self._new = None
        self.pending = None
        if ok:
            self._go("installed")
            self._installed_shared(key, now)
            self.confirmed = True
            self.failures = 0
            self.last_error = ""
            status = DoneStatus.INSTALLED
            rollback = None
        else:
            self._go("install_failed")
            self.failures += 1
            self.last_error, self.last_error_at = f"installing the new key failed: {error}", now
            status = DoneStatus.INSTALL_FAILED
            rollback = (Install(self.current.psk, self.current.epoch, "rollback", self.current,
                                force_handshake=True)
                        if self.current is not None and self._may_reinstall(self.current, now) else None)
        return Done(status, key.epoch, self._tag(_labels.TAG_DONE, key, bytes([status]))), rollback

    # -- reporting ----------------------------------------------------------------------
    def update_policy(self, policy: RotationPolicy, now: float) -> None:
        """A reload changed the timing or failure policy: keep keys and epochs, reschedule."""
        if policy == self.policy:
            return
        old_interval = self.interval
        self.policy = policy
        if self.role is Role.INITIATOR and self.confirmed and self.current is not None and \
                self.interval != old_interval:
            self.next_due = min(self.next_due, self.current.established + self.interval)

    def status(self) -> PeerStatus:
        key = self.current
        return PeerStatus(
            role=self.role.value, state=self.state.value, epoch=key.epoch if key else 0,
            highest_epoch=self.highest_epoch, last_rotation=self.last_rotation, qkd=key.qkd if key else "",
            fingerprint=key.fingerprint if key else "",
            next_due=self.next_due if self.role is Role.INITIATOR else None,
            fresh_until=self.fresh_until, stale=self.stale, confirmed=self.confirmed, failures=self.failures,
            last_error=self.last_error, last_error_at=self.last_error_at, rotations=self.rotations,
            interval=self.interval, deadline=self.deadline, established=key.established if key else None,
            installed_at=self.last_rotation if key else None)
