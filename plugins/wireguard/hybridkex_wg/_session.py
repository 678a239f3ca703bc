"""One rotation over one TCP connection: the blocking adapter around the state machine.

:func:`run_initiator` and :func:`serve_connection` do the network I/O (rotation messages
and the hybridkex handshake via :func:`hybridkex.exchange_over_socket`) and the sink
I/O; every decision is the :class:`~hybridkex_wg._rotation.PeerRotation`'s.  A peer's
lock is held around each state-machine call together with the sink calls it asks for,
so a stale timer and an exchange never interleave their installs; it is never held
during network I/O.  Every failure is caught here, recorded on that peer only, and
logged as one line.

On the answering side nothing a connection sends changes the peer's state before its
handshake has authenticated the partner *as the identity this WireGuard peer is bound to*:
failures before that point (garbage, stalls, resets, strangers, another pinned partner)
are only counted and logged through a rate limiter, so a flood costs a few log lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from hybridkex import (
    ExchangeSettings,
    HandshakeResult,
    HybridKexError,
    LocalProtocolError,
    QKDKeySource,
    QKDPolicyError,
    UnknownPeerError,
    exchange_over_socket,
)
from hybridkex.io import connect
from hybridkex.protocol import DoSGuard, HandshakeConfig

from . import _labels
from ._config import PeerConfig
from ._keys import wg_key_text
from ._rotation import (
    EpochKey,
    Install,
    PeerRotation,
    Role,
    RotationRefused,
    Stale,
    derive_epoch_key,
)
from ._wire import Accept, AcceptStatus, Commit, Done, DoneStatus, Request, read_message, send_message

__all__ = ["PeerRuntime", "Reporter", "SocketSet", "run_initiator", "serve_connection", "install", "handle_stale",
           "RateLimiter", "Counters", "REQUEST_TIMEOUT", "rotator_guard"]

log = logging.getLogger("hybridkex_wg")

_EVENTS = {"rotate": "set", "promote": "set", "rollback": "rollback", "stale": "stale"}
#: Seconds a responder waits for the Request after accepting a connection (before any authentication).
REQUEST_TIMEOUT = 2.0
#: Seconds between two log lines about the same unauthenticated trouble (per cause and source).
LOG_PERIOD = 30.0


class RateLimiter:
    """At most one log line per key and period; the next line says how many were suppressed."""

    def __init__(self, period: float = LOG_PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[object, tuple[float, int]] = {}
        self.suppressed_total = 0

    def allow(self, key: object) -> tuple[bool, int]:
        """(log now?, lines suppressed since the last one for ``key``)."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last >= self.period:
                if len(self._last) > 4096:  # bounded memory under a flood of distinct keys
                    self._last.clear()
                self._last[key] = (now, 0)
                return True, suppressed
            self._last[key] = (last, suppressed + 1)
            self.suppressed_total += 1
            return False, 0

    def log(self, level: int, key: object, message: str, *args: object) -> None:
        ok, suppressed = self.allow(key)
        if ok:
            log.log(level, message + (f" ({suppressed} similar suppressed)" if suppressed else ""), *args)


class Counters:
    """Thread-safe event counters for the metrics endpoint (no secrets, no per-source labels)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[tuple[str, str], int] = {}

    def add(self, name: str, label: str = "", n: int = 1) -> None:
        with self._lock:
            self.values[(name, label)] = self.values.get((name, label), 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.values)


#: Process-wide: pre-authentication trouble is logged through this limiter and counted here.
LIMITER = RateLimiter()
COUNTERS = Counters()


class Reporter:
    """Machine-readable result lines (stdout, one per event) -- never a key, only fingerprints."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, kind: str, **fields: object) -> None:
        fields.setdefault("time", f"{time.time():.3f}")
        text = kind + "".join(f" {k}={v}" for k, v in fields.items())
        with self._lock:
            stream = self._stream or sys.stdout
            stream.write(text + "\n")
            stream.flush()


