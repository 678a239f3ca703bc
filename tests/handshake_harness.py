"""Two handshake state machines wired back to back in memory, as the tests drive them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridkex import HandshakeResult, HybridKexError, PeerAlertError, QKDKey, QKDKeyReplay
from hybridkex.backends import get_backend
from hybridkex.protocol import (
    HandshakeComplete,
    HandshakeConfig,
    Initiator,
    NeedChannelConfirmation,
    NeedQKDKeys,
    Responder,
    SendMessage,
)

BACKEND = get_backend("cryptography")


@dataclass
class QKDPair:
    """Both ends of a QKD link as plain data: keys the master hands out are found by ID at the slave once."""

    fail_master: Exception | None = None
    fail_slave: Exception | None = None
    issued: dict[uuid.UUID, bytes] = field(default_factory=dict)
    consumed: set[uuid.UUID] = field(default_factory=set)
    slave_asked: int = 0

    def answer(self, conn: Initiator | Responder, need: NeedQKDKeys) -> list:
        if need.role == "master":
            if self.fail_master:
                return conn.qkd_failed(self.fail_master)  # type: ignore[arg-type]
            key = QKDKey(uuid.uuid4(), os.urandom(need.size_bits // 8))
            self.issued[key.key_id] = key.key
            return conn.qkd_keys([key])
        self.slave_asked += 1
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
    ini: Initiator
    res: Responder


Tamper = Callable[[int, bytes], bytes | None]
"""Called with each frame's index and bytes; returns the bytes to deliver, or None to drop the frame."""


def configs(i_auth: Any, r_auth: Any, *, i_policy: str = "off", r_policy: str = "off", i_suites=(1, 3),
            r_suites=(1, 2, 3, 4), i_context=b"", r_context=b"", i_extra: dict | None = None,
            r_extra: dict | None = None) -> tuple[HandshakeConfig, HandshakeConfig]:
    return (HandshakeConfig(i_auth, i_suites, i_policy, backend=BACKEND, context=i_context, **(i_extra or {})),
            HandshakeConfig(r_auth, r_suites, r_policy, backend=BACKEND, context=r_context, **(r_extra or {})))


def run(i_auth: Any = None, r_auth: Any = None, *, qkd: QKDPair | None = None, tamper: Tamper | None = None,
        rng: Callable[[int], bytes] = os.urandom, pair: tuple[HandshakeConfig, HandshakeConfig] | None = None,
        responder: Responder | None = None, **kwargs: Any) -> Outcome:
    """Run a whole handshake, delivering alerts on failure as a real transport would.

    A dropped frame models a lost message followed by a closed connection: the receiver
    never gets it.  With channel confirmation the initiator's channel is taken to confirm.
    """
    qkd = qkd or QKDPair()
    i_config, r_config = pair or configs(i_auth, r_auth, **kwargs)
    ini = Initiator(i_config, rng=rng)
    res = responder or Responder(r_config)
    results: dict[str, HandshakeResult | Exception] = {}
    frames: list[bytes] = []
    sides: dict[str, Initiator | Responder] = {"i": ini, "r": res}
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
                data: bytes | None = ev.data
                if tamper is not None:
                    data = tamper(len(frames), ev.data)
                frames.append(ev.data if data is None else data)
                if data is None or other in results:  # dropped, or the peer already finished or failed
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
            elif isinstance(ev, NeedChannelConfirmation):
                pending.append((who, ini.channel_confirmed()))
            elif isinstance(ev, HandshakeComplete):
                results[who] = ev.result
    # A side's success stands only if the peer did not fail on that side's last message: the
    # transport waits for the peer's close or alert after sending the last message (await_close).
    for done, bad in (("r", "i"), ("i", "r")):
        if isinstance(results.get(bad), Exception) and isinstance(results.get(done), HandshakeResult) \
                and sides[bad].error_alert:
            results[done] = PeerAlertError("peer failed on this side's last message", 2)
    return Outcome(results.get("i", RuntimeError("initiator got no answer")),
                   results.get("r", RuntimeError("responder got no answer")), frames, ini, res)


def ok(o: Outcome) -> tuple[HandshakeResult, HandshakeResult]:
    assert isinstance(o.initiator, HandshakeResult), o.initiator
    assert isinstance(o.responder, HandshakeResult), o.responder
    return o.initiator, o.responder


def no_key(o: Outcome) -> None:
    """Neither side produced a key (each either failed or never finished)."""
    assert not isinstance(o.initiator, HandshakeResult), "the initiator output a key"
    assert not isinstance(o.responder, HandshakeResult), "the responder output a key"
    assert o.ini.result is None or isinstance(o.initiator, PeerAlertError)
    assert o.res.result is None or isinstance(o.responder, PeerAlertError)
