"""``hybridkex wg run``: keep every configured peer's pre-shared key fresh.

Threads, each with one job:

* the scheduler (the thread that calls :meth:`Daemon.run`, normally the main thread):
  polls every peer's state machine, starts due exchanges, applies failure policies,
  handles SIGHUP (reload) and SIGTERM/SIGINT (stop), writes the status file;
* a listener that accepts partners' connections and hands each to the responder pool,
  which dispatches it to the right peer by the two WireGuard public keys in the Request;
* two bounded thread pools, one for exchanges we initiate and one for those we answer
  (separate, so that two daemons initiating to each other can never starve each other).

A dead peer costs one worker for at most its timeout and then backs off exponentially;
a malformed message, a KME outage or a failing sink affects only the peer concerned.
Strangers are held off before they cost a worker for long: a source address may hold at
most :data:`PER_SOURCE` connections at once, a Request must arrive within
``REQUEST_TIMEOUT`` seconds (read by the accept loop, without a worker), the handshake
after it -- the partner is not authenticated before its end -- within ``preauth_timeout``
seconds, and their trouble is logged through a rate limiter.

Under ``fail-closed`` a peer starts with a random key (and a forced WireGuard handshake), so
no traffic flows on a session without a hybrid key -- unless WireGuard still holds the
fresh key of the previous run (its fingerprint and deadline are in the status file), so a
restart does not cut the tunnel.  A clean stop keeps the keys (``on_stop = "keep"``) or
installs random keys (``on_stop = "cut"``).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hybridkex import ConfigError, ExchangeSettings, HybridKexError, RemoteProtocolError
from hybridkex.io import listen
from hybridkex.protocol import HandshakeConfig
from hybridkex.qkd import prepare_source

from ._config import DaemonConfig, PeerConfig, peer_identities
from ._rotation import PSK_BYTES, FailurePolicy, Install, Stale, StartExchange, State
from ._session import (
    COUNTERS,
    LIMITER,
    REQUEST_TIMEOUT,
    PeerRuntime,
    Reporter,
    SocketSet,
    build_runtime,
    handle_stale,
    handshake_for,
    install,
    rotator_guard,
    run_initiator,
    serve_connection,
)
from ._sinks import SinkError, WgSink
from ._status import peer_entry, previous_peers, status_document, write_status
from ._wire import _BODIES, HEADER, MAGIC, VERSION, MessageType, Request, decode

__all__ = ["Daemon"]

log = logging.getLogger("hybridkex_wg")

#: Shortest pause of the scheduler loop, so a burst of finishing jobs cannot make it spin.
_MIN_TICK = 0.05
#: Longest pause: bounds how late a change made outside the loop is noticed.
_MAX_TICK = 1.0
_STATUS_PERIOD = 1.0
#: Seconds a stop waits for exchanges past their handshake to finish before aborting them.
_STOP_GRACE = 2.0
_FINISHING = frozenset({State.INSTALLING, State.COMMITTING, State.AWAIT_COMMIT, State.PROMOTING})
#: Connections one source address may hold open before they sent their Request (idle strangers).
PER_SOURCE = 16
#: Connections waiting for their Request, from all sources together.
_MAX_PENDING = 1024
_REQUEST_SIZE = HEADER.size + _BODIES[MessageType.REQUEST].size
_REQUEST_HEADER = HEADER.pack(MAGIC, VERSION, MessageType.REQUEST)


@dataclass
class _Pending:
    """A connection whose Request is still being read by the accept loop."""

    address: str
    source: str
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
#: Seconds between two reads of WireGuard's latest handshakes.
_WG_POLL = 2.0


class _Agenda:
    """Which peers the scheduler must poll, so that a tick costs O(due peers), not O(all peers).

    A heap holds each peer's next wake-up time (``state.next_wakeup()``); a queue holds the
    peers an exchange, a reload or the start just changed (polled at the next tick).  Heap
    entries whose peer has since been rescheduled are dropped when they come up.  A hub of
    1000 peers finishes exchanges hundreds of times a second; scanning every peer at each of
    those wake-ups cost more CPU than the rotations' own bookkeeping.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PeerRuntime]] = []
        self._order = itertools.count()
        self._poked: collections.deque[PeerRuntime] = collections.deque()  # append/popleft are thread-safe

    def poke(self, rt: PeerRuntime) -> None:
        """Poll ``rt`` at the next tick (any thread)."""
        rt.wake_at = float("-inf")
        self._poked.append(rt)

    def schedule(self, rt: PeerRuntime, when: float) -> None:
        """Poll ``rt`` again at ``when`` (scheduler thread)."""
        rt.wake_at = when
        if when != float("inf") and when != float("-inf"):
            heapq.heappush(self._heap, (when, next(self._order), rt))
        elif when == float("-inf"):
            self._poked.append(rt)

    def due(self, now: float) -> list[PeerRuntime]:
        """The peers to poll at ``now``, each once (scheduler thread)."""
        due: dict[int, PeerRuntime] = {}
        while self._poked:
            rt = self._poked.popleft()
            due[id(rt)] = rt
        while self._heap and self._heap[0][0] <= now:
            when, _, rt = heapq.heappop(self._heap)
            if rt.wake_at == when:  # not rescheduled since
                due[id(rt)] = rt
        return list(due.values())

    def next_time(self) -> float:
        """The earliest wake-up (perhaps of an entry since rescheduled: then a tick finds nothing due)."""
        return float("-inf") if self._poked else self._heap[0][0] if self._heap else float("inf")

    def compact(self, peers: dict[tuple[bytes, bytes], PeerRuntime]) -> None:
        """Drop the stale entries once they outnumber the peers (they are cheap, but need not pile up)."""
        if len(self._heap) > 4 * len(peers) + 64:
            self._heap = [(rt.wake_at, next(self._order), rt) for rt in peers.values()
                          if rt.wake_at not in (float("inf"), float("-inf"))]
            heapq.heapify(self._heap)