class SocketSet:
    """Connections in flight, so that a stop can abort them at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False

    @contextlib.contextmanager
    def track(self, sock: socket.socket) -> Iterator[socket.socket]:
        with self._lock:
            if self._closed:
                sock.close()
                raise LocalProtocolError("the daemon is stopping")
            self._sockets.add(sock)
        try:
            yield sock
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def close_all(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class PeerRuntime:
    """A configured peer with its rotation state, lock and prepared handshake configuration."""

    def __init__(self, config: PeerConfig, state: PeerRotation, handshake: HandshakeConfig,
                 expected_identity: str = "") -> None:
        self.config = config
        self.state = state
        self.handshake = handshake
        """Credentials loaded and backend chosen once; each exchange only sets its context."""
        self.expected_identity = expected_identity
        """The one hybridkex identity the partner must authenticate as (``SHA256:...`` or ``psk:NAME``)."""
        self.lock = threading.Lock()
        self.removed = False
        self.qkd_note = ""
        """Why the last exchange had no QKD key (empty when it had one)."""
        self.wake_at = float("-inf")
        """The scheduler's cache of ``state.next_wakeup()``; -inf: poll at the next tick."""

    @property
    def label(self) -> str:
        return self.config.ref.label


def handshake_for(settings: ExchangeSettings, cache: dict[ExchangeSettings, HandshakeConfig]) -> HandshakeConfig:
    """Load credentials and pick the backend once per distinct settings (ConfigError on any problem)."""
    config = cache.get(settings)
    if config is None:
        config = settings.handshake_config()
        cache[settings] = config
    return config


def build_runtime(config: PeerConfig, *, now: float, highest_epoch: int = 0,
                  handshakes: dict[ExchangeSettings, HandshakeConfig] | None = None,
                  expected_identity: str | None = None, cut_at_start: bool = False) -> PeerRuntime:
    """Load the peer's credentials (once per distinct settings) and make its state machine."""
    from ._config import peer_identities

    handshake = handshake_for(config.settings, handshakes if handshakes is not None else {})
    if expected_identity is None:
        expected_identity = peer_identities((config,))[config.key]
    state = PeerRotation(config.role, config.local_public, config.public_key, config.policy, now=now,
                         highest_epoch=highest_epoch, cut_at_start=cut_at_start)
    return PeerRuntime(config, state, handshake, expected_identity)


def _error_text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def install(rt: PeerRuntime, action: Install, reporter: Reporter) -> tuple[bool, str]:
    """Run every sink of the peer for ``action`` (the caller holds ``rt.lock``).  Stops at the first failure."""
    event = _EVENTS[action.reason]
    extra = {"force_handshake": True} if action.force_handshake else {}
    for sink in rt.config.sinks:
        try:
            sink.set_psk(rt.config.ref, action.psk, action.epoch, event=event, **extra)
        except HybridKexError as exc:
            log.error("%s: %s", rt.label, _error_text(exc))
            return False, str(exc)
        except Exception as exc:  # a sink must never take the daemon down
            log.error("%s: sink %r crashed: %s", rt.label, sink, _error_text(exc))
            return False, f"sink {sink!r} crashed: {type(exc).__name__}"
    ref = rt.config.ref
    key = action.key
    if action.reason in ("rotate", "promote") and key is not None:
        reporter.line("psk-set", interface=ref.interface, peer=ref.public_key_text, name=ref.name or "-",
                      epoch=action.epoch, qkd="yes" if key.qkd == "used" else "no", role=rt.state.role.value,
                      fingerprint=key.fingerprint)
    elif action.reason == "rollback" and key is not None:
        reporter.line("psk-rollback", interface=ref.interface, peer=ref.public_key_text, name=ref.name or "-",
                      epoch=action.epoch, fingerprint=key.fingerprint)
    return True, ""


def handle_stale(rt: PeerRuntime, stale: Stale, reporter: Reporter) -> None:
    """Report a stale key and, when failing closed, install the random key (caller holds ``rt.lock``)."""
    ref = rt.config.ref
    action = "kept"
    if stale.install is not None:
        ok, _ = install(rt, stale.install, reporter)
        action = "random-key" if ok else "random-key-failed"
    if stale.startup:
        reporter.line("psk-cut", interface=ref.interface, peer=ref.public_key_text, name=ref.name or "-",
                      reason="startup", action=action)
        if action == "random-key":  # the daemon logs one line for all of them
            log.debug("%s: fail-closed start-up: installed a random key until the first rotation succeeds", rt.label)
        else:
            log.error("%s: fail-closed start-up: installing a random key FAILED", rt.label)
        return
    reporter.line("psk-stale", interface=ref.interface, peer=ref.public_key_text, name=ref.name or "-",
                  epoch=stale.epoch, age=f"{stale.age:.0f}", policy=stale.policy.value, action=action)
    log.warning("%s: no fresh key for %.0f s (deadline %g s): %s", rt.label, stale.age, rt.state.deadline,
                "installed a random key, the tunnel is cut until an exchange succeeds"
                if action == "random-key" else "keeping the old key" if action == "kept"
                else "installing the random key FAILED")


