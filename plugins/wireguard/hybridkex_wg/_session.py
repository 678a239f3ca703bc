"""One rotation over one TCP connection: the blocking adapter around the state machine.

:func:`run_initiator` and :func:`serve_connection` do the network I/O (rotation messages
and the hybridkex handshake via :func:`hybridkex.exchange_over_socket`) and the sink
I/O; every decision is the :class:`~hybridkex_wg._rotation.PeerRotation`'s.  A peer's
lock is held around each state-machine call together with the sink calls it asks for,
so a stale timer and an exchange never interleave their installs; it is never held
during network I/O.  Every failure is caught here, recorded on that peer only, and
logged as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from hybridkex import (
    ExchangeSettings,
    HandshakeConfig,
    HybridKexError,
    LocalProtocolError,
    connect,
    exchange_over_socket,
)

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

__all__ = ["PeerRuntime", "Reporter", "SocketSet", "run_initiator", "serve_connection", "install", "handle_stale"]

log = logging.getLogger("hybridkex_wg")

_EVENTS = {"rotate": "set", "promote": "set", "rollback": "rollback", "stale": "stale"}
#: Seconds a responder waits for the Request after accepting a connection.
REQUEST_TIMEOUT = 10.0


class Reporter:
    """Machine-readable result lines (stdout, one per event) -- never a key, only fingerprints."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, kind: str, **fields: object) -> None:
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

    def __init__(self, config: PeerConfig, state: PeerRotation, handshake: HandshakeConfig) -> None:
        self.config = config
        self.state = state
        self.handshake = handshake
        """Credentials loaded and backend chosen once; each exchange only sets its context."""
        self.lock = threading.Lock()
        self.removed = False

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
                  handshakes: dict[ExchangeSettings, HandshakeConfig] | None = None) -> PeerRuntime:
    """Load the peer's credentials (once per distinct settings) and make its state machine."""
    handshake = handshake_for(config.settings, handshakes if handshakes is not None else {})
    state = PeerRotation(config.role, config.local_public, config.public_key, config.policy, now=now,
                         highest_epoch=highest_epoch)
    return PeerRuntime(config, state, handshake)


def _error_text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def install(rt: PeerRuntime, action: Install, reporter: Reporter) -> tuple[bool, str]:
    """Run every sink of the peer for ``action`` (the caller holds ``rt.lock``).  Stops at the first failure."""
    event = _EVENTS[action.reason]
    for sink in rt.config.sinks:
        try:
            sink.set_psk(rt.config.ref, action.psk, action.epoch, event=event)
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
    reporter.line("psk-stale", interface=ref.interface, peer=ref.public_key_text, name=ref.name or "-",
                  epoch=stale.epoch, age=f"{stale.age:.0f}", policy=stale.policy.value, action=action)
    log.warning("%s: no fresh key for %.0f s (deadline %g s): %s", rt.label, stale.age, rt.state.policy.deadline,
                "installed a random key, the tunnel is cut until an exchange succeeds"
                if action == "random-key" else "keeping the old key" if action == "kept"
                else "installing the random key FAILED")


def _exchange(rt: PeerRuntime, sock: socket.socket, role: Role, epoch: int, clock: Callable[[], float]) -> EpochKey:
    """Run the hybridkex handshake for ``epoch`` and export the epoch's keys."""
    initiator_public, responder_public = rt.state.binding_keys()
    settings = rt.config.settings
    context = _labels.exchange_context(initiator_public, responder_public, epoch)
    config = dataclasses.replace(rt.handshake, context=context)
    if settings.psk_ratchet is not None:
        # The ratchet's keys change with every exchange: read them now, not from the cached config.
        config = dataclasses.replace(config, authenticator=settings.authenticator())
    source = settings.open_qkd_source()
    try:
        result = exchange_over_socket(sock, "initiator" if role is Role.INITIATOR else "responder", config,
                                      qkd_source=source)
    finally:
        if source is not None:
            source.close()
    settings.after_success(result)  # both sides confirmed the session: advance the authentication ratchet
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
                     peer_address: str = "?", raise_errors: bool = False) -> PeerRuntime | None:
    """Answer one incoming rotation on an accepted socket.  Returns the peer it was for.

    Failures are recorded on the peer and logged; with ``raise_errors`` (one-shot use)
    errors during an accepted rotation are raised afterwards too.
    """
    rt: PeerRuntime | None = None
    try:
        request = read_message(sock, time.monotonic() + REQUEST_TIMEOUT, Request, "Request")
        assert isinstance(request, Request)
        rt = lookup(request.responder_public, request.initiator_public)
        if rt is None:
            send_message(sock, Accept(AcceptStatus.UNKNOWN_PEER, 0), time.monotonic() + 2.0)
            log.error("rotation request from %s for unknown pair (peer %s, local key %s); add the peer to the "
                      "configuration", peer_address, wg_key_text(request.initiator_public),
                      wg_key_text(request.responder_public))
            return None
        deadline = time.monotonic() + rt.config.settings.timeout
        with rt.lock:
            accept, promote = rt.state.request(request, clock())
            if promote is not None:
                ok, error = install(rt, promote, reporter)
                rt.state.promote_result(ok, clock(), error)
            epoch = rt.state.highest_epoch
        send_message(sock, accept, deadline)
        if accept.status is not AcceptStatus.OK:
            log.warning("%s: refused a rotation request from %s (%s)", rt.label, peer_address,
                        accept.status.name.lower().replace("_", " "))
            return rt
        try:
            key = _exchange(rt, sock, Role.RESPONDER, epoch, clock)
            with rt.lock:
                rt.state.derived(key, clock())
            commit = read_message(sock, deadline, Commit, "Commit")
            assert isinstance(commit, Commit)
            with rt.lock:
                if rt.removed:
                    raise LocalProtocolError("the peer was removed from the configuration")
                action = rt.state.commit(commit, clock())
                ok, error = install(rt, action, reporter)
                done, rollback = rt.state.commit_result(ok, clock(), error)
                if rollback is not None:
                    install(rt, rollback, reporter)
            send_message(sock, done, deadline)
            if done.status is not DoneStatus.INSTALLED:
                raise RotationRefused(f"could not install the new key: {error}")
        except HybridKexError as exc:
            _fail(rt, exc, clock, "answering a rotation", quiet=raise_errors)
            if raise_errors:
                raise
        except Exception as exc:
            log.exception("%s: answering a rotation crashed", rt.label)
            _fail(rt, exc, clock, "answering a rotation", quiet=True)
            if raise_errors:
                raise
    except HybridKexError as exc:
        log.error("rotation request from %s%s rejected: %s", peer_address, f" ({rt.label})" if rt else "",
                  _error_text(exc))
    except Exception:
        log.exception("rotation request from %s crashed", peer_address)
    return rt
