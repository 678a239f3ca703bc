"""The simulated QKD link as a key source (``--qkd sim``).

Both ends hold a copy of one *link file*: a 32-byte seed and the :class:`LinkParameters`.
The seed stands for everything the two QKD devices share through the quantum channel and
the authenticated classical channel, so each end can run the same BB84 block by itself
and get the same key -- or the same abort, when the parameters put an eavesdropper on the
link.  The file is secret (whoever holds it can compute every key): created 0600 and
refused when group or others can read it.

Master SAE (``get_new_keys``) picks a fresh random 64-bit block index per key and sends
only the key_ID; slave SAE (``get_keys_by_id``) recovers the index from the key_ID,
recomputes the block and records the key_ID as consumed (ETSI GS QKD 014 §5.3: a key is
delivered once), so a replayed handshake cannot get the same QKD key twice.

key_ID layout (an RFC 9562 version-8 UUID, 122 payload bits)::

    block index (64) | key size in bytes (10) | tag (48)

where tag = HMAC-SHA256(seed, label || index || size || parameters) truncated to 48 bits.
A key_ID that fails the tag was forged, garbled, or made with another seed or other
parameters; the slave refuses it with :class:`~hybridkex.QKDUnavailable` before touching
any state.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ConfigError, QKDKeyReplay, QKDUnavailable
from .._files import atomic_write, locked, read_secret_file
from ._bb84 import BB84Link, LinkParameters
from ._source import QKD_KEY_BYTES, QKDKey, QKDKeySource

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
_CONSUMED_HEADER = f"{CONSUMED_FILE_TYPE} v1"
_VERSION = 1
_SEED_BYTES = 32

#: Domain labels: the key_ID tag and the public fingerprint of a link seed.
_KEY_ID_LABEL = b"hybridkex qkd-sim key_ID v1"
_FINGERPRINT_LABEL = b"hybridkex qkd-sim link fingerprint v1"

_TAG_BITS = 48
_SIZE_FIELD_BITS = 10
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
        link = load_link_file(link_path)
        self._params = params_override if params_override is not None else link.params
        self._link = BB84Link(self._params, link.seed)
        self._seed = link.seed
        self._params_bytes = json.dumps(dataclasses.asdict(self._params), sort_keys=True).encode("ascii")
        self._consumed_path = Path(f"{os.fspath(link_path)}.consumed" if consumed_path is None else consumed_path)
        self._rng = rng
        # What this object has read of the consumed-ID journal: the IDs and the byte offset.
        self._seen: set[str] = set()
        self._journal_offset = 0

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

    def _tag(self, index: int, size_bytes: int) -> int:
        message = _KEY_ID_LABEL + index.to_bytes(8, "big") + size_bytes.to_bytes(2, "big") + self._params_bytes
        return int.from_bytes(hmac.new(self._seed, message, hashlib.sha256).digest()[:_TAG_BITS // 8], "big")

    def _key_id(self, index: int, size_bytes: int) -> uuid.UUID:
        payload = (((index << _SIZE_FIELD_BITS) | size_bytes) << _TAG_BITS) | self._tag(index, size_bytes)
        # RFC 9562 §5.8: custom_a (48) | ver=8 (4) | custom_b (12) | var=0b10 (2) | custom_c (62)
        value = ((payload >> 74) << 80) | (0x8 << 76) | (((payload >> 62) & 0xFFF) << 64) \
            | (0b10 << 62) | (payload & ((1 << 62) - 1))
        return uuid.UUID(int=value)

    def _parse_key_id(self, key_id: uuid.UUID) -> tuple[int, int]:
        if not isinstance(key_id, uuid.UUID):
            raise TypeError(f"QKD key_IDs must be uuid.UUID, not {type(key_id).__name__}")
        value = key_id.int
        payload = ((value >> 80) << 74) | (((value >> 64) & 0xFFF) << 62) | (value & ((1 << 62) - 1))
        tag = payload & ((1 << _TAG_BITS) - 1)
        size_bytes = (payload >> _TAG_BITS) & ((1 << _SIZE_FIELD_BITS) - 1)
        index = payload >> (_TAG_BITS + _SIZE_FIELD_BITS)
        if (key_id.version != 8 or key_id.variant != uuid.RFC_4122 or size_bytes == 0
                or not hmac.compare_digest(tag.to_bytes(6, "big"), self._tag(index, size_bytes).to_bytes(6, "big"))):
            raise QKDUnavailable(
                f"QKD key_ID {key_id} was not issued by this simulated link: forged, or the peer's link file "
                f"has a different seed or parameters; compare 'hybridkex qkd-link show' on both ends")
        return index, size_bytes

    # -- keys ------------------------------------------------------------------------------

    def _key(self, index: int, size_bytes: int) -> bytes:
        """Concatenate the final keys of blocks index, index+1, ... (mod 2**64) up to ``size_bytes``."""
        key = b""
        block_index = index
        while len(key) < size_bytes:
            block = self._link.block(block_index)
            if block.aborted:
                raise QKDUnavailable(f"simulated QKD link aborted: {block.reason}; no QKD key")
            key += block.key
            block_index = (block_index + 1) & ((1 << 64) - 1)
        return key[:size_bytes]

    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"number of keys must be a positive integer, not {number!r}")
        if (isinstance(size_bits, bool) or not isinstance(size_bits, int) or size_bits <= 0 or size_bits % 8
                or size_bits > MAX_KEY_BITS):
            raise ValueError(f"key size must be a multiple of 8 bits from 8 to {MAX_KEY_BITS}, not {size_bits!r}")
        size_bytes = size_bits // 8
        keys = []
        for _ in range(number):
            # A fresh random index per key: no master-side state, and two 64-bit draws collide
            # with probability ~2**-64 per pair.
            index = int.from_bytes(self._rng(8), "big")
            keys.append(QKDKey(key_id=self._key_id(index, size_bytes), key=self._key(index, size_bytes)))
        return keys

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        parsed = [(key_id, *self._parse_key_id(key_id)) for key_id in key_ids]
        if len({key_id for key_id, _, _ in parsed}) != len(parsed):
            raise QKDKeyReplay("the same QKD key_ID was asked for twice in one request; "
                               "a replayed or duplicated handshake")
        with locked(self._consumed_path):
            self._catch_up_consumed()
            for key_id, _, _ in parsed:
                if str(key_id) in self._seen:
                    raise QKDKeyReplay(f"QKD key_ID {key_id} was already used; a replayed or duplicated handshake")
            keys = [QKDKey(key_id=key_id, key=self._key(index, size)) for key_id, index, size in parsed]
            self._append_consumed([str(key_id) for key_id, _, _ in parsed])
        return keys

    # -- consumed-ID state file ------------------------------------------------------------

    # The record is a journal: a header line, then one key_ID per line, appended and fsynced
    # under the lock.  Each source reads only what was appended since it last looked, so the
    # cost per key stays constant however many keys the link has delivered.  A line cut short
    # by a crash was never acknowledged (its key was not handed out) and is dropped.

    def _damaged(self) -> ConfigError:
        return ConfigError(
            f"the consumed QKD key_ID file {self._consumed_path} is damaged; it guards against replayed "
            "key_IDs, so restore it, or create a new link with 'hybridkex qkd-link init --force' and delete it")

    def _catch_up_consumed(self) -> None:
        path = self._consumed_path
        try:
            with open(path, "rb") as fh:
                fh.seek(self._journal_offset)
                data = fh.read()
        except FileNotFoundError:
            self._seen, self._journal_offset = set(), 0
            return
        except OSError as exc:
            raise ConfigError(f"cannot read the consumed QKD key_ID file {path}: {exc.strerror}") from None
        complete = data[:data.rfind(b"\n") + 1]
        lines = complete.decode("ascii", "replace").splitlines()
        if self._journal_offset == 0:
            if not lines or lines[0] != _CONSUMED_HEADER:
                raise self._damaged()
            lines = lines[1:]
        for line in lines:
            try:
                self._seen.add(str(uuid.UUID(line)))
            except ValueError:
                raise self._damaged() from None
        self._journal_offset += len(complete)
        if len(complete) != len(data):  # a torn last line: cut it off before appending
            os.truncate(path, self._journal_offset)

    def _append_consumed(self, ids: list[str]) -> None:
        path = self._consumed_path
        if self._journal_offset == 0:
            header = (_CONSUMED_HEADER + "\n").encode("ascii")
            atomic_write(path, header)
            self._journal_offset = len(header)
        data = "".join(f"{i}\n" for i in ids).encode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seen.update(ids)
        self._journal_offset += len(data)