#: Simulated-link sources shared by every peer on one link file (and key_ID journal), reopened when the link
#: file changes.  Opening one per exchange costs a read of the whole key_ID journal each time (the core's
#: journal object starts from offset 0), which makes N rotations cost O(N^2).
_SHARED_SOURCES: dict[tuple[object, ...], tuple[tuple[object, ...], QKDKeySource | None]] = {}
_SHARED_LOCK = threading.Lock()


def _file_state(path: object) -> tuple[object, ...]:
    try:
        st = os.stat(str(path))
    except OSError as exc:
        return ("missing", exc.errno)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


def _qkd_source_for(rt: PeerRuntime) -> tuple[QKDKeySource | None, bool]:
    """(source, whether the caller closes it after the exchange)."""
    settings = rt.config.settings
    if settings.qkd != "sim" or settings.qkd_link is None:
        return _open_qkd(rt), True
    key = (settings.qkd_link, getattr(settings, "qkd_journal", None), settings.effective_qkd_policy)
    state = _file_state(settings.qkd_link)
    with _SHARED_LOCK:
        cached = _SHARED_SOURCES.get(key)
        if cached is not None and cached[0] == state:
            if cached[1] is None:  # preferred, and the link could not be opened: say so again (rate-limited)
                return _open_qkd(rt), True
            return cached[1], False
        source = _open_qkd(rt)
        _SHARED_SOURCES[key] = (state, source)
        # An older source for this link is left to the garbage collector: another exchange may still use it.
        return source, False


def _open_qkd(rt: PeerRuntime) -> QKDKeySource | None:
    """The QKD source for one exchange.  ``preferred`` goes on without one when it cannot be opened (link file
    missing or unreadable, KME unreachable), with a warning; ``required`` fails: no key without QKD."""
    settings = rt.config.settings
    try:
        return settings.open_qkd_source()
    except (HybridKexError, OSError) as exc:
        cause = _error_text(exc)
        if settings.effective_qkd_policy == "preferred":
            rt.qkd_note = f"QKD source cannot be opened: {cause}"
            LIMITER.log(logging.WARNING, ("qkd-open", rt.config.key),
                        "%s: the QKD source cannot be opened (%s); qkd_policy is preferred, so this rotation uses "
                        "ML-KEM + X25519 only -- fix the QKD source", rt.label, cause)
            return None
        raise QKDPolicyError(f"the QKD source cannot be opened ({cause}) and qkd_policy is required: no key is "
                             "installed without QKD; fix the QKD source") from None


def check_identity(rt: PeerRuntime, result: HandshakeResult) -> None:
    """The partner must have authenticated as the one identity this WireGuard peer is bound to (constant time)."""
    expected = rt.expected_identity
    actual = result.peer.fingerprint
    ok = hmac.compare_digest(actual.encode(), expected.encode())
    if not ok and expected.startswith("psk:") and result.peer.auth == "psk" and result.peer.psk_id is not None:
        # A core without name binding names a PSK partner by its key's identifier; the key file is this
        # peer's own (shared files are refused at load), so holding it identifies the partner.
        ok = hmac.compare_digest(actual.encode(), ("psk:" + result.peer.psk_id.hex()).encode())
    if not ok:
        raise UnknownPeerError(f"the partner authenticated as {actual}, but WireGuard peer {rt.label} is bound to "
                               f"{expected}; refusing to rotate this peer's key (another pinned partner, or a wrong "
                               "pinned_peers entry)")


def rotator_guard(peers: int) -> DoSGuard:
    """The core's responder guard (replay cache, cookies, per-source rate) sized for a rotator.

    A rotation reaches the handshake only after its Request named a configured pair, and
    all of a hub's peers may be due at once (start-up) from one address; the core's default
    (load above 32 handshakes a second, then 10 a second per source) would throttle such a
    hub to minutes.  So the load threshold and the per-source budget scale with the number
    of configured peers; replays and cookie checks beyond that stay as the core does them.
    """
    return DoSGuard(load_threshold=max(32, 2 * peers), source_rate=max(10.0, peers / 2),
                    source_burst=max(20, 2 * peers))


