"""A two-KME ETSI GS QKD 014 simulator joined by a simulated BB84 link.

Two KMEs run in one process, each an HTTPS server that requires mutual TLS and serves one SAE,
identified by the subject common name of its client certificate.  A simulated BB84 link
(:mod:`hybridkex.qkd._bb84`) fills one key store that both KMEs draw from, at the link's
secret-key rate; a key that master SAE A takes from KME A with ``enc_keys`` is handed to
slave SAE B by KME B with ``dec_keys``, by key_ID, once.  (Real KMEs each hold a copy of the
same link key and tell each other which key_IDs were assigned; in one process one copy does.)

Everything a client observes follows ETSI GS QKD 014 V1.1.1:

* §5.2 ``GET /api/v1/keys/{slave_SAE_ID}/status`` -> Status (§6.1), all fields;
* §5.3 ``POST|GET .../{slave_SAE_ID}/enc_keys`` (Key request §6.2, or query number & size)
  -> Key container (§6.3);
* §5.4 ``POST|GET .../{master_SAE_ID}/dec_keys`` (Key IDs §6.4, or query key_ID)
  -> Key container (§6.3);
* errors 400 (bad request: size not a multiple of 8 or outside [min_key_size, max_key_size],
  number above max_key_per_request, unknown or consumed key_ID, malformed body), 401 (an SAE
  asking for keys it is not entitled to) and 503 (no key: pool exhausted, or the link aborted
  on high QBER; or the KME busy, with ``Retry-After``), each with an Error body
  ``{"message", "details"}`` (§6.5);
* every other answer too is ``application/json`` with that Error body: 404 (no such method),
  405 with ``Allow`` (a method the resource does not take), 501 (a method HTTP does not
  define), 408/411/413/414/415/431/505 for requests that are slow, chunked, too large, not JSON
  or not HTTP/1.x.

Connections are bounded (:class:`KMEConfig`): one I/O thread per KME accepts, handshakes and
reads without blocking, a fixed pool of workers answers complete requests, and handshake,
request and keep-alive idle times are limited, so idle connections cost no thread.

The message for a consumed key_ID says "has already been consumed", which
:class:`hybridkex.qkd._etsi014.Etsi014Client` maps to :class:`hybridkex.QKDKeyReplay`.

Keys never appear in logs.  :class:`Faults` makes a KME misbehave on purpose (503s,
malformed JSON, short keys, wrong or duplicated key_IDs, delays, dropped connections) for
interop tests of clients.

Use in-process::

    with KMEPair.start(tmp_path / "pki") as pair:      # creates the PKI if needed
        alice = pair.client("sae-a")                    # Etsi014Client for SAE A at KME A
        bob = pair.client("sae-b")
        key = alice.get_new_keys(1)[0]
        assert bob.get_keys_by_id([key.key_id])[0] == key
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http
import json
import logging
import math
import os
import queue
import re
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol

from hybridkex import ConfigError
from hybridkex.qkd import API_PREFIX, Etsi014Client, parse_key_id

from ._pki import TestPKI, check_sae_id, create_test_pki, load_test_pki

__all__ = [
    "KMEConfig",
    "KMEPair",
    "KME",
    "KeyPool",
    "LinkPump",
    "LinkState",
    "Faults",
    "Reply",
    "DEFAULT_KEY_RATE",
]

_log = logging.getLogger("hybridkex.qkd.kme")

#: Default secret-key rate of the simulated link, bits per second.
DEFAULT_KEY_RATE = 64_000.0
_MAX_REQUEST_BODY = 64 << 10
_PATH_RE = re.compile(re.escape(API_PREFIX) + r"/([^/]+)/(status|enc_keys|dec_keys)")
# Methods HTTP defines (RFC 9110 §9, RFC 5789): anything else is 501, these are 405 where not served.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
# Bits of link time an aborted block costs before the first good block tells us its size.
_DEFAULT_BLOCK_BITS = 2048


@dataclass(frozen=True)
class KMEConfig:
    """What the KMEs announce in their Status (ETSI GS QKD 014 §6.1) and enforce."""

    #: default key size in bits (``key_size``)
    key_size: int = 256
    #: smallest key size in bits a request may ask for (``min_key_size``)
    min_key_size: int = 64
    #: largest key size in bits a request may ask for (``max_key_size``)
    max_key_size: int = 1024
    #: most keys in one request (``max_key_per_request``)
    max_key_per_request: int = 128
    #: pool capacity in keys of ``key_size`` bits (``max_key_count``); 1024 x 256 bits is
    #: 4 s of the default 64 kbit/s link
    max_key_count: int = 1024
    #: keys handed out but not yet fetched by the slave are kept at most this many per KME
    max_pending: int = 65536
    #: open connections per KME; a new one beyond this closes the longest-idle one (or, if every
    #: connection is busy, is closed at once)
    max_connections: int = 256
    #: threads per KME that answer requests (plus one thread per KME for all socket I/O)
    workers: int = 8
    #: complete requests that may wait for a busy worker; beyond this the answer is 503 with
    #: ``Retry-After``
    queue_size: int = 64
    #: seconds from accepting a connection to a finished TLS handshake
    handshake_timeout: float = 5.0
    #: seconds from the first byte of a request to its last (then 408)
    request_timeout: float = 10.0
    #: seconds a kept-alive connection may wait for its next request
    idle_timeout: float = 30.0
    #: requests on one connection before the KME closes it (``Connection: close``)
    max_requests_per_connection: int = 1000

    def __post_init__(self) -> None:
        for name in ("key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_key_count",
                     "max_pending", "max_connections", "workers", "max_requests_per_connection"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"KME setting {name} must be a positive integer, not {value!r}")
        if type(self.queue_size) is not int or self.queue_size < 0:
            raise ConfigError(f"KME setting queue_size must be an integer >= 0, not {self.queue_size!r}")
        for name in ("handshake_timeout", "request_timeout", "idle_timeout"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"KME setting {name} must be a positive number of seconds, not {value!r}")
        if not self.min_key_size <= self.key_size <= self.max_key_size or any(
                v % 8 for v in (self.min_key_size, self.key_size, self.max_key_size)):
            raise ConfigError("KME key sizes must be multiples of 8 with min_key_size <= key_size <= max_key_size")

    @property
    def capacity_bits(self) -> int:
        """Pool capacity in bits."""
        return self.max_key_count * self.key_size


class BlockSource(Protocol):
    """What the pump needs from a link: :meth:`hybridkex_sim.BB84Link.block`."""

    def block(self, index: int) -> Any: ...


@dataclass(frozen=True)
class LinkState:
    """A snapshot of the simulated link feeding the pool."""

    #: blocks run so far
    blocks: int
    #: blocks that yielded no key
    aborted_blocks: int
    #: QBER estimated on the last block
    qber: float
    #: whether the last block aborted
    aborted: bool
    #: why the last block aborted ("" if it did not)
    reason: str
    #: secret-key rate the link is paced to, bits per second
    key_rate: float


class KeyPool:
    """The key store both KMEs draw from, and the book of key_IDs handed out.

    One lock guards the key bytes and both KMEs' pending/consumed key_IDs, so taking key
    material and announcing its key_ID to the peer KME is one atomic step.
    """

    def __init__(self, capacity_bits: int) -> None:
        self.capacity_bytes = capacity_bits // 8
        self.lock = threading.Lock()
        self._buf = bytearray()

    @property
    def bits(self) -> int:
        """Key bits in store."""
        return len(self._buf) * 8

    def room(self) -> int:
        """Free space in bytes."""
        with self.lock:
            return self.capacity_bytes - len(self._buf)

    def add(self, data: bytes | bytearray) -> int:
        """Store as much of ``data`` as fits; return the number of bytes taken."""
        with self.lock:
            n = min(len(data), self.capacity_bytes - len(self._buf))
            self._buf += data[:n]
            return n

    def take_locked(self, nbytes: int) -> bytes | None:
        """Remove and return ``nbytes`` (caller holds :attr:`lock`), or None if fewer are stored."""
        if nbytes > len(self._buf):
            return None
        out = bytes(self._buf[:nbytes])
        del self._buf[:nbytes]
        return out

    def drain(self) -> None:
        """Empty the pool (tests)."""
        with self.lock:
            self._buf.clear()


class LinkPump:
    """Moves key from a BB84 link into a :class:`KeyPool` at ``key_rate`` bits per second.

    A credit of link time accrues at ``key_rate``; each good block's key is released into the
    pool as the credit allows, and an aborted block burns a block's worth of credit and yields
    nothing (so a tapped link stays dry).  The credit never exceeds the pool size and is lost
    while the pool is full: a full store does not bank key for later.
    """

    def __init__(self, link: BlockSource, pool: KeyPool, key_rate: float, *,
                 clock: Callable[[], float] = time.monotonic, tick: float = 0.01) -> None:
        if not key_rate > 0:
            raise ConfigError(f"key rate must be positive bits per second, not {key_rate!r}")
        self.link = link
        self.pool = pool
        self.key_rate = float(key_rate)
        self._clock = clock
        self._tick = tick
        self._lock = threading.Lock()
        self._credit = 0.0
        self._staged = bytearray()
        self._index = 0
        self._block_bits = _DEFAULT_BLOCK_BITS
        # Published as one immutable snapshot so readers never wait for a block to be computed.
        self._state = LinkState(0, 0, 0.0, False, "", self.key_rate)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def state(self) -> LinkState:
        """The link's current state (no key material)."""
        return self._state

    def advance(self, seconds: float) -> None:
        """Run the link for ``seconds`` of simulated time."""
        with self._lock:
            cap = self.pool.capacity_bytes * 8
            self._credit = min(self._credit + max(0.0, seconds) * self.key_rate, float(cap))
            while True:
                room = self.pool.room()
                if room <= 0:
                    self._credit = 0.0  # the store is full: this link time is lost
                    return
                if self._credit < 8:
                    return
                if not self._staged:
                    result = self.link.block(self._index)
                    self._index += 1
                    nbytes = int(result.final_bits) // 8
                    dry = bool(result.aborted) or nbytes == 0
                    last = self._state
                    self._state = LinkState(last.blocks + 1, last.aborted_blocks + dry, float(result.qber),
                                            bool(result.aborted), str(result.reason), self.key_rate)
                    if dry:
                        self._credit -= self._block_bits
                        continue
                    self._staged = bytearray(bytes(result.key)[:nbytes])
                    self._block_bits = nbytes * 8
                n = min(len(self._staged), int(self._credit) // 8, room)
                taken = self.pool.add(self._staged[:n])
                del self._staged[:taken]
                self._credit -= taken * 8

    def start(self) -> None:
        """Run the link in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kme-link", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = self._clock()
        while not self._stop.wait(self._tick):
            now = self._clock()
            try:
                self.advance(now - last)
            except Exception:  # keep serving what is in the pool
                _log.exception("the simulated link failed; the pool is no longer refilled")
                return
            last = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class Faults:
    """Misbehaviour to inject into one KME's answers (for client tests).

    Counters apply to the next N matching requests and count down; ``delay`` and ``refuse``
    stay until reset.  All of it is thread-safe.
    """

    _COUNTERS = ("status_503", "malformed_json", "short_keys", "mismatched_ids", "duplicate_ids")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: answer the next N requests with 503 before doing anything
        self.status_503 = 0
        #: send a truncated JSON body on the next N successful answers (the keys are spent)
        self.malformed_json = 0
        #: cut the last byte off every key in the next N key containers
        self.short_keys = 0
        #: replace the key_IDs of the next N key containers with fresh ones
        self.mismatched_ids = 0
        #: repeat the first key_ID throughout the next N key containers
        self.duplicate_ids = 0
        #: seconds to wait before answering each request
        self.delay = 0.0
        #: close every new connection before the TLS handshake
        self.refuse = False

    def take(self, name: str) -> bool:
        """Count down counter ``name``; True if the fault applies to this request."""
        with self._lock:
            value: int = getattr(self, name)
            if value > 0:
                setattr(self, name, value - 1)
                return True
            return False

    def reset(self) -> None:
        with self._lock:
            for name in self._COUNTERS:
                setattr(self, name, 0)
            self.delay = 0.0
            self.refuse = False

    def __repr__(self) -> str:
        active = {n: getattr(self, n) for n in (*self._COUNTERS, "delay", "refuse") if getattr(self, n)}
        return f"Faults({', '.join(f'{k}={v!r}' for k, v in active.items())})"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # the body may hold keys
        return f"Reply(status={self.status}, {len(self.body)} bytes)"


class _Refusal(Exception):
    """A request refused with an ETSI GS QKD 014 §6.5 Error body."""

    def __init__(self, status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (),
                 **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers

    def reply(self) -> Reply:
        return _error(self.status, self.message, self.headers, **self.details)


@dataclass
class _Handed:
    """A key given to the master SAE, waiting for the slave SAE."""

    master: str
    slave: str
    key: bytes = field(repr=False)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = (), /, **details: object) -> Reply:
    """An ETSI GS QKD 014 §6.5 Error answer: ``{"message": ..., "details": [...]}``."""
    return Reply(status, _json({"message": message, "details": [details] if details else []}), headers)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


class KME:
    """One simulated KME: the ETSI GS QKD 014 rules, without sockets.

    ``handle`` takes a request (method, path with query, body, the caller's SAE ID from its
    certificate) and returns a :class:`Reply`.  The HTTP server around it lives in
    :class:`_KMEServer`.
    """

    def __init__(self, kme_id: str, sae_id: str, pool: KeyPool, pump: LinkPump, config: KMEConfig) -> None:
        self.kme_id = kme_id
        self.sae_id = sae_id
        self.pool = pool
        self.pump = pump
        self.config = config
        self.faults = Faults()
        #: TCP connections accepted so far (shows whether clients reuse connections)
        self.connections_accepted = 0
        #: connections open now, requests waiting for a worker, requests being answered
        self.connections_open = 0
        self.requests_waiting = 0
        self.requests_in_progress = 0
        self.peer: KME | None = None
        # key_IDs for this KME's SAE as slave, and key_IDs already delivered (bounded memory).
        self._pending: OrderedDict[uuid.UUID, _Handed] = OrderedDict()
        self._consumed: OrderedDict[uuid.UUID, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"KME({self.kme_id!r}, sae_id={self.sae_id!r})"

    @property
    def peer_sae_id(self) -> str:
        assert self.peer is not None
        return self.peer.sae_id

    @property
    def pending_count(self) -> int:
        """Keys handed to the peer's master SAE and not yet fetched here."""
        with self.pool.lock:
            return len(self._pending)

    # -- request entry ---------------------------------------------------------------------------

    def handle(self, method: str, target: str, body: bytes | None, caller: str | None, *,
               content_type: str | None = None) -> Reply:
        """Answer one request.  ``caller`` is the SAE ID authenticated by TLS; ``content_type`` the
        request's Content-Type header, if it had one."""
        if self.faults.delay > 0:
            time.sleep(self.faults.delay)
        try:
            if self.faults.take("status_503"):
                raise _Refusal(503, "the KME is temporarily unavailable (injected fault); retry later")
            obj = self._route(method, target, body, caller, content_type)
        except _Refusal as r:
            _log.info("%s %s %s -> %d %s", self.kme_id, caller, method, r.status, r.message)
            return r.reply()
        data = _json(obj)
        if self.faults.take("malformed_json"):
            data = data[: max(1, len(data) // 2)]
        return Reply(200, data)

    def _route(self, method: str, target: str, body: bytes | None, caller: str | None,
               content_type: str | None) -> object:
        if method not in _HTTP_METHODS:
            raise _Refusal(501, f"method {method[:20]!r} is not implemented by this KME; ETSI GS QKD 014 uses "
                                f"GET and POST", method=method[:20])
        parts = urllib.parse.urlsplit(target)
        m = _PATH_RE.fullmatch(parts.path)
        if not m:
            raise _Refusal(404, f"no ETSI GS QKD 014 method at {parts.path[:100]!r}; use "
                                f"{API_PREFIX}/{{SAE_ID}}/status, enc_keys or dec_keys", path=parts.path[:100])
        sae, op = urllib.parse.unquote(m.group(1)), m.group(2)
        allowed = ("GET",) if op == "status" else ("GET", "POST")
        if method not in allowed:
            raise _Refusal(405, f"{op} does not take {method}; use {' or '.join(reversed(allowed))}",
                           headers=(("Allow", ", ".join(allowed)),), method=method, allow=list(allowed))
        self._authorise(caller, sae, op)
        if method == "POST" and content_type is not None and not _is_json(content_type):
            raise _Refusal(415, f"the request body must be application/json, not {content_type[:60]!r}",
                           content_type=content_type[:60])
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        if op == "status":
            return self._status()
        if op == "enc_keys":
            request = self._parse_body(body) if method == "POST" else self._enc_query(query)
            return self._enc_keys(request)
        request = self._parse_body(body) if method == "POST" else self._dec_query(query)
        return self._dec_keys(request)

    def _authorise(self, caller: str | None, sae: str, op: str) -> None:
        """ETSI GS QKD 014 §5.1: 401 for an SAE asking for keys it is not entitled to."""
        if caller != self.sae_id:
            raise _Refusal(401, f"SAE {caller!r} is not served by KME {self.kme_id} (it serves {self.sae_id!r}); "
                                f"connect to your own KME", caller=caller)
        if sae != self.peer_sae_id:
            role = "master" if op == "dec_keys" else "slave"
            raise _Refusal(401, f"SAE {caller!r} shares no QKD key with {role} SAE {sae!r} at KME {self.kme_id} "
                                f"(its QKD peer is {self.peer_sae_id!r})", SAE_ID=sae)

    # -- request parsing (§6.2, §6.4) --------------------------------------------------------------

    @staticmethod
    def _parse_body(body: bytes | None) -> dict[str, Any]:
        try:
            obj = json.loads(body or b"")
        except (ValueError, UnicodeDecodeError):
            raise _Refusal(400, "the request body is not JSON; send a JSON object") from None
        if not isinstance(obj, dict):
            raise _Refusal(400, "the request body is not a JSON object")
        return obj

    @staticmethod
    def _one(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        if values is None:
            return None
        if len(values) != 1:
            raise _Refusal(400, f"query parameter {name} given {len(values)} times; give it once", parameter=name)
        return values[0]

    def _enc_query(self, query: dict[str, list[str]]) -> dict[str, Any]:
        # ETSI GS QKD 014 §5.3: the GET form carries number and size only.
        out: dict[str, Any] = {}
        for name in ("number", "size"):
            value = self._one(query, name)
            if value is not None:
                if not value.isdigit() or len(value) > 9:
                    raise _Refusal(400, f"{name} must be a positive integer, not {value[:20]!r}", parameter=name)
                out[name] = int(value)
        return out

    def _dec_query(self, query: dict[str, list[str]]) -> dict[str, Any]:
        # ETSI GS QKD 014 §5.4: the GET form carries key_ID (this KME accepts it repeated).
        ids = query.get("key_ID")
        if not ids:
            raise _Refusal(400, "dec_keys GET needs a key_ID query parameter", parameter="key_ID")
        return {"key_IDs": [{"key_ID": k} for k in ids]}

    # -- methods ------------------------------------------------------------------------------------

    def _status(self) -> dict[str, object]:
        """ETSI GS QKD 014 §6.1 Status."""
        c = self.config
        link = self.pump.state()
        with self.pool.lock:
            stored = self.pool.bits // c.key_size
        assert self.peer is not None
        return {
            "source_KME_ID": self.kme_id,
            "target_KME_ID": self.peer.kme_id,
            "master_SAE_ID": self.sae_id,
            "slave_SAE_ID": self.peer_sae_id,
            "key_size": c.key_size,
            "stored_key_count": stored,
            "max_key_count": c.max_key_count,
            "max_key_per_request": c.max_key_per_request,
            "max_key_size": c.max_key_size,
            "min_key_size": c.min_key_size,
            "max_SAE_ID_count": 0,
            "status_extension": {"hybridkex_link": {
                "qber": round(link.qber, 6), "aborted": link.aborted, "reason": link.reason,
                "blocks": link.blocks, "aborted_blocks": link.aborted_blocks, "key_rate_bps": link.key_rate}},
        }

    def _enc_keys(self, req: dict[str, Any]) -> dict[str, object]:
        """ETSI GS QKD 014 §5.3 / §6.2: new keys for the master SAE, announced to the slave's KME."""
        c = self.config
        number = req.get("number", 1)
        size = req.get("size", c.key_size)
        if type(number) is not int or number < 1:
            raise _Refusal(400, f"number must be a positive integer, not {number!r}"[:200], parameter="number")
        if number > c.max_key_per_request:
            raise _Refusal(400, f"number {number} exceeds max_key_per_request {c.max_key_per_request}; "
                                f"ask for fewer keys per request", parameter="number")
        if type(size) is not int or size < 1:
            raise _Refusal(400, f"size must be a positive integer (bits), not {size!r}"[:200], parameter="size")
        if size % 8:
            raise _Refusal(400, f"size {size} is not a multiple of 8 bits; this KME delivers whole bytes",
                           parameter="size")
        if not c.min_key_size <= size <= c.max_key_size:
            raise _Refusal(400, f"size {size} is outside [{c.min_key_size}, {c.max_key_size}] bits "
                                f"(min_key_size, max_key_size)", parameter="size")
        extra = req.get("additional_slave_SAE_IDs", [])
        if not isinstance(extra, list) or extra:
            raise _Refusal(400, "additional_slave_SAE_IDs is not supported: max_SAE_ID_count is 0",
                           parameter="additional_slave_SAE_IDs")
        mandatory = req.get("extension_mandatory", [])
        if not isinstance(mandatory, list) or mandatory:
            # §6.2: a KME that does not support a mandatory extension must refuse the request.
            names = sorted({k for e in mandatory if isinstance(e, dict) for k in e}) if isinstance(
                mandatory, list) else []
            raise _Refusal(400, f"unsupported mandatory extension(s): {', '.join(names) or mandatory!r}"[:200],
                           parameter="extension_mandatory")
        need = number * size // 8
        if need > self.pool.capacity_bytes:
            raise _Refusal(400, f"{number} keys of {size} bits exceed the pool capacity "
                                f"({self.pool.capacity_bytes * 8} bits); ask for fewer", parameter="number")
        assert self.peer is not None
        with self.pool.lock:
            material = self.pool.take_locked(need)
            if material is None:
                available = self.pool.bits
            else:
                keys = [(uuid.uuid4(), material[i * (size // 8):(i + 1) * (size // 8)]) for i in range(number)]
                self.peer._hand(keys, master=self.sae_id, slave=self.peer_sae_id)
        if material is None:
            raise self._exhausted(need * 8, available)
        _log.info("%s enc_keys: %d keys of %d bits to %s for %s", self.kme_id, number, size, self.sae_id,
                  self.peer_sae_id)
        return self._container(keys)

    def _exhausted(self, need_bits: int, available_bits: int) -> _Refusal:
        link = self.pump.state()
        if link.aborted:
            return _Refusal(503, f"no key available: the QKD link aborted on high QBER: {link.reason or 'no reason'}; "
                                 f"it delivers no key until the QBER falls -- check the link for an eavesdropper",
                            qber=round(link.qber, 6), stored_bits=available_bits)
        return _Refusal(503, f"key pool exhausted: {available_bits} bits stored, {need_bits} requested; the QKD "
                             f"link adds {link.key_rate:g} bit/s -- retry later",
                        stored_bits=available_bits, requested_bits=need_bits)

    def _hand(self, keys: list[tuple[uuid.UUID, bytes]], *, master: str, slave: str) -> None:
        """Record keys handed to ``master`` for this KME's SAE (caller holds the pool lock)."""
        for key_id, key in keys:
            self._pending[key_id] = _Handed(master, slave, key)
        while len(self._pending) > self.config.max_pending:
            self._pending.popitem(last=False)  # the slave never came: forget the oldest

    def _dec_keys(self, req: dict[str, Any]) -> dict[str, object]:
        """ETSI GS QKD 014 §5.4 / §6.4: keys by key_ID for the slave SAE, each delivered once."""
        entries = req.get("key_IDs")
        if not isinstance(entries, list) or not entries:
            raise _Refusal(400, "key_IDs must be a non-empty list of {\"key_ID\": UUID}", parameter="key_IDs")
        if len(entries) > self.config.max_key_per_request:
            raise _Refusal(400, f"{len(entries)} key_IDs exceed max_key_per_request "
                                f"{self.config.max_key_per_request}", parameter="key_IDs")
        ids: list[uuid.UUID] = []
        for entry in entries:
            text = entry.get("key_ID") if isinstance(entry, dict) else None
            key_id = parse_key_id(text)
            if key_id is None:
                raise _Refusal(400, f"key_ID {str(text)[:60]!r} is not a UUID", parameter="key_ID")
            ids.append(key_id)
        if len(set(ids)) != len(ids):
            raise _Refusal(400, "the same key_ID is asked for twice", parameter="key_IDs")
        with self.pool.lock:
            # All or nothing: check every key_ID before delivering any.
            for key_id in ids:
                handed = self._pending.get(key_id)
                if handed is None:
                    if key_id in self._consumed:
                        raise _Refusal(400, f"key_ID {key_id} has already been consumed; each key is delivered "
                                            f"once", key_ID=str(key_id))
                    raise _Refusal(400, f"key_ID {key_id} is unknown to KME {self.kme_id}; check the key_ID and "
                                        f"that the master fetched it for this SAE", key_ID=str(key_id))
                if handed.master != self.peer_sae_id or handed.slave != self.sae_id:
                    raise _Refusal(401, f"key_ID {key_id} was not issued for SAE {self.sae_id!r}",
                                   key_ID=str(key_id))
            keys = [(key_id, self._pending.pop(key_id).key) for key_id in ids]
            for key_id in ids:
                self._consumed[key_id] = None
            while len(self._consumed) > self.config.max_pending:
                self._consumed.popitem(last=False)
        _log.info("%s dec_keys: %d keys to %s from %s", self.kme_id, len(keys), self.sae_id, self.peer_sae_id)
        return self._container(keys)

    def _container(self, keys: list[tuple[uuid.UUID, bytes]]) -> dict[str, object]:
        """ETSI GS QKD 014 §6.3 Key container, with any injected faults."""
        if self.faults.take("short_keys"):
            keys = [(k, v[:-1]) for k, v in keys]
        if self.faults.take("mismatched_ids"):
            keys = [(uuid.uuid4(), v) for _, v in keys]
        if self.faults.take("duplicate_ids"):
            keys = [(keys[0][0], v) for _, v in keys]
        return {"keys": [{"key_ID": str(k), "key": _b64(v)} for k, v in keys]}


# -- HTTP(S) adapter -----------------------------------------------------------------------------------

def _peer_cn(sock: socket.socket) -> str | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    subject: tuple[tuple[tuple[str, str], ...], ...] = cert.get("subject", ())  # type: ignore[assignment]
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


# One KME's HTTP/1.1 server.  A single I/O thread owns every socket that waits for bytes (accept,
# non-blocking TLS handshake, reading a request head and body), so an idle or slow connection costs
# a file descriptor and a buffer, never a thread.  Only a complete request goes to a fixed pool of
# worker threads, which answer it and hand the connection back.  Every answer, error or not, is
# application/json; every error carries an ETSI GS QKD 014 §6.5 Error body.

_MAX_LINE = 8192  # request line
_MAX_HEAD = 16 << 10  # request line and header fields
_MAX_FIELDS = 100
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
# Read at most this much ahead of the request being parsed.
_READ_CAP = _MAX_HEAD + _MAX_REQUEST_BODY + 4
_TICK = 0.05


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes | None
    keep_alive: bool

    def line(self) -> str:
        return f"{self.method} {self.target[:200]}"


@dataclass(frozen=True)
class _Bad:
    """A request that cannot be parsed: answered with ``reply``, then the connection is closed."""

    reply: Reply
    method: str = ""

    def line(self) -> str:
        return f"(unparsable request, {self.reply.status})"


def _bad(status: int, message: str, **details: object) -> _Bad:
    return _Bad(_error(status, message, **details))


def _parse(buf: bytearray) -> tuple[_Request | _Bad, int] | None:
    """The first request in ``buf`` and the bytes it takes, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
    if end < 0:
        line_end = buf.find(b"\r\n", 0, _MAX_LINE + 2)
        if line_end < 0 and len(buf) > _MAX_LINE:
            return _bad(414, f"request line over {_MAX_LINE} bytes", limit=_MAX_LINE), len(buf)
        if len(buf) > _MAX_HEAD:
            return _bad(431, f"request header fields over {_MAX_HEAD} bytes", limit=_MAX_HEAD), len(buf)
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    if len(lines[0]) > _MAX_LINE:
        return _bad(414, f"request line over {_MAX_LINE} bytes", limit=_MAX_LINE), end + 4
    try:
        request_line = lines[0].decode("ascii")
    except UnicodeDecodeError:
        return _bad(400, "the request line is not ASCII"), end + 4
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]) or not parts[1]:
        return _bad(400, "malformed request line; send METHOD /path HTTP/1.1", line=request_line[:100]), end + 4
    method, target, version = parts
    if not _VERSION_RE.fullmatch(version):
        return _bad(400, f"malformed HTTP version {version[:20]!r}", line=request_line[:100]), end + 4
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return _Bad(_error(505, f"{version} is not supported; use HTTP/1.1", version=version), method), end + 4
    if not target.startswith("/"):
        return _Bad(_error(400, "the request target must be a path starting with /", target=target[:100]),
                    method), end + 4
    if len(lines) - 1 > _MAX_FIELDS:
        return _Bad(_error(431, f"more than {_MAX_FIELDS} header fields", limit=_MAX_FIELDS), method), end + 4
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for raw_field in lines[1:]:
        name, colon, value = raw_field.decode("latin-1").partition(":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            return _Bad(_error(400, "malformed header field; send Name: value", field=name[:40]), method), end + 4
        name = name.lower()
        value = value.strip(" \t")
        if name == "content-length":
            lengths.add(value)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        return _Bad(_error(411, "send the body with Content-Length, not a transfer coding"), method), end + 4
    body: bytes | None = None
    size = 0
    if lengths:
        value = lengths.pop()
        if lengths or not value.isascii() or not value.isdigit():
            return _Bad(_error(400, "Content-Length must be one non-negative integer"), method), end + 4
        size = int(value)
        if size > _MAX_REQUEST_BODY:
            return _Bad(_error(413, f"request body over {_MAX_REQUEST_BODY} bytes", limit=_MAX_REQUEST_BODY),
                        method), end + 4
        if len(buf) < end + 4 + size:
            return None
        body = bytes(buf[end + 4:end + 4 + size])
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return _Request(method, target, headers, body, keep_alive), end + 4 + size


def _wire(reply: Reply, *, close: bool, head: bool) -> bytes:
    try:
        phrase = http.HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {phrase}", "Server: hybridkex-kme/1", f"Date: {formatdate(usegmt=True)}",
             "Content-Type: application/json", f"Content-Length: {len(reply.body)}", "Cache-Control: no-store"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else reply.body)


class _Conn:
    """One client connection; owned by the I/O thread or by one worker at a time."""

    __slots__ = ("sock", "addr", "handshaken", "caller", "buf", "deadline", "request_started", "requests", "eof",
                 "continued")

    def __init__(self, sock: socket.socket, addr: str, deadline: float, tls: bool) -> None:
        self.sock = sock
        self.addr = addr
        self.handshaken = not tls
        self.caller: str | None = None
        self.buf = bytearray()
        self.deadline = deadline
        self.request_started: float | None = None
        self.requests = 0
        self.eof = False
        self.continued = False


class _KMEServer:
    """Serves one :class:`KME`: the I/O thread runs :meth:`serve_forever`, ``config.workers``
    threads answer requests, at most ``config.max_connections`` connections are open."""

    def __init__(self, address: tuple[str, int], kme: KME, ctx: ssl.SSLContext | None) -> None:
        self.kme = kme
        self.config = kme.config
        self.ctx = ctx
        self.tls = ctx is not None
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.socket.setblocking(False)
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: collections.deque[_Conn] = collections.deque()
        # Connections waiting for bytes, oldest activity first (the first to give way when full).
        self._idle: OrderedDict[_Conn, None] = OrderedDict()
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[_Conn, _Request | _Bad] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        #: set once the workers run and the listening socket is watched
        self.running = threading.Event()

    # -- the I/O thread ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._stopped.clear()
        self._stop.clear()
        for i in range(self.config.workers):
            t = threading.Thread(target=self._work, name=f"{self.kme.kme_id}-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.running.set()
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(_TICK):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_returned()
                    elif isinstance(key.data, _Conn) and key.data in self._idle:
                        self._readable(key.data)
                self._sweep()
        finally:
            for conn in list(self._idle):
                self._close(conn)
            for _ in self._workers:
                self._queue.put(None)
            for t in self._workers:
                t.join(timeout=5)
            self._workers.clear()
            for conn in self._take_all():
                with contextlib.suppress(OSError):
                    conn.sock.close()
            self._sel.close()
            self.running.clear()
            self._stopped.set()

    def _accept(self) -> None:
        c = self.config
        for _ in range(64):  # a batch, then the other sockets get their turn
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: make room, accept later
                _log.warning("%s: cannot accept a connection: %s", self.kme.kme_id, exc.strerror or exc)
                if self._idle:
                    self._close(next(iter(self._idle)))
                return
            self.kme.connections_accepted += 1
            if self.kme.faults.refuse:
                sock.close()
                continue
            with self._lock:
                full = len(self._conns) >= c.max_connections
            if full:
                if not self._idle:
                    _log.warning("%s: %d connections, all busy; closing a new one from %s", self.kme.kme_id,
                                 c.max_connections, addr[0])
                    sock.close()
                    continue
                victim = next(iter(self._idle))
                _log.info("%s: %d connections open; closing the longest idle one (%s)", self.kme.kme_id,
                          c.max_connections, victim.addr)
                self._close(victim)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ctx is not None:
                sock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            conn = _Conn(sock, str(addr[0]), time.monotonic() + c.handshake_timeout, self.tls)
            with self._lock:
                self._conns.add(conn)
                self.kme.connections_open = len(self._conns)
            self._watch(conn, selectors.EVENT_READ)

    def _watch(self, conn: _Conn, events: int) -> None:
        try:
            self._sel.register(conn.sock, events, conn)
        except KeyError:
            self._sel.modify(conn.sock, events, conn)
        except (OSError, ValueError):  # closed meanwhile (drop_connections)
            self._forget(conn)
            return
        self._idle[conn] = None

    def _unwatch(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        self._unwatch(conn)
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._lock:
            self._conns.discard(conn)
            self.kme.connections_open = len(self._conns)

    def _readable(self, conn: _Conn) -> None:
        now = time.monotonic()
        if not conn.handshaken:
            assert isinstance(conn.sock, ssl.SSLSocket)
            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
                return
            except ssl.SSLWantWriteError:
                self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                return
            except (ssl.SSLError, OSError) as exc:
                _log.info("%s: TLS handshake with %s failed: %s", self.kme.kme_id, conn.addr,
                          getattr(exc, "reason", None) or exc)
                self._close(conn)
                return
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.handshaken = True
            conn.caller = _peer_cn(conn.sock)
            conn.deadline = now + self.config.idle_timeout
        while len(conn.buf) <= _READ_CAP:
            try:
                data = conn.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                break
            except (ssl.SSLError, OSError):
                self._close(conn)
                return
            if not data:
                conn.eof = True
                break
            conn.buf += data
        self._idle.move_to_end(conn)
        self._next_request(conn, now)

    def _next_request(self, conn: _Conn, now: float) -> None:
        parsed = _parse(conn.buf) if conn.buf else None
        if parsed is None:
            if conn.eof:
                self._close(conn)
            elif conn.buf:
                if conn.request_started is None:
                    conn.request_started = now
                    conn.deadline = now + self.config.request_timeout
                self._continue(conn)
            return
        item, used = parsed
        del conn.buf[:used]
        conn.request_started = None
        conn.continued = False
        self._dispatch(conn, item)

    @staticmethod
    def _continue(conn: _Conn) -> None:
        """Send ``100 Continue`` to a client that waits for it before sending the body (RFC 9110 §10.1.1)."""
        end = conn.buf.find(b"\r\n\r\n")
        if conn.continued or end < 0:
            return
        head = bytes(conn.buf[:end]).lower()
        if b"\r\nexpect:" in head and b"100-continue" in head and b" http/1.1\r\n" in head + b"\r\n":
            conn.continued = True
            with contextlib.suppress(OSError, ssl.SSLError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _dispatch(self, conn: _Conn, item: _Request | _Bad) -> None:
        self._unwatch(conn)
        c = self.config
        with self._lock:
            busy = self.kme.requests_waiting + self.kme.requests_in_progress >= c.workers + c.queue_size
            if not busy:
                self.kme.requests_waiting += 1
        if not busy:
            self._queue.put((conn, item))
            return
        # Overloaded: say so at once, from here, and close (a few hundred bytes fit any send buffer).
        _log.warning("%s: %d requests in hand; answering 503 to %s", self.kme.kme_id,
                     c.workers + c.queue_size, conn.addr)
        reply = _error(503, "the KME is busy; retry after the time in Retry-After", (("Retry-After", "1"),),
                       workers=c.workers, queue_size=c.queue_size)
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.sock.send(_wire(reply, close=True, head=getattr(item, "method", "") == "HEAD"))
        self._forget(conn)

    def _sweep(self) -> None:
        now = time.monotonic()
        expired = [conn for conn in self._idle if conn.deadline <= now]
        for conn in expired:
            if conn.handshaken and conn.request_started is not None:
                self._unwatch(conn)
                conn.buf.clear()
                self._dispatch(conn, _bad(408, f"the request did not arrive in full within "
                                               f"{self.config.request_timeout:g} s",
                                          timeout=self.config.request_timeout))
            else:
                self._close(conn)

    def _take_returned(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while self._returned:
            conn = self._returned.popleft()
            self._watch(conn, selectors.EVENT_READ)
            if conn in self._idle:
                self._readable(conn)  # the next request may be buffered already (pipelining, TLS)

    def _give_back(self, conn: _Conn) -> None:
        self._returned.append(conn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _take_all(self) -> list[_Conn]:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
            self.kme.connections_open = 0
        return conns

    # -- the workers -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, request = item
            with self._lock:
                self.kme.requests_waiting -= 1
                self.kme.requests_in_progress += 1
            try:
                self._answer(conn, request)
            except Exception:
                _log.exception("%s: error answering %s", self.kme.kme_id, conn.addr)
                self._forget(conn)
            finally:
                with self._lock:
                    self.kme.requests_in_progress -= 1

    def _answer(self, conn: _Conn, request: _Request | _Bad) -> None:
        kme, c = self.kme, self.config
        conn.requests += 1
        if isinstance(request, _Bad):
            reply, close, head = request.reply, True, request.method == "HEAD"
        else:
            caller = conn.caller if self.tls else kme.sae_id
            try:
                reply = kme.handle(request.method, request.target, request.body, caller,
                                   content_type=request.headers.get("content-type"))
            except Exception:
                _log.exception("%s: internal error on %s %s", kme.kme_id, request.method,
                               request.target.split("?")[0][:200])
                reply = _error(500, "internal KME error; see the KME log")
            close = (not request.keep_alive or conn.requests >= c.max_requests_per_connection
                     or self._stop.is_set())
            head = request.method == "HEAD"
        # The request line names SAE IDs and key_IDs, never keys.
        _log.debug("%s %s %s -> %d", kme.kme_id, conn.addr, request.line(), reply.status)
        try:
            conn.sock.settimeout(c.request_timeout)
            conn.sock.sendall(_wire(reply, close=close, head=head))
            conn.sock.setblocking(False)
        except (OSError, ssl.SSLError) as exc:
            _log.info("%s: cannot answer %s: %s", kme.kme_id, conn.addr, exc)
            close = True
        if close or self._stop.is_set():
            self._forget(conn)
            return
        conn.deadline = time.monotonic() + c.idle_timeout
        self._give_back(conn)

    # -- control, from other threads ---------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._stopped.wait(10)

    def server_close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def close_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def _server_context(pki: TestPKI, kme_name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(pki.kme_cert(kme_name)), os.fspath(pki.kme_key(kme_name)))
        ctx.load_verify_locations(cafile=os.fspath(pki.ca_cert))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the {kme_name} certificate from {pki.directory}: {exc}; "
                          f"recreate the PKI with 'hybridkex kme pki'") from None
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the SAE's identity is its certificate
    return ctx


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class KMEPair:
    """Two KMEs (A serving ``sae_a``, B serving ``sae_b``) joined by one simulated BB84 link.

    Build with :meth:`start` (a context manager), or construct, :meth:`serve` and :meth:`close`.
    KME A listens on ``host:port_a``, KME B on ``host_b`` (default ``host``) ``:port_b``; ports 0
    pick free ports and :attr:`url_a` and :attr:`url_b` give the real ones.

    ``pki``: a test PKI directory (created, with both SAEs, when ``create_pki`` and files are
    missing) or a :class:`TestPKI`.  ``key_rate``: the link's secret-key rate in bits/s;
    ``link_error``: the channel's bit-flip probability; ``eve``: the fraction of photons an
    intercept-resend eavesdropper taps.  ``prefill``: run the link long enough to fill the pool
    before serving (as if it had been up for a while).  ``tls=False`` serves plain HTTP with no
    authentication, every caller being taken for the KME's own SAE -- only for testing a
    client's insecure-HTTP mode.  ``link`` replaces the BB84 link (anything with ``block(i)``).
    """

    def __init__(self, pki: str | os.PathLike[str] | TestPKI, *, sae_a: str = "sae-a", sae_b: str = "sae-b",
                 host: str = "127.0.0.1", port_a: int = 0, port_b: int = 0, host_b: str | None = None,
                 key_rate: float = DEFAULT_KEY_RATE,
                 link_error: float = 0.02, eve: float = 0.0, config: KMEConfig | None = None,
                 seed: bytes | None = None, prefill: bool = True, tls: bool = True, create_pki: bool = True,
                 link: BlockSource | None = None) -> None:
        check_sae_id(sae_a)
        check_sae_id(sae_b)
        if sae_a == sae_b:
            raise ConfigError("the two SAEs need different IDs; give --sae-a and --sae-b different names")
        if isinstance(pki, TestPKI):
            self.pki = pki
        elif create_pki:
            self.pki, _ = create_test_pki(pki, [sae_a, sae_b])
        else:
            self.pki = load_test_pki(pki)
        if tls:
            for sae in (sae_a, sae_b):
                if not self.pki.sae_cert(sae).is_file():
                    raise ConfigError(f"test PKI {self.pki.directory} has no certificate for SAE {sae!r}; "
                                      f"run 'hybridkex kme pki {self.pki.directory} --sae {sae}'")
        self.config = config or KMEConfig()
        if link is None:
            from ._bb84 import BB84Link, LinkParameters

            try:
                params = LinkParameters(channel_error=link_error, eve=eve)
            except ValueError as exc:
                raise ConfigError(f"{exc}; fix --link-error/--eve") from None
            link = BB84Link(params, seed if seed is not None else os.urandom(32))
        self.pool = KeyPool(self.config.capacity_bits)
        self.pump = LinkPump(link, self.pool, key_rate)
        self.a = KME("kme-a", sae_a, self.pool, self.pump, self.config)
        self.b = KME("kme-b", sae_b, self.pool, self.pump, self.config)
        self.a.peer, self.b.peer = self.b, self.a
        self.tls = tls
        self._servers: list[_KMEServer] = []
        self._threads: list[threading.Thread] = []
        try:
            for kme, kme_host, port in ((self.a, host, port_a), (self.b, host_b or host, port_b)):
                ctx = _server_context(self.pki, kme.kme_id) if tls else None
                try:
                    self._servers.append(_KMEServer((kme_host, port), kme, ctx))
                except OSError as exc:
                    raise ConfigError(f"cannot listen on {kme_host}:{port} for {kme.kme_id}: {exc.strerror}; "
                                      f"choose another address or port") from None
        except BaseException:
            self.close()
            raise
        if prefill:
            self.pump.advance(self.config.capacity_bits / self.pump.key_rate)

    @classmethod
    @contextlib.contextmanager
    def start(cls, pki: str | os.PathLike[str] | TestPKI, **options: Any) -> Iterator[KMEPair]:
        """Start a KME pair for the ``with`` block; options as for the constructor."""
        pair = cls(pki, **options)
        try:
            pair.serve()
            yield pair
        finally:
            pair.close()

    def serve(self) -> None:
        """Start the link and both servers in background threads."""
        self.pump.start()
        for server in self._servers:
            t = threading.Thread(target=server.serve_forever, name=f"{server.kme.kme_id}-io", daemon=True)
            t.start()
            self._threads.append(t)
        for server in self._servers:
            server.running.wait(5)

    def close(self) -> None:
        """Stop the servers and the link; close open connections."""
        self.pump.stop()
        for server, _ in zip(self._servers, self._threads, strict=False):
            server.shutdown()
        for server in self._servers:
            server.server_close()
            server.close_connections()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def drop_connections(self) -> None:
        """Close every open client connection, as a KME dropping idle keep-alive connections does."""
        for server in self._servers:
            server.close_connections()

    def __enter__(self) -> KMEPair:
        self.serve()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port(self, i: int) -> int:
        return int(self._servers[i].server_address[1])

    @property
    def url_a(self) -> str:
        """Base URL of KME A (serving ``sae_a``)."""
        return _url("https" if self.tls else "http", str(self._servers[0].server_address[0]), self._port(0))

    @property
    def url_b(self) -> str:
        """Base URL of KME B (serving ``sae_b``)."""
        return _url("https" if self.tls else "http", str(self._servers[1].server_address[0]), self._port(1))

    def kme_for(self, sae_id: str) -> KME:
        """The KME serving ``sae_id``."""
        for kme in (self.a, self.b):
            if kme.sae_id == sae_id:
                return kme
        raise ConfigError(f"no KME of this pair serves SAE {sae_id!r}; it serves {self.a.sae_id!r} and "
                          f"{self.b.sae_id!r}")

    def url_for(self, sae_id: str) -> str:
        """Base URL of the KME serving ``sae_id``."""
        return self.url_a if self.kme_for(sae_id) is self.a else self.url_b

    def ready_lines(self) -> list[str]:
        """The lines ``hybridkex kme serve`` prints once both KMEs accept connections."""
        return [f"{kme.kme_id} listening on {url} sae={kme.sae_id}"
                for kme, url in ((self.a, self.url_a), (self.b, self.url_b))]

    def client(self, sae_id: str, **options: Any) -> Etsi014Client:
        """An :class:`Etsi014Client` for ``sae_id`` at its own KME, with the other SAE as peer and the
        pair's PKI files; ``options`` go to the client (timeout, retries, ...)."""
        kme = self.kme_for(sae_id)
        if self.tls:
            return Etsi014Client(self.url_for(sae_id), ca=self.pki.ca_cert, sae_cert=self.pki.sae_cert(sae_id),
                                 sae_key=self.pki.sae_key(sae_id), sae_id=sae_id, peer_sae_id=kme.peer_sae_id,
                                 **options)
        return Etsi014Client(self.url_for(sae_id), ca=None, sae_cert=None, sae_key=None, sae_id=sae_id,
                             peer_sae_id=kme.peer_sae_id, insecure_http=True, **options)

    def wait_for_keys(self, count: int, timeout: float = 10.0) -> None:
        """Block until the pool holds ``count`` keys of the default size."""
        deadline = time.monotonic() + timeout
        need = count * self.config.key_size
        while True:
            with self.pool.lock:
                if self.pool.bits >= need:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pool did not reach {count} keys in {timeout:g} s")
            time.sleep(0.005)
