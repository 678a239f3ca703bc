"""The QKD key-source interface: what the protocol asks of a QKD link (public as ``hybridkex.qkd``).

A QKD key source is the application's view of a QKD link: it hands out keys as the
*master* SAE (ETSI GS QKD 014 §5.2 ``enc_keys``: new keys plus their key_IDs) and looks
keys up as the *slave* SAE (§5.3 ``dec_keys``: keys by key_ID, each delivered once).

Implementations: the ETSI 014 client (``etsi014``), the simulated BB84 link (``sim``, from
hybridkex-sim), any other registered through ``hybridkex.qkd_sources``.  They do I/O; the
handshake never calls them -- the transport adapter does, when the
sans-I/O state machine asks for keys.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["QKDKey", "QKDKeySource", "QKD_KEY_BYTES"]

#: The QKD key size hybridkex asks for: 256 bits, the CatKDF psk input.
QKD_KEY_BYTES = 32


@dataclass(frozen=True)
class QKDKey:
    """One QKD key and its identifier.  ``repr`` never shows the key."""

    key_id: uuid.UUID
    key: bytes = field(repr=False)


class QKDKeySource(abc.ABC):
    """Where QKD keys come from.  Methods raise :class:`hybridkex.QKDUnavailable` (or a subclass)
    when no key can be had and :class:`hybridkex.QKDKeyReplay` for a key_ID already consumed."""

    #: registry name, e.g. "sim" or "etsi014"
    kind: str = ""

    @abc.abstractmethod
    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        """Master SAE: fetch ``number`` fresh keys of ``size_bits`` bits (ETSI 014 enc_keys)."""

    @abc.abstractmethod
    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        """Slave SAE: fetch the keys with these key_IDs, in order (ETSI 014 dec_keys)."""

    def get_keys_from(self, key_ids: Sequence[uuid.UUID], master_sae_id: str) -> list[QKDKey]:
        """Slave SAE: as :meth:`get_keys_by_id`, from a named master SAE (a responder with several
        peers fetches each one's keys as that peer).  Sources without SAE IDs ignore the name."""
        return self.get_keys_by_id(key_ids)

    def describe(self) -> str:
        """A one-line, secret-free description for logs and --json."""
        return self.kind

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the default does nothing."""

    def __enter__(self) -> QKDKeySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