def _exchange(rt: PeerRuntime, sock: socket.socket, role: Role, epoch: int, clock: Callable[[], float],
              guard: DoSGuard | None = None, preauth_timeout: float | None = None) -> EpochKey:
    """Run the hybridkex handshake for ``epoch``, check who the partner is, and export the epoch's keys.

    ``preauth_timeout`` bounds the handshake (the partner is not authenticated before its end) below the
    exchange's own timeout, so a partner that sent a Request and then stalls frees the worker early."""
    initiator_public, responder_public = rt.state.binding_keys()
    settings = rt.config.settings
    context = _labels.exchange_context(initiator_public, responder_public, epoch)
    config = dataclasses.replace(rt.handshake, context=context)
    if preauth_timeout is not None and preauth_timeout < config.timeout:
        config = dataclasses.replace(config, timeout=preauth_timeout)
    if settings.psk_ratchet is not None:
        # The ratchet's keys change with every exchange: read them now, not from the cached config.
        config = dataclasses.replace(config, authenticator=settings.authenticator())
    rt.qkd_note = ""
    source, close = _qkd_source_for(rt)
    try:
        result = exchange_over_socket(sock, "initiator" if role is Role.INITIATOR else "responder", config,
                                      qkd_source=source, guard=guard)
    finally:
        if source is not None and close:
            source.close()
    check_identity(rt, result)
    settings.after_success(result)  # both sides confirmed the session: advance the authentication ratchet
    if result.qkd.status == "unavailable":
        rt.qkd_note = result.qkd.reason or rt.qkd_note or "no QKD key"
        LIMITER.log(logging.WARNING, ("qkd-unavailable", rt.config.key),
                    "%s: no QKD key for this rotation (%s); qkd_policy is preferred, so the key is ML-KEM + X25519 "
                    "only", rt.label, rt.qkd_note)
    return derive_epoch_key(result.export, initiator_public, responder_public, epoch, clock(), result.qkd.status)


def _fail(rt: PeerRuntime, exc: BaseException, clock: Callable[[], float], what: str, *, quiet: bool = False) -> None:
    """Record a failure on the peer's state and log one line (``quiet``: the caller reports it instead)."""
    text = _error_text(exc)
    with rt.lock:
        rt.state.failed(text, clock())
        retry = rt.state.next_due - clock() if rt.state.role is Role.INITIATOR else None
    if quiet:
        return
    log.error("%s: %s failed: %s%s", rt.label, what, text, f"; retry in {retry:.1f} s" if retry is not None else "")


def run_initiator(rt: PeerRuntime, request: Request, reporter: Reporter, sockets: SocketSet, *,
                  clock: Callable[[], float] = time.monotonic, raise_errors: bool = False,
                  connected: socket.socket | None = None) -> None:
    """Run the exchange that ``PeerRotation.poll`` started: connect to the peer's endpoint (or use
    ``connected``), rotate, close.

    Failures are recorded on the peer and logged; with ``raise_errors`` (one-shot use)
    they are raised afterwards too.
    """
    endpoint = rt.config.endpoint
    timeout = rt.config.settings.timeout
    try:
        if connected is not None:
            connection = connected
        elif endpoint is not None:
            connection = connect(endpoint, timeout=min(timeout, 5.0))
        else:
            raise LocalProtocolError("no endpoint configured for a peer this side initiates for")
        with sockets.track(connection) as sock:
            deadline = time.monotonic() + timeout
            send_message(sock, request, deadline)
            accept = read_message(sock, deadline, Accept, "Accept")
            assert isinstance(accept, Accept)
            with rt.lock:
                epoch = rt.state.accepted(accept, clock())
            key = _exchange(rt, sock, Role.INITIATOR, epoch, clock)
            with rt.lock:
                if rt.removed:
                    raise LocalProtocolError("the peer was removed from the configuration")
                action = rt.state.derived(key, clock())
                assert action is not None
                ok, error = install(rt, action, reporter)
                reply = rt.state.install_result(ok, clock(), error)
                if isinstance(reply, Install):
                    install(rt, reply, reporter)
            if not isinstance(reply, Commit):
                # Nothing to commit: the responder keeps its key and drops the pending one.
                raise RotationRefused(f"not committed: {error}")
            send_message(sock, reply, deadline)
            done = read_message(sock, deadline, Done, "Done")
            assert isinstance(done, Done)
            with rt.lock:
                rollback = rt.state.done(done, clock())
                if rollback is not None:
                    install(rt, rollback, reporter)
                problem = rt.state.last_error
            if problem:
                raise RotationRefused(problem)
    except HybridKexError as exc:
        _fail(rt, exc, clock, "rotation", quiet=raise_errors)
        if raise_errors:
            raise
    except Exception as exc:  # one peer's bug must not stop the others
        log.exception("%s: rotation crashed", rt.label)
        _fail(rt, exc, clock, "rotation", quiet=True)
        if raise_errors:
            raise


