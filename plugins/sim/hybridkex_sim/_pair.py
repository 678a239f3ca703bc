"""Two hybridkex state machines wired back to back in memory: the one pair driver of the tests,
the test-vector generator and the benchmarks.

:class:`Pair` delivers each side's messages to the other, answers QKD requests from a
:class:`QKDPair` (both ends of a link as plain data), lets a test alter or drop any frame
(``tamper``), delivers a failing side's alert to its peer as a real transport would, and can
stop before a delivery (``pause``) to leave a real handshake in a chosen state.  With channel
confirmation the initiator's channel (TLS Finished) is taken to confirm, unless
``confirm_channel=False`` leaves that to the caller.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hybridkex import HandshakeResult, HybridKexError, PeerAlertError, QKDKey, QKDKeyReplay
from hybridkex.protocol import (
    Event,
    HandshakeComplete,
    Initiator,
    NeedChannelConfirmation,
    NeedQKDKeys,
    Responder,
    SendMessage,
)

__all__ = ["QKDPair", "Pair", "Outcome", "Delivery", "Tamper"]

Side = Literal["i", "r"]
Tamper = Callable[[int, bytes], bytes | None]
"""Called with each frame's index and bytes; returns the bytes to deliver, or None to drop the frame."""


@dataclass
class QKDPair:
    """Both ends of a QKD link as plain data: keys the master hands out are found by ID at the slave once.

    ``keys`` are handed out first, in order (a fixed key for replays and vectors); after them the
    master makes random ones.  ``fail_master`` / ``fail_slave`` make that end's source fail."""

    fail_master: Exception | None = None
    fail_slave: Exception | None = None
    keys: list[QKDKey] = field(default_factory=list)
    issued: dict[uuid.UUID, bytes] = field(default_factory=dict)
    consumed: set[uuid.UUID] = field(default_factory=set)
    slave_asked: int = 0

    def answer(self, conn: Initiator | Responder, need: NeedQKDKeys) -> list[Event]:
        if need.role == "master":
            if self.fail_master:
                return conn.qkd_failed(self.fail_master)  # type: ignore[arg-type]
            key = self.keys.pop(0) if self.keys else QKDKey(uuid.uuid4(), os.urandom(need.size_bits // 8))
            self.issued[key.key_id] = key.key
            return conn.qkd_keys([key])
        self.slave_asked += 1
        if self.fail_slave:
            return conn.qkd_failed(self.fail_slave)  # type: ignore[arg-type]
        if any(k in self.consumed for k in need.key_ids):
            return conn.qkd_failed(QKDKeyReplay("key_ID already used"))
        self.consumed.update(need.key_ids)
        return conn.qkd_keys([QKDKey(k, self.issued[k]) for k in need.key_ids])


@dataclass(slots=True)
class Delivery:
    """What the driver is about to hand to ``to``: a frame, a QKD request to answer, or the start.

    A plain slotted record (not frozen): the driver makes one per message, and a frozen dataclass's
    ``__init__`` would cost the benchmarks that drive whole handshakes through this class more than the
    rest of the driver."""

    to: Side
    kind: Literal["start", "frame", "qkd", "channel"]
    data: bytes | NeedQKDKeys | None = None


@dataclass
class Outcome:
    initiator: HandshakeResult | Exception
    responder: HandshakeResult | Exception
    frames: list[bytes]
    senders: list[Side]
    ini: Initiator
    res: Responder
    paused: Delivery | None = None
    """The delivery the driver stopped before, when ``pause`` stopped it."""


class Pair:
    """An initiator and a responder wired back to back; :meth:`run` drives them to the end."""

    def __init__(self, ini: Initiator, res: Responder, *, qkd: QKDPair | None = None,
                 tamper: Tamper | None = None, confirm_channel: bool = True) -> None:
        self.ini, self.res = ini, res
        self.confirm_channel = confirm_channel
        self.qkd = qkd or QKDPair()
        self.tamper = tamper
        self.frames: list[bytes] = []
        self.senders: list[Side] = []
        self.results: dict[Side, HandshakeResult | Exception] = {}
        self._sides: dict[Side, Initiator | Responder] = {"i": ini, "r": res}
        self._queue: list[Delivery] = [Delivery("i", "start")]

    def _failed(self, side: Side, exc: HybridKexError) -> None:
        """``side`` failed: record it and deliver its alert to the other side, which must fail too."""
        self.results[side] = exc
        peer: Side = "r" if side == "i" else "i"
        alert = self._sides[side].error_alert
        if alert and peer not in self.results:
            try:
                self._sides[peer].receive(alert)
            except HybridKexError as exc2:
                self.results[peer] = exc2
            else:  # pragma: no cover - an alert must never be accepted
                raise AssertionError("an alert was accepted as a handshake message")

    def _deliver(self, d: Delivery) -> None:
        conn = self._sides[d.to]
        try:
            if d.kind == "start":
                events = self.ini.initiate()
            elif d.kind == "frame":
                events = conn.receive(d.data)  # type: ignore[arg-type]
            elif d.kind == "qkd":
                events = self.qkd.answer(conn, d.data)  # type: ignore[arg-type]
            else:
                events = self.ini.channel_confirmed()
        except HybridKexError as exc:
            self._failed(d.to, exc)
            return
        other: Side = "r" if d.to == "i" else "i"
        for ev in events:
            if isinstance(ev, SendMessage):
                data = ev.data if self.tamper is None else self.tamper(len(self.frames), ev.data)
                self.frames.append(ev.data if data is None else data)
                self.senders.append(d.to)
                if data is not None and other not in self.results:  # not dropped; the peer is still at it
                    self._queue.append(Delivery(other, "frame", data))
            elif isinstance(ev, NeedQKDKeys):
                self._queue.append(Delivery(d.to, "qkd", ev))
            elif isinstance(ev, NeedChannelConfirmation) and self.confirm_channel:  # its channel (TLS) confirms
                self._queue.append(Delivery("i", "channel"))
            elif isinstance(ev, HandshakeComplete):
                self.results[d.to] = ev.result

    def run(self, pause: Callable[[Delivery], bool] | None = None) -> Outcome:
        """Deliver until nothing is left (or until ``pause`` says stop before a delivery).

        A dropped frame models a lost message followed by a closed connection: the receiver
        never gets it.  A side's success stands only if the peer did not fail on that side's last
        message: a transport waits for the peer's close or alert after the last message."""
        while self._queue:
            if pause is not None and pause(self._queue[0]):
                return self._outcome(self._queue[0])
            d = self._queue.pop(0)
            if d.to not in self.results:
                self._deliver(d)
        pairs: tuple[tuple[Side, Side], ...] = (("r", "i"), ("i", "r"))
        for done, bad in pairs:
            if isinstance(self.results.get(bad), Exception) and isinstance(self.results.get(done), HandshakeResult) \
                    and self._sides[bad].error_alert:
                self.results[done] = PeerAlertError("peer failed on this side's last message", 2)
        return self._outcome(None)

    def _outcome(self, paused: Delivery | None) -> Outcome:
        results = self.results
        ini = results["i"] if "i" in results else RuntimeError("initiator got no answer")
        res = results["r"] if "r" in results else RuntimeError("responder got no answer")
        return Outcome(ini, res, self.frames, self.senders, self.ini, self.res, paused)

