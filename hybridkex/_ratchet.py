"""QKD-replenished authentication: a PSK ratchet fed by each exchange's output.

PSK authentication bootstraps from a configured PSK.  After every successful exchange a
separate export of the session secret (which mixes the QKD key) becomes the PSK for the
next one, so after bootstrap the classical channel is authenticated by QKD-fed keys.
Breaking an authentication key later does not expose keys agreed earlier: authentication
only has to hold while the exchange runs.

State, per peer, newest first: ``[next, used]`` where ``used`` is the key the last exchange
was authenticated with and ``next`` is derived from it.  An initiator offers every key it
holds; the responder picks the newest one it also holds.  So:

* the previous key stays until the peer proves it has the new one (a later exchange that
  uses ``next`` drops everything older than it);
* a side that missed an update (crash, or the last message lost) still holds ``used``,
  which the other side also still holds, so the next exchange succeeds and both sides
  converge on a fresh ``[next', used']`` -- no lockout;
* every successful exchange derives a fresh key from a fresh session secret -- no reuse.

The state file is replaced atomically (0600) under a lock.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import _labels
from ._auth import PSKAuthenticator, psk_identity
from ._errors import ConfigError
from ._files import atomic_write, locked, read_secret_file
from ._handshake import HandshakeResult

__all__ = ["AuthRatchet", "RatchetState"]

_TYPE = "hybridkex-auth-ratchet"


@dataclass(frozen=True)
class RatchetState:
    """What the ratchet file holds."""

    epoch: int
    """Successful exchanges since bootstrap."""
    keys: tuple[bytes, ...] = field(repr=False)
    """Accepted PSKs, newest first."""
    qkd_fed: bool
    """Whether the newest key came from an exchange that used a QKD key."""

    def key_ids(self) -> list[str]:
        return [psk_identity(k).hex() for k in self.keys]


class AuthRatchet:
    """The ratchet for one peer, kept in ``state_path``; bootstraps from ``bootstrap_psk``."""

    def __init__(self, state_path: str | os.PathLike[str], bootstrap_psk: bytes | None = None) -> None:
        self.path = Path(state_path)
        self.bootstrap_psk = bootstrap_psk

    def load(self) -> RatchetState:
        if not self.path.exists():
            if self.bootstrap_psk is None:
                raise ConfigError(f"authentication ratchet {self.path} does not exist and no bootstrap PSK was "
                                  "given; pass --psk-file to bootstrap it")
            return RatchetState(0, (self.bootstrap_psk,), False)
        data = read_secret_file(self.path, "authentication ratchet state")
        try:
            doc = json.loads(data)
            if doc.get("type") != _TYPE or doc.get("version") != 1:
                raise ValueError("not a ratchet file")
            keys = tuple(base64.b64decode(k, validate=True) for k in doc["keys"])
            if not 1 <= len(keys) <= 2 or any(len(k) != 32 for k in keys):
                raise ValueError("bad keys")
            return RatchetState(int(doc["epoch"]), keys, bool(doc["qkd_fed"]))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.path} is not a valid authentication ratchet file; restore it from backup or "
                              "delete it on both sides to bootstrap again from the PSK") from None

    def authenticator(self) -> PSKAuthenticator:
        """A PSK authenticator that offers every key of the current state."""
        return PSKAuthenticator(list(self.load().keys))

    def advance(self, result: HandshakeResult) -> RatchetState:
        """After a successful exchange: the next key is derived from it; keep the key it used."""
        used_id = result.peer.psk_id
        if used_id is None:
            raise ConfigError("the authentication ratchet needs PSK authentication (--psk-file)")
        with locked(self.path):
            state = self.load()
            used = next((k for k in state.keys if psk_identity(k) == used_id), None)
            if used is None:
                # The state moved on under us (a concurrent exchange); the used key must still be kept.
                raise ConfigError("authentication ratchet changed during the exchange; run one exchange per peer at "
                                  "a time")
            new = RatchetState(state.epoch + 1, (result.export(_labels.EXPORT_AUTH_RATCHET, 32), used),
                               result.qkd.used)
            doc = {"type": _TYPE, "version": 1, "epoch": new.epoch, "qkd_fed": new.qkd_fed,
                   "keys": [base64.b64encode(k).decode() for k in new.keys]}
            atomic_write(self.path, json.dumps(doc).encode() + b"\n", mode=0o600)
            return new
