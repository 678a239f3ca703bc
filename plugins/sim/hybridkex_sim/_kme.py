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
  on high QBER), each with an Error body ``{"message", "details"}`` (§6.5).

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
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from hybridkex import ConfigError
from hybridkex.qkd import API_PREFIX, Etsi014Client

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
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
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

    def __post_init__(self) -> None:
        for name in ("key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_key_count",
                     "max_pending"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"KME setting {name} must be a positive integer, not {value!r}")
        if not self.min_key_size <= self.key_size <= self.max_key_size or any(
                v % 8 for v in (self.min_key_size, self.key_size, self.max_key_size)):
            raise ConfigError("KME key sizes must be multiples of 8 with min_key_size <= key_size <= max_key_size")

    @property
    def capacity_bits(self) -> int:
        """Pool capacity in bits."""
        return self.max_key_count * self.key_size


class BlockSource(Protocol):
    """What the pump needs from a link: :meth:`hybridkex.qkd.BB84Link.block`."""

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

    def __init__(self, status: int, message: str, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass
class _Handed:
    """A key given to the master SAE, waiting for the slave SAE."""

    master: str
    slave: str
    key: bytes = field(repr=False)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


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

    def handle(self, method: str, target: str, body: bytes | None, caller: str | None) -> Reply:
        """Answer one request.  ``caller`` is the SAE ID authenticated by TLS."""
        if self.faults.delay > 0:
            time.sleep(self.faults.delay)
        try:
            if self.faults.take("status_503"):
                raise _Refusal(503, "the KME is temporarily unavailable (injected fault); retry later")
            obj = self._route(method, target, body, caller)
        except _Refusal as r:
            err: dict[str, object] = {"message": r.message}
            if r.details:
                err["details"] = [r.details]
            _log.info("%s %s %s -> %d %s", self.kme_id, caller, method, r.status, r.message)
            return Reply(r.status, _json(err))
        data = _json(obj)
        if self.faults.take("malformed_json"):
            data = data[: max(1, len(data) // 2)]
        return Reply(200, data)

    def _route(self, method: str, target: str, body: bytes | None, caller: str | None) -> object:
        parts = urllib.parse.urlsplit(target)
        m = _PATH_RE.fullmatch(parts.path)
        if not m:
            raise _Refusal(404, f"no ETSI GS QKD 014 method at {parts.path[:100]!r}; use "
                                f"{API_PREFIX}/{{SAE_ID}}/status, enc_keys or dec_keys")
        sae, op = urllib.parse.unquote(m.group(1)), m.group(2)
        if op == "status" and method != "GET" or method not in ("GET", "POST"):
            raise _Refusal(405, f"{op} does not take {method}; use {'GET' if op == 'status' else 'POST or GET'}")
        self._authorise(caller, sae, op)
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
            if not isinstance(text, str) or not _UUID_RE.fullmatch(text):
                raise _Refusal(400, f"key_ID {str(text)[:60]!r} is not a UUID", parameter="key_ID")
            ids.append(uuid.UUID(text))
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "hybridkex-kme/1"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    # Buffer the answer so headers and body leave in one segment (flushed per request by
    # http.server); two small writes would meet Nagle and delayed ACKs (~40 ms per request).
    wbufsize = -1
    server: _KMEServer

    def _dispatch(self, method: str) -> None:
        kme = self.server.kme
        body: bytes | None = None
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self._send(Reply(411, _json({"message": "send the body with Content-Length, not chunked"})), close=True)
            return
        if length is not None:
            if not length.isdigit() or int(length) > _MAX_REQUEST_BODY:
                self._send(Reply(413, _json({"message": f"request body over {_MAX_REQUEST_BODY} bytes"})),
                           close=True)
                return
            body = self.rfile.read(int(length))
        caller = _peer_cn(self.connection) if self.server.tls else kme.sae_id
        try:
            reply = kme.handle(method, self.path, body, caller)
        except Exception:
            _log.exception("%s: internal error on %s %s", kme.kme_id, method, self.path.split("?")[0])
            reply = Reply(500, _json({"message": "internal KME error; see the KME log"}))
        self._send(reply)

    def _send(self, reply: Reply, *, close: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in reply.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The request line names SAE IDs and key_IDs, never keys.
        _log.debug("%s %s %s -> %s", self.server.kme.kme_id, self.address_string(), self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        _log.info("%s %s: %s", self.server.kme.kme_id, self.address_string(), format % args)


class _KMEServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], kme: KME, ctx: ssl.SSLContext | None) -> None:
        self.kme = kme
        self.ctx = ctx
        self.tls = ctx is not None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        self.kme.connections_accepted += 1
        if self.kme.faults.refuse:
            sock.close()
            raise OSError("connection refused by fault injection")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ctx is not None:
            # The handshake runs in the request's thread, so a slow client cannot stall accept().
            sock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(10)
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    _log.info("%s: TLS handshake with %s failed: %s", self.kme.kme_id, client_address[0],
                              getattr(exc, "reason", None) or exc)
                    return
            super().finish_request(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.info("%s: connection from %s ended with an error", self.kme.kme_id, client_address[0], exc_info=True)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


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
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"{server.kme.kme_id}-server", daemon=True)
            t.start()
            self._threads.append(t)

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