def _listen(address: tuple[str, int], backlog: int) -> socket.socket:
    sock = listen(address, backlog)
    sock.setblocking(False)  # the accept loop selects on it with a timeout, to notice a stop or a reload
    return sock


class Daemon:
    """The rotator for one configuration.  ``loader`` re-reads the configuration on SIGHUP."""

    def __init__(self, config: DaemonConfig, *, loader: Callable[[], DaemonConfig] | None = None,
                 reporter: Reporter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._loader = loader
        self.reporter = reporter or Reporter()
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._reload_requested = False
        self._sockets = SocketSet()
        self._listener: socket.socket | None = None
        self._listener_thread: threading.Thread | None = None
        self._last_status = ""
        self._last_status_time = 0.0
        self._per_source: dict[str, int] = {}  # only the accept loop touches it
        #: (interface, peer base64) -> Unix time of WireGuard's latest handshake, and when it was read
        self.wg_handshakes: dict[tuple[str, str], int] = {}
        self._wg_read_at = float("-inf")
        self._metrics_server: Any = None
        self.metrics_address: tuple[str, int] | None = None
        self.started_wall = time.time()
        self.peers: dict[tuple[bytes, bytes], PeerRuntime] = self._build(config, {})[0]
        self._agenda = _Agenda()
        for rt in self.peers.values():
            self._agenda.poke(rt)
        self.guard = rotator_guard(len(self.peers))
        self._initiators = ThreadPoolExecutor(config.workers, thread_name_prefix="hkwg-init")
        self._responders = ThreadPoolExecutor(config.workers, thread_name_prefix="hkwg-resp")
        self._slots = threading.BoundedSemaphore(config.workers * 4)
        self.bound_address: tuple[str, int] | None = None

    # -- configuration ----------------------------------------------------------------
    def _build(self, config: DaemonConfig,
               current: dict[tuple[bytes, bytes], PeerRuntime],
               ) -> tuple[dict[tuple[bytes, bytes], PeerRuntime], dict[ExchangeSettings, HandshakeConfig]]:
        """Runtimes for ``config``: existing pairs keep their state, new ones start fresh.  Loads credentials
        (ConfigError before anything changes)."""
        now = self._clock()
        previous = previous_peers(config.status_file)
        identities = peer_identities(config.peers)
        cache: dict[ExchangeSettings, HandshakeConfig] = {}
        result: dict[tuple[bytes, bytes], PeerRuntime] = {}
        for peer in config.peers:
            try:
                old = current.get(peer.key)
                if old is not None and old.config.role is peer.role:
                    handshake_for(peer.settings, cache)  # reload the credentials: they may have changed
                    old.expected_identity = identities[peer.key]
                    result[peer.key] = old  # updated in _apply, after every peer loaded
                    continue
                before = previous.get(peer.key, {})
                carried = old.state.highest_epoch if old is not None else int(before.get("highest_epoch", 0))
                cut = (peer.policy.failure_policy is FailurePolicy.FAIL_CLOSED and old is None
                       and not self._still_fresh(peer, before))
                result[peer.key] = build_runtime(peer, now=now, highest_epoch=carried, handshakes=cache,
                                                 expected_identity=identities[peer.key], cut_at_start=cut)
            except ConfigError as exc:
                raise ConfigError(f"peer {peer.ref.label}: {exc}") from None
        for settings in cache:
            prepare_source(settings)  # numpy, a link file, a BB84 link: at start-up, not in the first rotation
        return result, cache

    @staticmethod
    def _still_fresh(peer: PeerConfig, before: dict[str, Any]) -> bool:
        """Whether WireGuard still holds the previous run's key for this peer and it is within its deadline."""
        fingerprint, fresh_until = before.get("fingerprint"), before.get("fresh_until")
        if not fingerprint or not isinstance(fresh_until, (int, float)) or fresh_until <= time.time():
            return False
        for sink in peer.sinks:
            if isinstance(sink, WgSink):
                try:
                    return bool(sink.installed_fingerprint(peer.ref) == fingerprint)
                except SinkError:
                    return False
        return False

    def _apply(self, config: DaemonConfig, runtimes: dict[tuple[bytes, bytes], PeerRuntime],
               handshakes: dict[ExchangeSettings, HandshakeConfig]) -> tuple[int, int, int]:
        now = self._clock()
        by_key: dict[tuple[bytes, bytes], PeerConfig] = {p.key: p for p in config.peers}
        added = changed = 0
        for key, rt in runtimes.items():
            peer = by_key[key]
            if key not in self.peers or self.peers[key] is not rt:
                added += 1
                continue
            with rt.lock:
                if rt.config != peer:
                    changed += 1
                rt.config = peer
                rt.handshake = handshakes[peer.settings]
                rt.state.update_policy(peer.policy, now)
        removed = 0
        for key, rt in self.peers.items():
            if runtimes.get(key) is not rt:
                rt.removed = True
                if key not in runtimes:
                    removed += 1
        self.peers = runtimes
        for rt in runtimes.values():
            self._agenda.poke(rt)
        return added, removed, changed

    def reload(self) -> bool:
        """Re-read the configuration; on any error keep running the old one.  Returns success."""
        if self._loader is None:
            log.warning("reload requested, but this daemon was not started from a configuration file")
            return False
        try:
            config = self._loader()
            runtimes, handshakes = self._build(config, self.peers)
            if config.listen != self.config.listen:
                self._restart_listener(config.listen)
        except (HybridKexError, OSError) as exc:
            log.error("reload failed, still running the previous configuration: %s", exc)
            return False
        if config.workers != self.config.workers:
            log.warning("reload: 'workers' changes take effect after a restart")
        added, removed, changed = self._apply(config, runtimes, handshakes)
        if len(runtimes) > self.guard.load_threshold // 2:
            self.guard = rotator_guard(len(runtimes))
        self.config = config
        log.info("reloaded %s: %d peers (%d added, %d removed, %d changed)", config.source or "configuration",
                 len(runtimes), added, removed, changed)
        self._last_status = ""
        return True

    # -- listener ---------------------------------------------------------------------
    def _restart_listener(self, address: tuple[str, int] | None) -> None:
        new = _listen(address, 512) if address is not None else None
        old, old_thread = self._listener, self._listener_thread
        self._listener = new
        self._listener_thread = None
        if old is not None:
            old.close()
        if old_thread is not None:
            old_thread.join(2.0)
        if new is not None:
            self.bound_address = new.getsockname()[:2]
            self._listener_thread = threading.Thread(target=self._accept_loop, args=(new,), name="hkwg-listen",
                                                     daemon=True)
            self._listener_thread.start()
            log.info("listening for rotations on %s:%d", *self.bound_address)

    def _accept_loop(self, server: socket.socket) -> None:
        """Accept connections and read each one's Request without a worker (one selector for all of them):
        an idle or slow stranger costs a file descriptor for at most ``REQUEST_TIMEOUT`` seconds, never a
        worker; a source may have :data:`PER_SOURCE` such connections at once."""
        selector = selectors.DefaultSelector()
        selector.register(server, selectors.EVENT_READ, None)
        pending: dict[socket.socket, _Pending] = {}
        try:
            while not self._stopping.is_set() and self._listener is server:
                try:
                    events = selector.select(0.25)
                except OSError:
                    return
                for key, _ in events:
                    if key.data is None:
                        self._accept_one(server, selector, pending)
                    else:
                        self._read_request(key.fileobj, selector, pending)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn, item in list(pending.items()):
                    if now > item.deadline:
                        self._drop_pending(conn, selector, pending, "timeout",
                                           f"no Request within {REQUEST_TIMEOUT:g} s")
        finally:
            for conn in list(pending):
                self._drop_pending(conn, selector, pending, "", "")
            selector.close()

    def _accept_one(self, server: socket.socket, selector: selectors.BaseSelector,
                    pending: dict[socket.socket, _Pending]) -> None:
        try:
            conn, address = server.accept()
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            if not self._stopping.is_set() and self._listener is server:
                time.sleep(0.1)
            return
        source = address[0]
        held = self._per_source.get(source, 0)
        if held >= PER_SOURCE or len(pending) >= _MAX_PENDING:
            COUNTERS.add("rejected", "per-source-limit" if held >= PER_SOURCE else "pending-limit")
            LIMITER.log(logging.WARNING, ("per-source", source), "%s has %d rotation connections that sent no "
                        "Request yet; dropped another", source, held)
            conn.close()
            return
        self._per_source[source] = held + 1
        conn.setblocking(False)
        pending[conn] = _Pending(f"{address[0]}:{address[1]}", source, time.monotonic() + REQUEST_TIMEOUT)
        selector.register(conn, selectors.EVENT_READ, True)

    def _drop_pending(self, conn: socket.socket, selector: selectors.BaseSelector,
                      pending: dict[socket.socket, _Pending], reason: str, message: str, *,
                      close: bool = True) -> _Pending:
        item = pending.pop(conn)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        held = self._per_source.get(item.source, 1) - 1
        if held <= 0:
            self._per_source.pop(item.source, None)
        else:
            self._per_source[item.source] = held
        if close:
            conn.close()
        if reason:
            COUNTERS.add("rejected", reason)
            LIMITER.log(logging.ERROR, ("preauth", item.source, reason),
                        "rotation request from %s rejected before authentication: %s", item.address, message)
        return item

    def _read_request(self, conn: socket.socket, selector: selectors.BaseSelector,
                      pending: dict[socket.socket, _Pending]) -> None:
        item = pending[conn]
        try:
            chunk = conn.recv(_REQUEST_SIZE - len(item.buffer))
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_pending(conn, selector, pending, "reset", f"connection failed: {exc.strerror or exc}")
            return
        if not chunk:
            self._drop_pending(conn, selector, pending, "closed", "the connection closed before a full Request")
            return
        item.buffer += chunk
        if len(item.buffer) < _REQUEST_SIZE:
            if len(item.buffer) >= HEADER.size and bytes(item.buffer[:HEADER.size]) != _REQUEST_HEADER:
                try:
                    decode(bytes(item.buffer[:HEADER.size]))  # says why: magic, version or type
                except RemoteProtocolError as exc:
                    self._drop_pending(conn, selector, pending, "malformed", str(exc))
                    return
                self._drop_pending(conn, selector, pending, "malformed", "the first message was not a Request")
            return
        try:
            request = decode(bytes(item.buffer))
            if not isinstance(request, Request):
                raise RemoteProtocolError("the first message was not a Request")
        except RemoteProtocolError as exc:
            self._drop_pending(conn, selector, pending, "malformed", str(exc))
            return
        self._drop_pending(conn, selector, pending, "", "", close=False)
        if not self._slots.acquire(blocking=False):
            LIMITER.log(logging.WARNING, ("slots",), "too many rotation connections in progress; dropped one "
                        "from %s", item.source)
            conn.close()
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._responders.submit(self._serve, conn, item.address, request)
        except RuntimeError:  # pool shut down: stopping
            self._slots.release()
            conn.close()

    def _lookup(self, local_public: bytes, peer_public: bytes) -> PeerRuntime | None:
        return self.peers.get((local_public, peer_public))

    def _serve(self, conn: socket.socket, address: str, request: Request | None = None) -> None:
        try:
            with self._sockets.track(conn):
                rt = serve_connection(conn, self._lookup, self.reporter, clock=self._clock, peer_address=address,
                                      request=request, guard=self.guard,
                                      preauth_timeout=self.config.preauth_timeout)
                if rt is not None:
                    self._agenda.poke(rt)
        except HybridKexError:
            pass  # stopping
        finally:
            self._slots.release()
            self._wake.set()

    # -- scheduler --------------------------------------------------------------------
    def _initiate(self, rt: PeerRuntime, action: StartExchange) -> None:
        try:
            run_initiator(rt, action.request, self.reporter, self._sockets, clock=self._clock)
        finally:
            self._agenda.poke(rt)
            self._wake.set()

    def tick(self) -> float:
        """Poll the peers that are due (or that an exchange changed); returns the clock value of the next
        thing due."""
        now = self._clock()
        cuts = 0
        for rt in self._agenda.due(now):
            if self.peers.get(rt.config.key) is not rt:
                continue  # removed by a reload
            with rt.lock:
                actions = rt.state.poll(now)
                for action in actions:
                    if isinstance(action, Stale):
                        handle_stale(rt, action, self.reporter)
                        cuts += action.startup
                self._agenda.schedule(rt, rt.state.next_wakeup())
            for action in actions:
                if isinstance(action, StartExchange):
                    self._initiators.submit(self._initiate, rt, action)
        self._agenda.compact(self.peers)
        if cuts:
            log.warning("fail-closed start-up: installed random keys for %d peer(s) until their first rotation", cuts)
        return min(now + _MAX_TICK, self._agenda.next_time())

    def read_wg_handshakes(self, force: bool = False) -> None:
        """Refresh WireGuard's latest handshake per peer (one ``wg show`` per interface, at most every 2 s)."""
        now = self._clock()
        if not force and now - self._wg_read_at < _WG_POLL:
            return
        self._wg_read_at = now
        seen: dict[str, WgSink] = {}
        for rt in list(self.peers.values()):
            for sink in rt.config.sinks:
                if isinstance(sink, WgSink):
                    seen.setdefault(rt.config.interface, sink)
        table: dict[tuple[str, str], int] = {}
        for interface, sink in seen.items():
            try:
                for peer, when in sink.latest_handshakes(interface).items():
                    table[(interface, peer)] = when
            except SinkError as exc:
                LIMITER.log(logging.WARNING, ("wg-show", interface), "cannot read WireGuard's handshakes on %s: %s",
                            interface, exc)
        self.wg_handshakes = table

    def status_document(self) -> dict[str, Any]:
        offset = time.time() - self._clock()
        entries = []
        for rt in list(self.peers.values()):
            with rt.lock:
                status = rt.state.status()
            c = rt.config
            handshake = self.wg_handshakes.get((c.interface, c.ref.public_key_text))
            entries.append(peer_entry(c.interface, c.name, c.local_public, c.public_key, c.endpoint,
                                      c.policy.failure_policy.value, status.interval, status, offset,
                                      wg_handshake=handshake, qkd_note=rt.qkd_note))
        return status_document(entries, listen=self.config.listen, config=self.config.source,
                               started=self.started_wall)

    def write_status(self, force: bool = False) -> None:
        path = self.config.status_file
        if path is None:
            return
        now = self._clock()
        if not force and now - self._last_status_time < _STATUS_PERIOD:
            return
        self._last_status_time = now
        document = self.status_document()
        body = repr({k: v for k, v in document.items() if k != "updated"})
        if body == self._last_status and not force:
            return
        try:
            write_status(Path(path), document)
            self._last_status = body
        except (HybridKexError, OSError) as exc:
            log.error("cannot write the status file: %s", exc)

    # -- life cycle -------------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
        else:
            self.request_stop()

    def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until stopped (SIGTERM/SIGINT or :meth:`request_stop`)."""
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, self._signal)
        try:
            self._restart_listener(self.config.listen)
            if self.config.metrics is not None:
                from ._metrics import serve_metrics

                self._metrics_server = serve_metrics(self, self.config.metrics)
            log.info("rotating %d peer(s)", len(self.peers))
            if on_ready is not None:
                on_ready()
            while not self._stopping.is_set():
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                wake = self.tick()
                self.read_wg_handshakes()
                self.write_status()
                timeout = min(_MAX_TICK, max(_MIN_TICK, wake - self._clock()))
                self._wake.wait(timeout)
                self._wake.clear()
                if not self._stopping.is_set():
                    time.sleep(_MIN_TICK / 5)  # coalesce bursts of wake-ups
        finally:
            self._shutdown()
            for sig, handler in installed.items():
                signal.signal(sig, handler)

    def _shutdown(self) -> None:
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        # Exchanges in flight normally end within milliseconds: let them finish (an exchange cut between
        # the initiator's install and its Commit would leave the two ends apart until the next start),
        # then abort what is left -- dead peers, stuck KMEs.
        self._initiators.shutdown(wait=False, cancel_futures=True)
        self._responders.shutdown(wait=False, cancel_futures=True)
        give_up = time.monotonic() + _STOP_GRACE
        while time.monotonic() < give_up and any(rt.state.state in _FINISHING for rt in list(self.peers.values())):
            time.sleep(0.02)
        self._sockets.close_all()
        self._initiators.shutdown(wait=True)
        self._responders.shutdown(wait=True)
        if self._listener_thread is not None:
            self._listener_thread.join(2.0)
        if self.config.on_stop == "cut":
            self._cut_all()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.write_status(force=True)
        log.info("stopped")

    def _cut_all(self) -> None:
        """``on_stop = "cut"``: a random key (and a forced handshake) for every peer."""
        for rt in list(self.peers.values()):
            with rt.lock:
                ok, _ = install(rt, Install(os.urandom(PSK_BYTES), 0, "stale", force_handshake=True), self.reporter)
                rt.state.current = rt.state.previous = None
                rt.state.confirmed = False
            self.reporter.line("psk-cut", interface=rt.config.interface, peer=rt.config.ref.public_key_text,
                               name=rt.config.name or "-", reason="stop", action="random-key" if ok else
                               "random-key-failed")
