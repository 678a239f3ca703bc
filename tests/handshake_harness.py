"""Two handshake state machines wired back to back in memory, as the tests drive them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from hybridkex import (
    HandshakeComplete,
    HandshakeConfig,
    HandshakeResult,
    HybridKexError,
    Initiator,
    NeedQKDKeys,
    PeerAlertError,
    QKDKey,
    QKDKeyReplay,
    Responder,
    SendMessage,
    get_backend,
)

BACKEND = get_backend("cryptography")


@dataclass
class QKDPair:
    """Both ends of a QKD link as plain data: keys the master hands out are found by ID at the slave once."""

    fail_master: Exception | None = None
    fail_slave: Exception | None = None
    issued: dict[uuid.UUID, bytes] = field(default_factory=dict)
    consumed: set[uuid.UUID] = field(default_factory=set)

    def answer(self, conn: Initiator | Responder, need: NeedQKDKeys) -> list:
        if need.role == "master":
            if self.fail_master:
                return conn.qkd_failed(self.fail_master)  # type: ignore[arg-type]
            key = QKDKey(uuid.uuid4(), os.urandom(need.size_bits // 8))
            self.issued[key.key_id] = key.key
            return conn.qkd_keys([key])
        if self.fail_slave:
            return conn.qkd_failed(self.fail_slave)  # type: ignore[arg-type]
        if any(k in self.consumed for k in need.key_ids):
            return conn.qkd_failed(QKDKeyReplay("key_ID already used"))
        self.consumed.update(need.key_ids)
        return conn.qkd_keys([QKDKey(k, self.issued[k]) for k in need.key_ids])


@dataclass
class Outcome:
    initiator: HandshakeResult | Exception
    responder: HandshakeResult | Exception
    frames: list[bytes]


Tamper = Callable[[int, bytes], bytes]


def run(i_auth, r_auth, *, i_policy="off", r_policy="off", qkd: QKDPair | None = None, tamper: Tamper | None = None,
        i_suites=(1, 3), r_suites=(1, 2, 3, 4), i_context=b"", r_context=b"", rng=os.urandom) -> Outcome:
    """Run a whole handshake, delivering alerts on failure as a real transport would."""
    qkd = qkd or QKDPair()
    ini = Initiator(HandshakeConfig(i_auth, i_suites, i_policy, backend=BACKEND, context=i_context), rng=rng)
    res = Responder(HandshakeConfig(r_auth, r_suites, r_policy, backend=BACKEND, context=r_context))
    results: dict[str, HandshakeResult | Exception] = {}
    frames: list[bytes] = []
    sides = {"i": ini, "r": res}
    pending: list[tuple[str, list]] = [("i", ini.initiate())]

    def failed(side: str, exc: HybridKexError) -> None:
        """``side`` failed: record it and deliver its alert to the other side, which must fail too."""
        results[side] = exc
        peer = "r" if side == "i" else "i"
        alert = sides[side].error_alert
        if alert and peer not in results:
            try:
                sides[peer].receive(alert)
            except HybridKexError as exc2:
                results[peer] = exc2
            else:  # pragma: no cover - an alert must never be accepted
                raise AssertionError("an alert was accepted as a handshake message")
    while pending:
        who, events = pending.pop(0)
        other = "r" if who == "i" else "i"
        for ev in events:
            if isinstance(ev, SendMessage):
                data = ev.data
                if tamper is not None:
                    data = tamper(len(frames), data)
                frames.append(data)
                if other in results:  # the peer already finished or failed
                    continue
                try:
                    pending.append((other, sides[other].receive(data)))
                except HybridKexError as exc:
                    failed(other, exc)
            elif isinstance(ev, NeedQKDKeys):
                try:
                    pending.append((who, qkd.answer(sides[who], ev)))
                except HybridKexError as exc:
                    failed(who, exc)
            elif isinstance(ev, HandshakeComplete):
                results[who] = ev.result
    # A side's success stands only if the peer did not fail on that side's last message: the
    # transport waits for the peer's close or alert after sending the last message (await_close).
    for done, bad in (("r", "i"), ("i", "r")):
        if isinstance(results.get(bad), Exception) and isinstance(results.get(done), HandshakeResult) \
                and sides[bad].error_alert:
            results[done] = PeerAlertError("peer failed on this side's last message", 2)
    return Outcome(results.get("i", RuntimeError("initiator stuck")), results.get("r", RuntimeError("stuck")), frames)


def ok(o: Outcome) -> tuple[HandshakeResult, HandshakeResult]:
    assert isinstance(o.initiator, HandshakeResult), o.initiator
    assert isinstance(o.responder, HandshakeResult), o.responder
    return o.initiator, o.responder
