"""A local record of every QKD key_ID this side has used (``docs/protocol.md`` §6.4).

ETSI GS QKD 014 says each key is delivered once, but KMEs word a second request for a
consumed key_ID differently (a 400, a 401, or nothing at all when the KME is faulty), so
replay detection cannot rest on the KME's answer.  :class:`JournaledSource` wraps any key
source and refuses a key_ID it has seen before, as master or as slave, whatever the KME says.

The journal is an append-only text file (one key_ID per line, 0600) read and appended
under a lock, so concurrent exchanges on one machine share it.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from .._errors import ConfigError, QKDKeyReplay
from ..io._files import locked
from ..protocol._qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource

__all__ = ["KeyIdJournal", "JournaledSource", "default_journal_path"]


def default_journal_path() -> Path:
    """``$HYBRIDKEX_STATE_DIR`` or ``$XDG_STATE_HOME/hybridkex`` or ``~/.local/state/hybridkex``, + ``qkd-key-ids``."""
    base = os.environ.get("HYBRIDKEX_STATE_DIR")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        base = os.path.join(xdg, "hybridkex")
    return Path(base) / "qkd-key-ids"


class KeyIdJournal:
    """The key_IDs used so far, kept in ``path``."""

    _shared: dict[Path, KeyIdJournal] = {}
    _shared_lock = threading.Lock()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: set[str] = set()
        self._offset = 0
        self._lock = threading.Lock()

    @classmethod
    def for_path(cls, path: str | os.PathLike[str]) -> KeyIdJournal:
        """The one journal object of this process for ``path``: it reads only what was appended since
        its last look, so N exchanges cost O(N) reading, not O(N^2)."""
        key = Path(path).absolute()
        with cls._shared_lock:
            journal = cls._shared.get(key)
            if journal is None:
                journal = cls._shared[key] = cls(key)
            return journal

    def record(self, role: str, key_ids: Sequence[uuid.UUID]) -> None:
        """Add ``key_ids`` as used in ``role`` (``master`` or ``slave``: one machine may be both ends of a
        link); raise :class:`QKDKeyReplay` (recording nothing) if any was used before in that role."""
        entries = [f"{role} {k}" for k in key_ids]
        try:
            with self._lock:
                try:
                    self._record(key_ids, entries)
                except FileNotFoundError:  # the directory: made on first use, not at every record
                    self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    self._record(key_ids, entries)
        except OSError as exc:
            raise ConfigError(f"cannot update the QKD key_ID journal {self.path}: {exc.strerror or exc}; set "
                              "HYBRIDKEX_STATE_DIR or --qkd-journal to a writable place") from None

    def _record(self, key_ids: Sequence[uuid.UUID], entries: list[str]) -> None:
        with locked(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                # Read only what other processes appended since our last look.
                new = b""
                while chunk := os.pread(fd, 1 << 16, self._offset + len(new)):
                    new += chunk
                self._seen.update(line.decode("ascii", "replace").strip() for line in new.splitlines())
                for key_id, entry in zip(key_ids, entries, strict=True):
                    if entry in self._seen:
                        raise QKDKeyReplay(f"the QKD key_ID {key_id} was already used on this side (local "
                                           "journal): the KME delivered it twice or an old key_ID was replayed; "
                                           "the key is refused")
                data = "".join(f"{e}\n" for e in entries).encode("ascii")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                self._offset += len(new) + len(data)
                self._seen.update(entries)
            finally:
                os.close(fd)


class JournaledSource(QKDKeySource):
    """A key source whose every delivered key_ID goes through a :class:`KeyIdJournal` first."""

    def __init__(self, inner: QKDKeySource, journal: KeyIdJournal) -> None:
        self.inner = inner
        self.journal = journal
        self.kind = inner.kind

    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        keys = self.inner.get_new_keys(number, size_bits)
        self.journal.record("master", [k.key_id for k in keys])
        return keys

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        # Record before asking: a key_ID is spent at the KME by the request itself.
        self.journal.record("slave", list(key_ids))
        return self.inner.get_keys_by_id(key_ids)

    def get_keys_from(self, key_ids: Sequence[uuid.UUID], master_sae_id: str) -> list[QKDKey]:
        self.journal.record("slave", list(key_ids))
        return self.inner.get_keys_from(key_ids, master_sae_id)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
