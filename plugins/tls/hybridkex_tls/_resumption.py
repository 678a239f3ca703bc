"""TLS 1.3 resumption without a new hybrid exchange: the client's session cache and the server's table.

A full connection runs the hybrid exchange and keys TLS with its output (external PSK).
The TLS session that follows yields tickets; resuming one (psk_dhe_ke, RFC 8446 §4.2.9,
over X25519MLKEM768) keys the next connection with a resumption secret chained from the
hybrid key plus a fresh ML-KEM/X25519 exchange -- no signature, no QKD key.  A *chain* is
the full connection and the resumptions that follow from it; ``lifetime`` and
``max_resumptions`` bound how long and how often one QKD key protects it.  Both sides
enforce both bounds: the client stops offering, the server refuses (with an alert) what it
does not know or what is past a bound.

The server recognises a resumed session by the SHA-256 of its resumption PSK (see
:func:`hybridkex_tls._openssl.session_key_id`), so each ticket resumes at most once and a
chain's facts (peer identity, QKD key_IDs, age) carry over to every connection in it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["ChainFacts", "ClientSessionCache", "ServerSessionTable"]


class ChainFacts(NamedTuple):
    """What a chain of connections rests on (secret-free); immutable, and a tuple because one is made per
    resumed connection."""

    summary: dict[str, object]
    """The full connection's hybrid summary (peer, suite, QKD key_IDs, transcript hash)."""
    started: float
    """``time.monotonic()`` when the full connection's hybrid exchange (and its QKD key) was done."""
    resumptions: int = 0
    """How many connections of the chain resumed so far (0 for the full connection)."""
    server_name: str | None = None
    """The SNI name the chain was set up for."""

    def age(self, now: float) -> float:
        """Seconds since the chain's hybrid exchange (the age of the QKD key behind it)."""
        return max(0.0, now - self.started)

    def next(self) -> ChainFacts:
        """The facts of the chain's next connection (one resumption further)."""
        return ChainFacts(self.summary, self.started, self.resumptions + 1, self.server_name)


class _Bounded:
    def __init__(self, lifetime: float, max_resumptions: int, max_entries: int,
                 clock: Callable[[], float]) -> None:
        self.lifetime = lifetime
        self.max_resumptions = max_resumptions
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()

    def usable(self, facts: ChainFacts, now: float) -> bool:
        return facts.age(now) < self.lifetime and facts.resumptions < self.max_resumptions


class ClientSessionCache(_Bounded):
    """Per server (``host:port`` or SNI name), sessions to resume (references to OpenSSL's SSL_SESSION), with
    their chains' facts.

    Each connection contributes the session of one ticket (a server that sends several
    accepts any one of them), and each session is offered once: :meth:`take` removes it, so
    concurrent connections never offer the same ticket, and one that finds none runs a
    full hybrid exchange.
    """

    def __init__(self, lifetime: float, max_resumptions: int, *, max_entries: int = 1024,
                 per_server: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(lifetime, max_resumptions, max_entries, clock)
        self.per_server = per_server
        self._entries: OrderedDict[str, OrderedDict[int, tuple[Any, ChainFacts]]] = OrderedDict()

    def take(self, key: str) -> tuple[Any, ChainFacts] | None:
        """A session to offer to ``key`` (removed from the cache) and its chain's facts, or None."""
        with self._lock:
            slots = self._entries.get(key)
            now = self.clock()
            while slots:
                _, (session, facts) = slots.popitem(last=True)
                if self.usable(facts, now):
                    return session, facts
            self._entries.pop(key, None)
            return None

    def put(self, key: str, connection: int, session: Any, facts: ChainFacts) -> None:
        """Remember ``connection``'s ticket for ``key`` (replacing one it gave before)."""
        with self._lock:
            slots = self._entries.setdefault(key, OrderedDict())
            slots[connection] = (session, facts)
            slots.move_to_end(connection)
            while len(slots) > self.per_server:
                slots.popitem(last=False)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: str, connection: int) -> None:
        """Forget the ticket ``connection`` gave for ``key``, if it is still here (that connection failed)."""
        with self._lock:
            slots = self._entries.get(key)
            if slots is not None:
                slots.pop(connection, None)

    def drop(self, key: str) -> None:
        """Forget every session for ``key`` (the server refused one: it restarted or changed its keys)."""
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return sum(len(slots) for slots in self._entries.values())


