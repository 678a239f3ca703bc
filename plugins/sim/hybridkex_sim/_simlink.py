"""The simulated QKD link as a key source (``--qkd sim``).

Both ends hold a copy of one *link file*: a 32-byte seed and the :class:`LinkParameters`.
The seed stands for everything the two QKD devices share through the quantum channel and
the authenticated classical channel, so each end can run the same BB84 block by itself
and get the same key -- or the same abort, when the parameters put an eavesdropper on the
link.  The file is secret (whoever holds it can compute every key): created 0600 and
refused when group or others can read it.

One BB84 block yields a few hundred key bytes, and a block costs milliseconds of numpy
work at each end, so one block serves several keys: each key_ID names a *slice* of a
block.  Master SAE (``get_new_keys``) reserves a fresh block -- a random 56-bit index it
records in the link's journal before handing out any of it -- and cuts consecutive,
non-overlapping slices from it for the keys it is asked for; a block is never reserved
twice at one end, and what a process has not handed out when it exits is never used (the
block is consumed whole).  Slave SAE (``get_keys_by_id``) recovers block, offset and size
from the key_ID, recomputes the block (cached per process) and records the key_ID and the
byte ranges it covers as consumed (ETSI GS QKD 014 §5.3: a key is delivered once); a
key_ID whose bytes overlap anything already consumed at this end is refused like a
replay, so no two key_IDs ever yield overlapping key material here.  The two ends'
masters draw their blocks independently, from 2^56 indices.

key_ID layout (an RFC 9562 version-8 UUID, 122 payload bits)::

    block index (56) | offset in 8-byte units (8) | key size in bytes (10) | tag (48)

where tag = HMAC-SHA256(seed, label || index || offset || size || parameters) truncated
to 48 bits.  A key_ID that fails the tag was forged, garbled, or made with another seed
or other parameters; the slave refuses it with :class:`~hybridkex.QKDUnavailable` before
touching any state.  A key longer than what is left of a block continues in the next
blocks (index + 1, ...), which the master reserves with it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridkex import ConfigError, QKDKeyReplay, QKDUnavailable
from hybridkex.io import atomic_write, locked, read_secret_file
from hybridkex.qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource

from ._bb84 import BB84Link, LinkParameters

__all__ = [
    "LinkFile",
    "SimulatedLinkSource",
    "init_link_file",
    "load_link_file",
    "update_link_file",
    "MAX_KEY_BITS",
]

LINK_FILE_TYPE = "hybridkex-qkd-sim-link"
CONSUMED_FILE_TYPE = "hybridkex-qkd-sim-consumed"
_CONSUMED_HEADER = f"{CONSUMED_FILE_TYPE} v2"
_CONSUMED_HEADERS = (f"{CONSUMED_FILE_TYPE} v1", _CONSUMED_HEADER)
_VERSION = 1
_SEED_BYTES = 32

#: Domain labels: the key_ID tag and the public fingerprint of a link seed.
_KEY_ID_LABEL = b"hybridkex qkd-sim key_ID v2"
_FINGERPRINT_LABEL = b"hybridkex qkd-sim link fingerprint v1"

_TAG_BITS = 48
_SIZE_FIELD_BITS = 10
_OFFSET_FIELD_BITS = 8
_OFFSET_UNIT = 8
_INDEX_BITS = 56
_INDEX_MASK = (1 << _INDEX_BITS) - 1
#: Blocks kept per process for slaves (one block serves several key_IDs that arrive one by one).
_BLOCK_CACHE = 256
#: Largest key the key_ID can describe: 1023 bytes.
MAX_KEY_BITS = ((1 << _SIZE_FIELD_BITS) - 1) * 8

_PARAMETER_NAMES = frozenset(f.name for f in dataclasses.fields(LinkParameters))


@dataclass(frozen=True)
class LinkFile:
    """The contents of a link file.  ``repr`` never shows the seed."""

    #: The shared secret seed of the link (32 bytes).
    seed: bytes = field(repr=False)
    #: The simulated link's parameters.
    params: LinkParameters

    @property
    def fingerprint(self) -> str:
        """A public 16-hex-digit fingerprint of the seed, to check that two ends hold the same link."""
        return hashlib.sha256(_FINGERPRINT_LABEL + self.seed).hexdigest()[:16]


def _encode_link_file(link: LinkFile) -> bytes:
    document = {
        "type": LINK_FILE_TYPE,
        "version": _VERSION,
        "seed": base64.b64encode(link.seed).decode("ascii"),
        "parameters": dataclasses.asdict(link.params),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _parse_link_file(path: str | os.PathLike[str], data: bytes) -> LinkFile:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"QKD link file {path} {what}; recreate it with 'hybridkex qkd-link init' "
                           f"and copy it to both ends")

    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("is not valid JSON") from None
    if not isinstance(document, dict) or document.get("type") != LINK_FILE_TYPE:
        raise bad(f"is not a simulated QKD link file (no \"type\": \"{LINK_FILE_TYPE}\")")
    if document.get("version") != _VERSION:
        raise bad(f"has unsupported version {document.get('version')!r} (this hybridkex reads version {_VERSION})")
    seed_text = document.get("seed")
    try:
        if not isinstance(seed_text, str):
            raise ValueError
        seed = base64.b64decode(seed_text, validate=True)
    except (ValueError, binascii.Error):
        raise bad("has no valid base64 \"seed\"") from None
    if len(seed) != _SEED_BYTES:
        raise bad(f"has a {len(seed)}-byte seed where {_SEED_BYTES} bytes are expected")
    raw_params = document.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise bad("has a \"parameters\" entry that is not an object")
    unknown = sorted(set(raw_params) - _PARAMETER_NAMES)
    if unknown:
        raise bad(f"has unknown parameters {', '.join(unknown)}")
    try:
        params = LinkParameters(**raw_params)
    except ValueError as exc:
        raise bad(f"has bad parameters: {exc}") from None
    return LinkFile(seed=seed, params=params)


def init_link_file(path: str | os.PathLike[str], params: LinkParameters | None = None, force: bool = False, *,
                   rng: Callable[[int], bytes] = os.urandom) -> LinkFile:
    """Create a link file with a fresh random seed (mode 0600); refuse to overwrite unless ``force``."""
    link = LinkFile(seed=rng(_SEED_BYTES), params=params if params is not None else LinkParameters())
    atomic_write(path, _encode_link_file(link), overwrite=force)
    return link


def load_link_file(path: str | os.PathLike[str]) -> LinkFile:
    """Read a link file; :class:`~hybridkex.ConfigError` if it is missing, garbled or readable by others."""
    return _parse_link_file(path, read_secret_file(path, "QKD link file"))


def update_link_file(path: str | os.PathLike[str], **changes: Any) -> LinkFile:
    """Change some parameters of a link file (e.g. ``eve=1.0`` to tap the link), keeping its seed."""
    unknown = sorted(set(changes) - _PARAMETER_NAMES)
    if unknown:
        raise ValueError(f"unknown link parameters: {', '.join(unknown)}")
    with locked(path):
        link = load_link_file(path)
        link = dataclasses.replace(link, params=dataclasses.replace(link.params, **changes))
        atomic_write(path, _encode_link_file(link))
    return link


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


class SimulatedLinkSource(QKDKeySource):
    """A :class:`QKDKeySource` over the simulated BB84 link in a link file.

    ``params_override`` replaces the file's parameters at this end only (key_IDs are bound to
    the parameters, so the other end then refuses them).  ``consumed_path`` is the slave's
    record of used key_IDs (default: the link path + ".consumed").  ``rng`` draws the block
    indices.

    Errors: an aborted block (QBER too high, nothing left after privacy amplification) raises
    :class:`~hybridkex.QKDUnavailable`; a key_ID this link did not issue raises
    :class:`~hybridkex.QKDUnavailable`; a key_ID already consumed raises
    :class:`~hybridkex.QKDKeyReplay`.  Keys are consumed when fetched, as ETSI GS QKD 014
    dec_keys does: a failed handshake does not give its key back.
    """

    kind = "sim"

    def __init__(self, link_path: str | os.PathLike[str], *, params_override: LinkParameters | None = None,
                 consumed_path: str | os.PathLike[str] | None = None,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        link = _load_link_cached(link_path)
        self._params = params_override if params_override is not None else link.params
        self._seed = link.seed
        with _CACHE_LOCK:
            prepared = _PREPARED.get((self._seed, self._params))
        if prepared is None:
            prepared = (BB84Link(self._params, link.seed),
                        json.dumps(dataclasses.asdict(self._params), sort_keys=True).encode("ascii"))
            with _CACHE_LOCK:
                _PREPARED[(self._seed, self._params)] = prepared
        self._link, self._params_bytes = prepared
        self._consumed_path = Path(f"{os.fspath(link_path)}.consumed" if consumed_path is None else consumed_path)
        self._rng = rng
        # What this process has read of the journal (shared by every source on it: a source is
        # opened per handshake, and re-reading a long journal each time would cost O(keys)).
        with _CACHE_LOCK:
            self._j = _JOURNALS.setdefault(os.path.abspath(self._consumed_path), _JournalState())

    def __repr__(self) -> str:
        return f"SimulatedLinkSource({self.describe()!r}, consumed_path={str(self._consumed_path)!r})"

    @property
    def link(self) -> BB84Link:
        """The underlying :class:`BB84Link`."""
        return self._link

    def describe(self) -> str:
        return (f"sim (BB84, channel error {self._params.channel_error:.1%}, "
                f"eve {_percent(self._params.eve)})")

    # -- key_ID codec ----------------------------------------------------------------------

    def _tag(self, index: int, offset: int, size_bytes: int) -> int:
        message = (_KEY_ID_LABEL + index.to_bytes(8, "big") + offset.to_bytes(2, "big") + size_bytes.to_bytes(2, "big")
                   + self._params_bytes)
        return int.from_bytes(hmac.new(self._seed, message, hashlib.sha256).digest()[:_TAG_BITS // 8], "big")

    def _key_id(self, index: int, offset: int, size_bytes: int) -> uuid.UUID:
        payload = (((((index << _OFFSET_FIELD_BITS) | offset // _OFFSET_UNIT) << _SIZE_FIELD_BITS) | size_bytes)
                   << _TAG_BITS) | self._tag(index, offset, size_bytes)
        # RFC 9562 §5.8: custom_a (48) | ver=8 (4) | custom_b (12) | var=0b10 (2) | custom_c (62)
        value = ((payload >> 74) << 80) | (0x8 << 76) | (((payload >> 62) & 0xFFF) << 64) \
            | (0b10 << 62) | (payload & ((1 << 62) - 1))
        return uuid.UUID(int=value)

    def _parse_key_id(self, key_id: uuid.UUID) -> tuple[int, int, int]:
        if not isinstance(key_id, uuid.UUID):
            raise TypeError(f"QKD key_IDs must be uuid.UUID, not {type(key_id).__name__}")
        value = key_id.int
        payload = ((value >> 80) << 74) | (((value >> 64) & 0xFFF) << 62) | (value & ((1 << 62) - 1))
        tag = payload & ((1 << _TAG_BITS) - 1)
        size_bytes = (payload >> _TAG_BITS) & ((1 << _SIZE_FIELD_BITS) - 1)
        offset = ((payload >> (_TAG_BITS + _SIZE_FIELD_BITS)) & ((1 << _OFFSET_FIELD_BITS) - 1)) * _OFFSET_UNIT
        index = payload >> (_TAG_BITS + _SIZE_FIELD_BITS + _OFFSET_FIELD_BITS)
        if (key_id.version != 8 or key_id.variant != uuid.RFC_4122 or size_bytes == 0
                or not hmac.compare_digest(tag.to_bytes(6, "big"),
                                           self._tag(index, offset, size_bytes).to_bytes(6, "big"))):
            raise QKDUnavailable(
                f"QKD key_ID {key_id} was not issued by this simulated link: forged, or the peer's link file "
                f"has a different seed or parameters; compare 'hybridkex qkd-link show' on both ends")
        return index, offset, size_bytes

    # -- keys ------------------------------------------------------------------------------

    def _block_key(self, index: int) -> bytes:
        """The final key of block ``index`` (cached per process); QKDUnavailable (with the QBER) if it aborted."""
        cache_key = (self._seed, self._params_bytes, index)
        with _CACHE_LOCK:
            cached = _BLOCKS.get(cache_key)
            if cached is not None:
                _BLOCKS.move_to_end(cache_key)
        if cached is None:
            block = self._link.block(index)
            if block.aborted:
                raise QKDUnavailable(f"simulated QKD link aborted: {block.reason}; no QKD key")
            cached = block.key
            with _CACHE_LOCK:
                _BLOCKS[cache_key] = cached
                while len(_BLOCKS) > _BLOCK_CACHE:
                    _BLOCKS.popitem(last=False)
        return cached

    def _material(self, index: int, offset: int, size_bytes: int) -> tuple[bytes, list[tuple[int, int, int]]]:
        """The key at (index, offset, size) and the byte ranges (block, start, end) it covers."""
        key = b""
        ranges: list[tuple[int, int, int]] = []
        block_index, start = index, offset
        while len(key) < size_bytes:
            block = self._block_key(block_index)
            end = min(len(block), start + size_bytes - len(key))
            if end > start:
                key += block[start:end]
                ranges.append((block_index, start, end))
            block_index, start = (block_index + 1) & _INDEX_MASK, 0
        return key, ranges

    def _reserve(self, size_bytes: int) -> tuple[int, int]:
        """Master: (index, offset) of ``size_bytes`` of never-issued key material (caller holds the allocator)."""
        state = _ALLOCATORS.setdefault((os.fspath(self._consumed_path), self._seed, self._params_bytes), [0, 0, 0])
        index, offset, length = state
        if length and offset + size_bytes <= length:
            state[1] = -(-(offset + size_bytes) // _OFFSET_UNIT) * _OFFSET_UNIT
            if state[1] >= (1 << _OFFSET_FIELD_BITS) * _OFFSET_UNIT:
                state[2] = 0  # the offset field is full: the rest of the block is never used
            return index, offset
        for _ in range(64):
            index = int.from_bytes(self._rng(8), "big") & _INDEX_MASK
            # Blocks this key needs: the first, and more if it is longer than one block.
            blocks, total = [index], len(self._block_key(index))
            while total < size_bytes:
                blocks.append((blocks[-1] + 1) & _INDEX_MASK)
                total += len(self._block_key(blocks[-1]))
            with self._j.lock, locked(self._consumed_path):
                self._catch_up_consumed()
                if any(b in self._j.reserved or b in self._j.ranges for b in blocks):
                    continue  # this end used that block already: draw again
                self._append_journal([f"R {b:x}" for b in blocks])
            length = len(self._block_key(index)) if len(blocks) == 1 else 0
            state[:] = [index, -(-size_bytes // _OFFSET_UNIT) * _OFFSET_UNIT, length]
            if state[1] >= min(length, (1 << _OFFSET_FIELD_BITS) * _OFFSET_UNIT):
                state[2] = 0
            return index, 0
        raise QKDUnavailable("the simulated QKD link found no unused block in 64 draws; its journal "
                             f"{self._consumed_path} is damaged or the rng is broken")

    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"number of keys must be a positive integer, not {number!r}")
        if (isinstance(size_bits, bool) or not isinstance(size_bits, int) or size_bits <= 0 or size_bits % 8
                or size_bits > MAX_KEY_BITS):
            raise ValueError(f"key size must be a multiple of 8 bits from 8 to {MAX_KEY_BITS}, not {size_bits!r}")
        size_bytes = size_bits // 8
        keys = []
        with _ALLOCATOR_LOCK:
            for _ in range(number):
                index, offset = self._reserve(size_bytes)
                key, _ = self._material(index, offset, size_bytes)
                keys.append(QKDKey(key_id=self._key_id(index, offset, size_bytes), key=key))
        return keys

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        parsed = [(key_id, *self._parse_key_id(key_id)) for key_id in key_ids]
        if len({key_id for key_id, _, _, _ in parsed}) != len(parsed):
            raise QKDKeyReplay("the same QKD key_ID was asked for twice in one request; "
                               "a replayed or duplicated handshake")
        material = [(key_id, *self._material(index, offset, size)) for key_id, index, offset, size in parsed]
        with self._j.lock, locked(self._consumed_path):
            self._catch_up_consumed()
            claimed: dict[int, list[tuple[int, int]]] = {}
            for key_id, _, ranges in material:
                if str(key_id) in self._j.seen:
                    raise QKDKeyReplay(f"QKD key_ID {key_id} was already used; a replayed or duplicated handshake")
                for block, start, end in ranges:
                    for taken in (self._j.ranges.get(block, []), claimed.get(block, [])):
                        if any(start < e and s < end for s, e in taken):
                            raise QKDKeyReplay(f"QKD key_ID {key_id} covers key material already used by another "
                                               "key_ID; a replayed or forged handshake")
                    claimed.setdefault(block, []).append((start, end))
            self._append_journal([f"K {key_id} " + ",".join(f"{b:x}:{s}-{e}" for b, s, e in ranges)
                                  for key_id, _, ranges in material])
        return [QKDKey(key_id=key_id, key=key) for key_id, key, _ in material]

    # -- consumed-ID state file ------------------------------------------------------------

    # The record is a journal: a header line, then one line per event, appended and fsynced
    # under the lock: "R <block>" (a master reserved a block) and "K <key_ID> <block>:<start>-<end>,..."
    # (a slave consumed a key_ID and those bytes); a v1 journal's bare key_ID lines still count
    # as consumed key_IDs.  Each source reads only what was appended since it last looked, so the
    # cost per key stays constant however many keys the link has delivered.  A line cut short by a
    # crash was never acknowledged (its key was not handed out) and is dropped.

    def _damaged(self) -> ConfigError:
        return ConfigError(
            f"the consumed QKD key_ID file {self._consumed_path} is damaged; it guards against replayed "
            "key_IDs, so restore it, or create a new link with 'hybridkex qkd-link init --force' and delete it")

    def _forget(self) -> None:
        self._j.seen, self._j.ranges, self._j.reserved, self._j.offset, self._j.inode = set(), {}, set(), 0, 0

    def _read_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "R":
            self._j.reserved.add(int(rest, 16))
        elif kind == "K":
            key_id, _, ranges = rest.partition(" ")
            self._j.seen.add(str(uuid.UUID(key_id)))
            for item in ranges.split(","):
                block, _, span = item.partition(":")
                start, _, end = span.partition("-")
                self._j.ranges.setdefault(int(block, 16), []).append((int(start), int(end)))
        else:
            self._j.seen.add(str(uuid.UUID(line)))

    def _catch_up_consumed(self) -> None:
        path = self._consumed_path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if st.st_ino != self._j.inode or st.st_size < self._j.offset:
                    self._forget()  # replaced or cut by someone else: read it again from the start
                    self._j.inode = st.st_ino
                data = os.pread(fd, st.st_size - self._j.offset, self._j.offset) if st.st_size > self._j.offset \
                    else b""
            finally:
                os.close(fd)
        except FileNotFoundError:
            self._forget()
            return
        except OSError as exc:
            raise ConfigError(f"cannot read the consumed QKD key_ID file {path}: {exc.strerror}") from None
        complete = data[:data.rfind(b"\n") + 1]
        lines = complete.decode("ascii", "replace").splitlines()
        if self._j.offset == 0:
            if not lines or lines[0] not in _CONSUMED_HEADERS:
                raise self._damaged()
            lines = lines[1:]
        for line in lines:
            try:
                self._read_line(line)
            except ValueError:
                raise self._damaged() from None
        self._j.offset += len(complete)
        if len(complete) != len(data):  # a torn last line: cut it off before appending
            os.truncate(path, self._j.offset)

    def _append_journal(self, lines: list[str]) -> None:
        path = self._consumed_path
        if self._j.offset == 0:
            header = (_CONSUMED_HEADER + "\n").encode("ascii")
            atomic_write(path, header)
            self._j.offset = len(header)
            self._j.inode = os.stat(path).st_ino
        data = "".join(f"{line}\n" for line in lines).encode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for line in lines:
            self._read_line(line)
        self._j.offset += len(data)


def _load_link_cached(path: str | os.PathLike[str]) -> LinkFile:
    """:func:`load_link_file`, parsed once per process while the file stays the same (a source is opened per
    handshake).  A changed file (content, inode or mode) is read and checked again."""
    try:
        st = os.stat(path)
    except OSError:
        return load_link_file(path)  # says what is wrong
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
    with _CACHE_LOCK:
        cached = _LINKS.get(key)
    if cached is None or st.st_mode & 0o077:
        cached = load_link_file(path)
        with _CACHE_LOCK:
            if len(_LINKS) > 64:
                _LINKS.clear()
            _LINKS[key] = cached
    return cached


class _JournalState:
    """What this process has read of one journal (guarded by ``lock`` and, across processes, the file lock)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.seen: set[str] = set()
        self.ranges: dict[int, list[tuple[int, int]]] = {}
        self.reserved: set[int] = set()
        self.offset = 0
        self.inode = 0


_JOURNALS: dict[str, _JournalState] = {}
_LINKS: dict[tuple[str, int, int, int, int], LinkFile] = {}
_PREPARED: dict[tuple[bytes, LinkParameters], tuple[BB84Link, bytes]] = {}

#: Per process: computed block keys (slaves get a block's key_IDs one by one) and each master's
#: current block -- (journal, seed, parameters) -> [index, next offset, block length or 0 when used up].
_BLOCKS: OrderedDict[tuple[bytes, bytes, int], bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_ALLOCATORS: dict[tuple[str, bytes, bytes], list[int]] = {}
_ALLOCATOR_LOCK = threading.RLock()
