"""What a responder keeps across connections to refuse work it should not do (``docs/protocol.md`` §8).

A :class:`DoSGuard` is shared by every connection of one responder.  It answers, before any
public-key operation on an InitHello that carried a valid mac1:

* under load, has this source echoed a valid cookie (mac2)?  If not, the responder sends a
  stateless CookieReply instead of doing public-key work (after WireGuard's cookie reply);
* is the InitHello fresh (its timestamp within the replay window) and not seen before?
* under load, is the (cookie-proven) source within its rate limit?

Nothing here does I/O; time and randomness are injected.  "Load" is either forced by the
adapter (e.g. too many handshakes in flight) or measured: more InitHellos needing public-key
work in the last second than ``load_threshold``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ._catkdf import hmac_digest

__all__ = ["DoSGuard", "Verdict"]

COOKIE_SECRET_LIFETIME = 120.0
COOKIE_SIZE = 16


@dataclass(frozen=True)
class Verdict:
    """What to do with an InitHello: ``admit``, ``cookie`` (send a CookieReply) or ``drop`` (with why)."""

    action: str
    reason: str = ""


ADMIT = Verdict("admit")
COOKIE = Verdict("cookie")


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class DoSGuard:
    """Replay cache, cookie secret, per-source token buckets and a load meter for one responder."""

    def __init__(self, *, replay_window: float = 120.0, max_entries: int = 65536, load_threshold: int = 32,
                 source_rate: float = 10.0, source_burst: int = 20, now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: Callable[[int], bytes] = os.urandom) -> None:
        if replay_window <= 0 or max_entries < 16 or load_threshold < 1 or source_rate <= 0 or source_burst < 1:
            raise ValueError("DoSGuard limits must be positive")
        self.replay_window = replay_window
        self.max_entries = max_entries
        self.load_threshold = load_threshold
        self.source_rate = source_rate
        self.source_burst = source_burst
        self._now, self._wall, self._rng = now, wall, rng
        self._secret = rng(32)
        self._previous_secret = self._secret
        self._secret_born = now()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._work: deque[float] = deque()
        self.forced_load = False
        #: counters for metrics and tests
        self.dropped = 0
        self.cookies_sent = 0

    # -- load ------------------------------------------------------------------------------------
    def under_load(self) -> bool:
        now = self._now()
        while self._work and now - self._work[0] > 1.0:
            self._work.popleft()
        return self.forced_load or len(self._work) >= self.load_threshold or len(self._seen) >= self.max_entries

    # -- cookies ---------------------------------------------------------------------------------
    def _rotate(self) -> None:
        now = self._now()
        if now - self._secret_born >= COOKIE_SECRET_LIFETIME:
            self._previous_secret, self._secret, self._secret_born = self._secret, self._rng(32), now

    def cookie_for(self, source: bytes) -> bytes:
        """The cookie a source must echo (as mac2's key): a MAC of its address under a rotating secret."""
        self._rotate()
        return hmac_digest(self._secret, source, "sha256")[:COOKIE_SIZE]

    def _valid_mac2(self, source: bytes, data: bytes, mac2: bytes) -> bool:
        self._rotate()
        for secret in (self._secret, self._previous_secret):
            cookie = hmac_digest(secret, source, "sha256")[:COOKIE_SIZE]
            if hmac.compare_digest(hmac_digest(cookie, data, "sha256")[:len(mac2)], mac2):
                return True
        return False

    # -- the decision ----------------------------------------------------------------------------
    def check(self, source: bytes, timestamp: int, replay_key: bytes, mac2_data: bytes, mac2: bytes) -> Verdict:
        """Decide on an InitHello whose mac1 was valid.  Admitting it records it in the replay cache.

        As in WireGuard, the per-source rate limit applies under load, to sources that proved their
        address with a cookie: an idle responder serves a burst from one host (a NAT, a daemon with
        many peers) at full speed.
        """
        loaded = self.under_load()
        if loaded and not self._valid_mac2(source, mac2_data, mac2):
            self.cookies_sent += 1
            return COOKIE
        if abs(self._wall() - timestamp) > self.replay_window:
            return self._drop("stale InitHello: its timestamp is outside the replay window (check both clocks)")
        digest = hashlib.sha256(replay_key).digest()
        now = self._now()
        self._expire(now)
        if digest in self._seen:
            return self._drop("replayed InitHello")
        if loaded and not self._take_token(source, now):
            return self._drop("rate limit for this source exceeded")
        self._seen[digest] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        self._work.append(now)
        return ADMIT

    def _drop(self, reason: str) -> Verdict:
        self.dropped += 1
        return Verdict("drop", reason)

    def _expire(self, now: float) -> None:
        # An entry may go once a replay of it would be refused as stale anyway (twice the window: both skews).
        horizon = 2 * self.replay_window
        while self._seen:
            first = next(iter(self._seen.values()))
            if now - first <= horizon:
                break
            self._seen.popitem(last=False)

    def _take_token(self, source: bytes, now: float) -> bool:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(self.source_burst), now)
        bucket.tokens = min(float(self.source_burst), bucket.tokens + (now - bucket.stamp) * self.source_rate)
        bucket.stamp = now
        self._buckets[source] = bucket
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
