"""QKD-replenished authentication: a PSK ratchet fed by each exchange's output (``docs/protocol.md`` §6.5).

PSK authentication bootstraps from a configured PSK, once, by an explicit operator action
(:func:`init_ratchet`, ``hybridkex psk ratchet-init``).  After every confirmed exchange the
session's ratchet secret (which mixes the QKD key and binds both names) gives the PSK for the
next one, so after bootstrap the classical channel is authenticated by QKD-fed keys.

State, per peer: the ``current`` key and at most one ``previous`` key.  An initiator offers
both; the responder picks the newest it also holds.  So:

* a side that missed an update (it crashed, or the last message was lost) still holds the
  key the other side keeps as ``previous``, and the next exchange brings both into step;
* ``previous`` is accepted for at most :data:`MAX_PREVIOUS_EXCHANGES` exchanges and
  :data:`MAX_PREVIOUS_SECONDS` seconds after it was superseded, then dropped;
* state advances only with a result whose session both sides confirmed;
* a key that was QKD-fed is never replaced by one that was not;
* a missing state file is an error, never a silent re-bootstrap from the original PSK.

The state file is replaced atomically (0600) under a lock.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from .io._files import atomic_write, locked, read_secret_file
from .protocol._auth import PSKAuthenticator, psk_identity
from .protocol._handshake import HandshakeResult

__all__ = ["AuthRatchet", "RatchetState", "RatchetKey", "init_ratchet", "MAX_PREVIOUS_EXCHANGES",
           "MAX_PREVIOUS_SECONDS"]

_TYPE = "hybridkex-auth-ratchet"
_VERSION = 2
MAX_PREVIOUS_EXCHANGES = 3
MAX_PREVIOUS_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class RatchetKey:
    key: bytes = field(repr=False)
    qkd_fed: bool = False
    since_epoch: int = 0
    """For ``previous``: the epoch at which it was superseded."""
    expires: float = 0.0
    """For ``previous``: wall-clock time after which it is no longer offered or accepted."""


@dataclass(frozen=True)
class RatchetState:
    """What the ratchet file holds."""

    epoch: int
    """Confirmed exchanges since bootstrap."""
    current: RatchetKey
    previous: RatchetKey | None = None

    def usable(self, now: float) -> tuple[RatchetKey, ...]:
        """The keys to offer and accept now, newest first."""
        prev = self.previous
        if prev is not None and self.epoch - prev.since_epoch < MAX_PREVIOUS_EXCHANGES and now < prev.expires:
            return (self.current, prev)
        return (self.current,)

    def key_ids(self) -> list[str]:
        keys = [self.current] + ([self.previous] if self.previous else [])
        return [psk_identity(k.key).hex() for k in keys]


def _encode_key(k: RatchetKey) -> dict[str, Any]:
    return {"key": base64.b64encode(k.key).decode(), "qkd_fed": k.qkd_fed, "since_epoch": k.since_epoch,
            "expires": k.expires}


def _decode_key(doc: dict[str, Any]) -> RatchetKey:
    key = base64.b64decode(doc["key"], validate=True)
    if len(key) < 32:
        raise ValueError("bad key")
    return RatchetKey(key, bool(doc["qkd_fed"]), int(doc["since_epoch"]), float(doc["expires"]))


def _write(path: Path, state: RatchetState) -> None:
    doc = {"type": _TYPE, "version": _VERSION, "epoch": state.epoch, "current": _encode_key(state.current),
           "previous": _encode_key(state.previous) if state.previous else None}
    atomic_write(path, json.dumps(doc).encode() + b"\n", mode=0o600)


def init_ratchet(state_path: str | os.PathLike[str], bootstrap_psk: bytes, *, force: bool = False) -> RatchetState:
    """Create a ratchet state from a bootstrap PSK (both sides do this once, with the same PSK).

    Refuses to replace an existing state unless ``force``: re-bootstrapping after the ratchet
    advanced means going back to a key that may have leaked, and must be done on purpose.
    """
    path = Path(state_path)
    if len(bootstrap_psk) < 32:
        raise ConfigError("the bootstrap pre-shared key must be at least 32 bytes")
    with locked(path):
        if path.exists() and not force:
            raise ConfigError(f"authentication ratchet {path} already exists; re-bootstrapping from the original "
                              "PSK needs --force on both sides (only after both lost their state)")
        state = RatchetState(0, RatchetKey(bytes(bootstrap_psk)))
        _write(path, state)
    return state


class AuthRatchet:
    """The ratchet for one peer, kept in ``state_path``."""

    def __init__(self, state_path: str | os.PathLike[str], *, name: str | None, peer_name: str | None,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = Path(state_path)
        self.name, self.peer_name = name, peer_name
        self._wall = wall

    def load(self) -> RatchetState:
        if not self.path.exists():
            raise ConfigError(f"authentication ratchet {self.path} does not exist; for a new pair create it on both "
                              f"sides with 'hybridkex psk ratchet-init {self.path} --psk-file PSK' (it is never "
                              "re-created silently, so a lost state cannot bring back the original PSK)")
        data = read_secret_file(self.path, "authentication ratchet state")
        try:
            doc = json.loads(data)
            if doc.get("type") != _TYPE or doc.get("version") != _VERSION:
                raise ValueError("not a ratchet file")
            previous = doc.get("previous")
            return RatchetState(int(doc["epoch"]), _decode_key(doc["current"]),
                                _decode_key(previous) if previous else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{self.path} is not a valid authentication ratchet file; restore it from backup, or "
                              "re-bootstrap both sides with 'hybridkex psk ratchet-init --force'") from None

    def authenticator(self) -> PSKAuthenticator:
        """A PSK authenticator that offers every key usable now."""
        keys = [k.key for k in self.load().usable(self._wall())]
        return PSKAuthenticator(keys, name=self.name, peer_name=self.peer_name)

    def advance(self, result: HandshakeResult) -> RatchetState:
        """After a confirmed exchange: the next key comes from it; keep the key it used as ``previous``.

        Returns the state now on disk; unchanged when the exchange ran without QKD and the current
        key was QKD-fed (a key that QKD fed is never replaced by one it did not).
        """
        used_id = result.peer.psk_id
        if used_id is None:
            raise ConfigError("the authentication ratchet needs PSK authentication (a PSK and two names)")
        with locked(self.path):
            state = self.load()
            now = self._wall()
            used = next((k for k in state.usable(now) if psk_identity(k.key) == used_id), None)
            if used is None:
                raise ConfigError("authentication ratchet changed during the exchange; run one exchange per peer at "
                                  "a time")
            if state.current.qkd_fed and not result.qkd.used:
                return state
            epoch = state.epoch + 1
            if used is state.current:
                previous = RatchetKey(used.key, used.qkd_fed, epoch, now + MAX_PREVIOUS_SECONDS)
            else:
                previous = used
            new = RatchetState(epoch, RatchetKey(result.ratchet_psk(), result.qkd.used), previous)
            _write(self.path, new)
            return new
