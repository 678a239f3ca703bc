"""The tests' shorthand around the shared in-memory pair driver (:mod:`hybridkex_sim`'s ``Pair``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hybridkex_sim import Outcome, Pair, QKDPair, Tamper

from hybridkex import HandshakeResult, PeerAlertError
from hybridkex.backends import get_backend
from hybridkex.protocol import HandshakeConfig, Initiator, Responder

__all__ = ["BACKEND", "QKDPair", "Outcome", "configs", "run", "ok", "no_key"]

BACKEND = get_backend("cryptography")


def configs(i_auth: Any, r_auth: Any, *, i_policy: str = "off", r_policy: str = "off", i_suites=(1, 3),
            r_suites=(1, 2, 3, 4), i_context=b"", r_context=b"", i_extra: dict | None = None,
            r_extra: dict | None = None) -> tuple[HandshakeConfig, HandshakeConfig]:
    return (HandshakeConfig(i_auth, i_suites, i_policy, backend=BACKEND, context=i_context, **(i_extra or {})),
            HandshakeConfig(r_auth, r_suites, r_policy, backend=BACKEND, context=r_context, **(r_extra or {})))


def run(i_auth: Any = None, r_auth: Any = None, *, qkd: QKDPair | None = None, tamper: Tamper | None = None,
        rng: Callable[[int], bytes] = os.urandom, pair: tuple[HandshakeConfig, HandshakeConfig] | None = None,
        responder: Responder | None = None, **kwargs: Any) -> Outcome:
    """Run a whole handshake with the shared pair driver (:class:`hybridkex_sim.Pair`), delivering
    alerts on failure as a real transport would; a dropped frame is a lost message and a closed
    connection.  With channel confirmation the initiator's channel is taken to confirm."""
    i_config, r_config = pair or configs(i_auth, r_auth, **kwargs)
    return Pair(Initiator(i_config, rng=rng), responder or Responder(r_config), qkd=qkd, tamper=tamper).run()


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
