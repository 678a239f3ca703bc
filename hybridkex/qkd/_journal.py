"""A local record of every QKD key_ID this side has used (``docs/protocol.md`` §7.4).

ETSI GS QKD 014 says each key is delivered once, but KMEs word a second request for a
consumed key_ID differently (a 400, a 401, or nothing at all when the KME is faulty), so
replay detection cannot rest on the KME's answer.  :class:`JournaledSource` wraps any key
source and refuses a key_ID it has seen before, as master or as slave, whatever the KME says.

The journal is a text file (one ``role key_ID unix-seconds`` line per entry, 0600), read and
appended under a lock, so concurrent exchanges on one machine share it.  Entries are kept
for a retention period (``days``, 7 by default); once the file has doubled since its last
compaction, the entries still within their retention are rewritten beside it and renamed over
it under the same lock, so a rotator that runs for months keeps a bounded file and a bounded
set in memory.  A crash at any point leaves either the old file or the new one, each holding
every entry that is still within its retention.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .._errors import ConfigError, QKDKeyReplay
from ..io._files import atomic_write, locked
from ..protocol._qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource

__all__ = ["KeyIdJournal", "JournaledSource", "default_journal_path", "DEFAULT_RETENTION_DAYS"]

log = logging.getLogger(__name__)

#: How long a used key_ID is remembered by default: a KME that hands one out again within this time is caught.
DEFAULT_RETENTION_DAYS = 7.0
#: A file is not compacted before it holds this many bytes (some 1 500 entries).
_MIN_COMPACT_BYTES = 64 * 1024
#: Roles, as the bit above a key_ID's 128 bits that tells them apart in memory.
_ROLE_BITS = {"master": 1 << 128, "slave": 2 << 128}


def default_journal_path() -> Path:
    """``$HYBRIDKEX_STATE_DIR`` or ``$XDG_STATE_HOME/hybridkex`` or ``~/.local/state/hybridkex``, + ``qkd-key-ids``."""
    base = os.environ.get("HYBRIDKEX_STATE_DIR")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        base = os.path.join(xdg, "hybridkex")
    return Path(base) / "qkd-key-ids"


def _check_days(days: float) -> float:
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
        raise ConfigError(f"the QKD key_ID journal's retention must be a positive number of days, not {days!r}")
    return float(days)


def _parse(lines: Iterable[bytes], now: float) -> Iterable[tuple[int, float, bytes]]:
    """(role bit | key_ID, time, line) of each well-formed entry; a torn or foreign line is skipped."""
    for line in lines:
        fields = line.split()
        if len(fields) not in (2, 3) or fields[0] not in (b"master", b"slave"):
            continue
        try:
            key = _ROLE_BITS[fields[0].decode()] | uuid.UUID(fields[1].decode("ascii")).int
            stamp = float(fields[2]) if len(fields) == 3 else now  # no time: kept one retention from now
        except ValueError:
            continue
        yield key, stamp, line


class KeyIdJournal:
    """The key_IDs used within the last ``days``, kept in ``path``."""

    _shared: dict[Path, KeyIdJournal] = {}
    _shared_lock = threading.Lock()

    def __init__(self, path: str | os.PathLike[str], days: float = DEFAULT_RETENTION_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.days = _check_days(days)
        self._clock = clock
        self._seen: set[int] = set()
        self._offset = 0
        self._inode: tuple[int, int] | None = None
        self._tail = b""
        self._compacted_size = 0
        self._oldest = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_path(cls, path: str | os.PathLike[str], days: float = DEFAULT_RETENTION_DAYS) -> KeyIdJournal:
        """The one journal object of this process for ``path``: it reads only what was appended since
        its last look, so N exchanges cost O(N) reading, not O(N^2).  Users of one file that ask for
        different retentions get the longest (remembering longer is the safe side)."""
        key = Path(path).absolute()
        days = _check_days(days)
        with cls._shared_lock:
            journal = cls._shared.get(key)
            if journal is None:
                journal = cls._shared[key] = cls(key, days)
            journal.days = max(journal.days, days)
            return journal

    def __len__(self) -> int:
        """Entries this process holds in memory (those of the file since its last compaction)."""
        return len(self._seen)

    def record(self, role: str, key_ids: Sequence[uuid.UUID]) -> None:
        """Add ``key_ids`` as used in ``role`` (``master`` or ``slave``: one machine may be both ends of a
        link); raise :class:`QKDKeyReplay` (recording nothing) if any was used before in that role."""
        keys = [_ROLE_BITS[role] | k.int for k in key_ids]
        try:
            with self._lock:
                try:
                    self._record(role, key_ids, keys)
                except FileNotFoundError:  # the directory: made on first use, not at every record
                    self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    self._record(role, key_ids, keys)
        except OSError as exc:
            raise ConfigError(f"cannot update the QKD key_ID journal {self.path}: {exc.strerror or exc}; set "
                              "HYBRIDKEX_STATE_DIR or --qkd-journal to a writable place") from None

    def _record(self, role: str, key_ids: Sequence[uuid.UUID], keys: list[int]) -> None:
        with locked(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                now = self._clock()
                self._catch_up(fd, now)
                for key_id, key in zip(key_ids, keys, strict=True):
                    if key in self._seen:
                        raise QKDKeyReplay(f"the QKD key_ID {key_id} was already used on this side (local "
                                           "journal): the KME delivered it twice or an old key_ID was replayed; "
                                           "the key is refused")
                if self._compaction_due(now):
                    fd = self._compact(fd, now)
                # A line cut short by a crash is ended first, so that it cannot swallow the next entry.
                lead = b"\n" if self._tail not in (b"", b"\n") else b""
                data = lead + "".join(f"{role} {k} {int(now)}\n" for k in key_ids).encode("ascii")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                self._offset += len(data)
                self._tail = b"\n"
                self._seen.update(keys)
            finally:
                os.close(fd)

    def _catch_up(self, fd: int, now: float) -> None:
        """Read what other processes appended since this one's last look (all of it if the file was replaced)."""
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._inode:  # first look, or compacted (or removed) by another process
            self._inode, self._offset, self._tail, self._seen = (st.st_dev, st.st_ino), 0, b"", set()
            self._compacted_size, self._oldest = st.st_size, now
        new = b""
        while chunk := os.pread(fd, 1 << 16, self._offset + len(new)):
            new += chunk
        if not new:
            return
        # Writers hold the lock until their lines are whole and synced: an unfinished last line is a
        # writer's crash, whose caller never used the key; reading it as used errs on the safe side.
        for number, (key, stamp, _) in enumerate(_parse(new.splitlines(), now)):
            self._seen.add(key)
            if number == 0 and self._offset == 0:
                self._oldest = stamp  # entries are appended in time order: the first is the oldest
        self._offset += len(new)
        self._tail = new[-1:]

    def _compaction_due(self, now: float) -> bool:
        """Once the file has doubled since it was last compacted (amortized: each entry is rewritten a few
        times at most), or when a process first finds a whole retention period of expired entries in it."""
        if self._offset < _MIN_COMPACT_BYTES:
            return False
        return self._offset >= 2 * self._compacted_size or self._oldest < now - 2 * self.days * 86400

    def _compact(self, fd: int, now: float) -> int:
        """Keep the entries within their retention: written beside the file, renamed over it (under the lock);
        returns the descriptor to append to.  On failure the old file stays whole and in use (bigger, nothing lost)."""
        cutoff = now - self.days * 86400
        data = b""
        while chunk := os.pread(fd, 1 << 16, len(data)):
            data += chunk
        kept = [(key, stamp, line) for key, stamp, line in _parse(data.splitlines(), now) if stamp >= cutoff]
        body = b"".join(line + b"\n" for _, _, line in kept)
        try:
            atomic_write(self.path, body)
        except (OSError, ConfigError) as exc:
            log.warning("QKD key_ID journal %s: compaction failed (%s); the whole file stays in use",
                        self.path, getattr(exc, "strerror", None) or exc)
        # Whatever atomic_write got to, the path now names a whole journal, the old or the compacted one.
        new_fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        os.close(fd)
        st = os.fstat(new_fd)
        if (st.st_dev, st.st_ino) == self._inode:  # not replaced: not again before the file doubles once more
            self._compacted_size, self._oldest = self._offset, now
            return new_fd
        self._inode, self._offset, self._tail = (st.st_dev, st.st_ino), len(body), b"\n" if body else b""
        self._seen = {key for key, _, _ in kept}
        self._compacted_size, self._oldest = len(body), kept[0][1] if kept else now
        return new_fd


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