class ServerSessionTable(_Bounded):
    """Sessions this server issued tickets for, by the hash of their resumption PSK; each resumes once."""

    def __init__(self, lifetime: float, max_resumptions: int, *, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, issuing_wait: float = 0.1) -> None:
        super().__init__(lifetime, max_resumptions, max_entries, clock)
        self._entries: OrderedDict[bytes, ChainFacts] = OrderedDict()
        self._issuing: set[int] = set()
        """Threads in :meth:`issuing`."""
        self._looking: set[int] = set()
        """Threads waiting in :meth:`take`."""
        self._changed = threading.Condition(self._lock)
        self.issuing_wait = issuing_wait
        """Seconds at most that a lookup of an unknown session waits for connections in :meth:`issuing`."""
        self._mark = _IssuingMark(self)

    def issuing(self) -> _IssuingMark:
        """Around a handshake step that may send tickets before :meth:`put` records their session (OpenSSL
        writing the socket itself sends them as the handshake ends): a client may offer such a ticket on
        its next connection at once, and that connection's lookup must find it, not refuse it.  (A lookup
        waits for other threads only: the step that runs it may be this thread's own.)  Not re-entrant: a
        thread runs one handshake step at a time."""
        return self._mark

    def _others_issuing(self, me: int) -> bool:
        """A thread other than ``me`` is in :meth:`issuing` and not itself waiting in :meth:`take` (which it
        does from the ClientHello check, before its step can send tickets); call with the lock held.  (A copy
        of the set: threads enter and leave it without the lock.)"""
        return any(t != me and t not in self._looking for t in tuple(self._issuing))

    def put(self, key_id: bytes, facts: ChainFacts) -> None:
        """Record the session the connection's last ticket resumes (if the chain may go on)."""
        if not key_id or not self.usable(facts, self.clock()):
            return
        with self._lock:
            self._entries[key_id] = facts
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            if self._looking:
                self._changed.notify_all()

    def take(self, key_id: bytes) -> ChainFacts | None:
        """The chain a resumed session belongs to, removed from the table; None if unknown or past a bound.

        An unknown session is waited for (up to :attr:`issuing_wait`) while some connection is
        :meth:`issuing` tickets: it may be one of those tickets, sent but not yet recorded."""
        with self._lock:
            facts = self._entries.pop(key_id, None)
            me = threading.get_ident()
            if facts is None and self._others_issuing(me):
                until = time.monotonic() + self.issuing_wait
                self._looking.add(me)
                self._changed.notify_all()  # a thread waiting on this one waits no longer
                try:
                    while facts is None and self._others_issuing(me):
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                        facts = self._entries.pop(key_id, None)
                finally:
                    self._looking.discard(me)
        if facts is None or not self.usable(facts, self.clock()):
            return None
        return facts

    def __len__(self) -> int:
        return len(self._entries)


class _IssuingMark:
    """:meth:`ServerSessionTable.issuing`: one per table, shared by all threads (the marks are kept per thread in
    the table).  A class, not a generator: it runs twice per resumed connection."""

    __slots__ = ("_table",)

    def __init__(self, table: ServerSessionTable) -> None:
        self._table = table

    # No lock to enter or leave: adding to and removing from a set is atomic, and a lookup that must wait for
    # this thread's tickets starts after they were sent, so after this thread entered.  A lookup waiting while
    # this thread leaves is woken under the lock (it added itself to _looking before it checked _issuing).
    def __enter__(self) -> None:
        self._table._issuing.add(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        table = self._table
        table._issuing.discard(threading.get_ident())
        if table._looking:  # only a thread in take() ever waits
            with table._lock:
                table._changed.notify_all()