def serve_connection(sock: socket.socket, lookup: Callable[[bytes, bytes], PeerRuntime | None],
                     reporter: Reporter, *, clock: Callable[[], float] = time.monotonic,
                     peer_address: str = "?", raise_errors: bool = False,
                     request: Request | None = None, guard: DoSGuard | None = None,
                     preauth_timeout: float | None = None) -> PeerRuntime | None:
    """Answer one incoming rotation on an accepted socket (``request``: already read).  Returns the peer it
    was for.

    Failures after authentication are recorded on the peer and logged; failures before it
    only counted and logged (rate-limited).  With ``raise_errors`` (one-shot use) errors
    are raised afterwards too.  ``preauth_timeout`` bounds the handshake (see :func:`_exchange`).
    """
    source = peer_address.rsplit(":", 1)[0]
    rt: PeerRuntime | None = None
    key: EpochKey | None = None
    try:
        if request is None:
            message = read_message(sock, time.monotonic() + REQUEST_TIMEOUT, Request, "Request")
            assert isinstance(message, Request)
            request = message
        rt = lookup(request.responder_public, request.initiator_public)
        if rt is None:
            COUNTERS.add("rejected", "unknown-pair")
            send_message(sock, Accept(AcceptStatus.UNKNOWN_PEER, 0), time.monotonic() + 2.0)
            LIMITER.log(logging.ERROR, ("unknown", request.initiator_public, request.responder_public),
                        "rotation request from %s for unknown pair (peer %s, local key %s); add the peer to the "
                        "configuration", peer_address, wg_key_text(request.initiator_public),
                        wg_key_text(request.responder_public))
            return None
        deadline = time.monotonic() + rt.config.settings.timeout
        with rt.lock:
            accept, promote = rt.state.request(request, clock())
            if promote is not None:
                ok, error = install(rt, promote, reporter)
                rt.state.promote_result(ok, clock(), error)
            epoch = rt.state.epoch_for(request)
            timing = rt.state.timing_of(request)
        send_message(sock, accept, deadline)
        if accept.status is not AcceptStatus.OK:
            COUNTERS.add("rejected", accept.status.name.lower())
            LIMITER.log(logging.WARNING, ("refused", rt.config.key, accept.status),
                        "%s: refused a rotation request from %s (%s)", rt.label, peer_address,
                        accept.status.name.lower().replace("_", " "))
            return rt
        key = _exchange(rt, sock, Role.RESPONDER, epoch, clock, guard, preauth_timeout)
        # Authenticated as this peer's partner: from here on, failures are the peer's.
        with rt.lock:
            rt.state.derived(key, clock(), timing)
        commit = read_message(sock, deadline, Commit, "Commit")
        assert isinstance(commit, Commit)
        with rt.lock:
            if rt.removed:
                raise LocalProtocolError("the peer was removed from the configuration")
            action = rt.state.commit(commit, clock(), key)
            ok, error = install(rt, action, reporter)
            done, rollback = rt.state.commit_result(ok, clock(), error)
            if rollback is not None:
                install(rt, rollback, reporter)
        send_message(sock, done, deadline)
        if done.status is not DoneStatus.INSTALLED:
            raise RotationRefused(f"could not install the new key: {error}")
    except HybridKexError as exc:
        if rt is not None and key is not None:
            with rt.lock:
                rt.state.abandon(key, clock(), _error_text(exc))
            if not raise_errors:
                log.error("%s: answering a rotation failed: %s", rt.label, _error_text(exc))
        else:
            COUNTERS.add("rejected", "before-authentication")
            LIMITER.log(logging.ERROR, ("preauth", source, type(exc).__name__),
                        "rotation request from %s%s rejected before authentication: %s", peer_address,
                        f" ({rt.label})" if rt else "", _error_text(exc))
        if raise_errors:
            raise
    except Exception:
        if rt is not None and key is not None:
            with rt.lock:
                rt.state.abandon(key, clock(), "internal error")
        log.exception("rotation request from %s crashed", peer_address)
        if raise_errors:
            raise
    return rt
