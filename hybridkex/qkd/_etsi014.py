"""ETSI GS QKD 014 V1.1.1 client: keys from a KME over HTTPS with mutual TLS.

The three methods of ETSI GS QKD 014 §5 (table in §5.1), all under ``{kme}/api/v1/keys``:

==========================  ===================================  ================================
§5.2 Get status             ``GET {slave_SAE_ID}/status``        Status (§6.1)
§5.3 Get key                ``POST|GET {slave_SAE_ID}/enc_keys`` Key request (§6.2) -> Key container (§6.3)
§5.4 Get key with key IDs   ``POST|GET {master_SAE_ID}/dec_keys`` Key IDs (§6.4) -> Key container (§6.3)
==========================  ===================================  ================================

Errors are 400 (bad request), 401 (unauthorized) and 503 (server-side error), each with an
Error body ``{"message": ..., "details": [...]}`` (§6.5).  Key sizes are in bits.

This module splits the wire rules from the I/O: :func:`parse_status` and
:func:`parse_key_container` are pure functions that check everything a KME sends back
(canonical UUID key_IDs, canonical base64, the exact number and size of keys asked for,
the exact key_IDs asked for, no duplicates) and :class:`Etsi014Client` is a thin blocking
adapter over ``http.client`` that keeps one connection alive.  A KME that answers with
anything else is reported as :class:`KMEResponseError`; no key from such an answer is ever
returned.

Key material never appears in logs, ``repr`` or exception text.

Mapping of KME errors:

* 400/401/503 and any other non-200 status -> :class:`hybridkex.KMEError` (``status``,
  ``kme_message``, ``details``), after up to ``retries`` retries with exponential backoff
  for 503 (the KME's key pool may refill).
* a 400 to ``dec_keys`` whose message says the key_ID was already consumed/used/delivered
  -> :class:`KMEKeyReplay`, a :class:`hybridkex.QKDKeyReplay` (ETSI 014 does not define a
  code for this, so the client reads the KME's message; the simulator words it so).
* KME unreachable, TLS failure, timeout -> :class:`hybridkex.QKDUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

from .._errors import ConfigError, KMEAnswer, KMEError, QKDKeyReplay, QKDUnavailable
from ..io._backoff import Backoff
from ..io._files import check_not_world_readable
from ..protocol._qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource
from ._registry import QKDSourceKind

if TYPE_CHECKING:
    from .._config import ExchangeSettings

__all__ = [
    "API_PREFIX",
    "parse_key_id",
    "Etsi014Client",
    "KMEStatus",
    "KeyContainer",
    "KMEResponseError",
    "KMEKeyReplay",
    "parse_status",
    "parse_key_container",
    "parse_error_body",
]

_log = logging.getLogger("hybridkex.qkd.etsi014")

#: Path prefix of every ETSI GS QKD 014 method (§5.1).
API_PREFIX = "/api/v1/keys"

# The largest answer we read: max_key_per_request keys of max_key_size bits fit easily.
_MAX_BODY = 4 << 20
# A message from the KME is shown to people; keep it short and printable.
_MAX_SHOWN = 300
# How a KME says a key_ID was consumed before (no status code for it in ETSI 014 §5.4).
_REPLAY_RE = re.compile(r"\b(consumed|already\s+(been\s+)?(used|delivered|retrieved|fetched|consumed))\b", re.I)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_key_id(text: object) -> uuid.UUID | None:
    """An ETSI GS QKD 014 §6.3 key_ID (a UUID in its canonical 8-4-4-4-12 text form), or None."""
    return uuid.UUID(text) if isinstance(text, str) and _UUID_RE.fullmatch(text) else None


class KMEResponseError(KMEError):
    """The KME answered 200 with something ETSI GS QKD 014 §6 does not allow, or that does not
    match the request (wrong number, size or key_IDs, duplicates, malformed JSON or base64).
    No key from such an answer is used."""


class KMEKeyReplay(KMEAnswer, QKDKeyReplay):
    """The KME refused a key_ID because it was already delivered (ETSI GS QKD 014 §5.4: each key
    is delivered once).  Carries the KME's answer like :class:`hybridkex.KMEError`."""


@dataclass(frozen=True)
class KMEStatus:
    """ETSI GS QKD 014 §6.1 Status: what a KME says about the key it shares for one SAE pair."""

    #: KME ID of the KME answering (the master SAE's KME)
    source_kme_id: str
    #: KME ID of the KME serving the slave SAE
    target_kme_id: str
    #: SAE ID of the caller (the master SAE)
    master_sae_id: str
    #: SAE ID of the slave SAE named in the URL
    slave_sae_id: str
    #: default key size in bits
    key_size: int
    #: number of keys of ``key_size`` bits stored for this SAE pair
    stored_key_count: int
    #: maximum number of keys the KME can store for this pair
    max_key_count: int
    #: maximum ``number`` in one key request
    max_key_per_request: int
    #: maximum key size in bits
    max_key_size: int
    #: minimum key size in bits
    min_key_size: int
    #: maximum number of additional slave SAEs in one request (0: no key multicast)
    max_sae_id_count: int
    #: vendor extension object, if any
    status_extension: object = None


@dataclass(frozen=True)
class KeyContainer:
    """ETSI GS QKD 014 §6.3 Key container: keys with their key_IDs, in the order of the request
    for dec_keys.  Per-key extensions are not kept."""

    keys: tuple[QKDKey, ...]
    #: vendor extension object, if any
    key_container_extension: object = None


# -- pure wire rules ---------------------------------------------------------------------------

def _shown(text: object) -> str:
    """Printable, bounded rendering of a value the KME sent (never key material)."""
    s = text if isinstance(text, str) else json.dumps(text, separators=(",", ":"), default=str)
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    return s if len(s) <= _MAX_SHOWN else s[: _MAX_SHOWN - 3] + "..."


def _strict_json(data: bytes) -> object:
    """Decode JSON, refusing duplicate member names and NaN/Infinity (a lying KME's tools)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"duplicate member {k!r}")
            out[k] = v
        return out

    def constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)


def _int_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {_shown(value)}")
    return value


def _str_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {_shown(value)}")
    return value


def parse_status(obj: object) -> KMEStatus:
    """Check and convert an ETSI GS QKD 014 §6.1 Status object.  Raises ``ValueError``."""
    if not isinstance(obj, dict):
        raise ValueError("the status is not a JSON object")
    status = KMEStatus(
        source_kme_id=_str_field(obj, "source_KME_ID"),
        target_kme_id=_str_field(obj, "target_KME_ID"),
        master_sae_id=_str_field(obj, "master_SAE_ID"),
        slave_sae_id=_str_field(obj, "slave_SAE_ID"),
        key_size=_int_field(obj, "key_size"),
        stored_key_count=_int_field(obj, "stored_key_count"),
        max_key_count=_int_field(obj, "max_key_count"),
        max_key_per_request=_int_field(obj, "max_key_per_request"),
        max_key_size=_int_field(obj, "max_key_size"),
        min_key_size=_int_field(obj, "min_key_size"),
        max_sae_id_count=_int_field(obj, "max_SAE_ID_count"),
        status_extension=obj.get("status_extension"),
    )
    if not 0 < status.min_key_size <= status.key_size <= status.max_key_size:
        raise ValueError(f"key sizes are inconsistent: min_key_size {status.min_key_size}, "
                         f"key_size {status.key_size}, max_key_size {status.max_key_size}")
    return status


def _parse_key_id(value: object, index: int) -> uuid.UUID:
    key_id = parse_key_id(value)
    if key_id is None:
        raise ValueError(f"key {index}: key_ID {_shown(value)} is not a UUID")
    return key_id


def _parse_key(value: object, index: int) -> bytes:
    # ETSI GS QKD 014 §6.3: key is the key material in base64 (RFC 4648 §4, padded).
    if not isinstance(value, str) or not value.isascii():
        raise ValueError(f"key {index}: key is not a base64 string")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {index}: key is not valid base64") from None
    if base64.b64encode(key).decode("ascii") != value:
        raise ValueError(f"key {index}: key is not canonical base64")
    if not key:
        raise ValueError(f"key {index}: key is empty")
    return key


def parse_key_container(obj: object, *, number: int | None = None, size_bits: int | None = None,
                        key_ids: Sequence[uuid.UUID] | None = None) -> KeyContainer:
    """Check and convert an ETSI GS QKD 014 §6.3 Key container against the request.

    ``number``: keys asked for (enc_keys); ``size_bits``: size asked for (``None``: the
    KME's default, so only "all keys the same size" is checked); ``key_ids``: the key_IDs
    asked for (dec_keys) -- the answer must hold exactly these, and keys are returned in
    this order.  Raises ``ValueError`` naming the first problem found, never a key.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
        raise ValueError('the answer is not a key container {"keys": [...]}')
    entries: list[Any] = obj["keys"]
    expected = len(key_ids) if key_ids is not None else number
    if expected is not None and len(entries) != expected:
        raise ValueError(f"the KME sent {len(entries)} keys, {expected} were requested")
    if not entries:
        raise ValueError("the KME sent no keys")
    keys: dict[uuid.UUID, bytes] = {}
    seen_material: set[bytes] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"key {i}: not a JSON object")
        key_id = _parse_key_id(entry.get("key_ID"), i)
        key = _parse_key(entry.get("key"), i)
        if key_id in keys:
            raise ValueError(f"key {i}: key_ID {key_id} appears twice")
        if size_bits is not None and len(key) * 8 != size_bits:
            raise ValueError(f"key {i}: {len(key) * 8} bits, {size_bits} were requested")
        if size_bits is None and keys and len(key) != len(next(iter(keys.values()))):
            raise ValueError(f"key {i}: its size differs from the other keys'")
        # Two equal keys of 128 bits or more are no accident: the KME is broken or lying.
        if len(key) >= 16:
            if key in seen_material:
                raise ValueError(f"key {i}: same key material as an earlier key")
            seen_material.add(key)
        keys[key_id] = key
    if key_ids is not None:
        missing = [str(k) for k in key_ids if k not in keys]
        if missing or len(set(key_ids)) != len(keys):
            raise ValueError(f"the KME sent other key_IDs than requested (missing {', '.join(missing) or 'none'})")
        ordered = tuple(QKDKey(k, keys[k]) for k in key_ids)
    else:
        ordered = tuple(QKDKey(k, v) for k, v in keys.items())
    return KeyContainer(ordered, obj.get("key_container_extension"))


def parse_error_body(data: bytes) -> tuple[str | None, object]:
    """Return (message, details) of an ETSI GS QKD 014 §6.5 Error body, or (None, None)."""
    try:
        obj = _strict_json(data)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    message = obj.get("message")
    return (message if isinstance(message, str) else None), obj.get("details")


# -- the blocking adapter ------------------------------------------------------------------------

_ADVICE: dict[int | tuple[int, str], str] = {
    (400, "dec_keys"): "check the key_IDs: each is fetched once, by the slave SAE, at its own KME, naming the "
                       "master SAE that fetched it",
    400: "check the request against the KME's status (key size a multiple of 8 within "
         "min_key_size..max_key_size, number <= max_key_per_request)",
    401: "check that the SAE certificate belongs to this SAE and that the peer SAE ID is one "
         "this KME links to",
    503: "retry later, when the KME's QKD link has refilled its pool, or have the link checked",
}


class Etsi014Client(QKDKeySource):
    """ETSI GS QKD 014 client for one SAE and one peer SAE (kind ``etsi014``).

    As master SAE it fetches new keys for slave ``peer_sae_id`` (``enc_keys``, §5.3); as
    slave SAE it fetches keys by key_ID from master ``peer_sae_id`` (``dec_keys``, §5.4).

    ``kme_url`` is the KME's base URL (``https://host:port``, optionally with a path prefix
    in front of ``/api/v1``).  ``ca`` verifies the KME's certificate, hostname included;
    ``sae_cert``/``sae_key`` are this SAE's client certificate and key (mutual TLS; the key
    file must not be group/world readable).  ``http://`` is refused unless
    ``insecure_http=True``, which exists for local simulators only.

    One connection is kept alive and reused; calls from several threads are serialised.
    ``timeout`` bounds each connect and read (seconds); a 503 is retried ``retries`` times
    with exponential backoff from ``backoff`` seconds, capped at ``max_backoff`` (and at a
    ``Retry-After`` the KME sends, within the same cap).
    """

    kind = "etsi014"

    def __init__(self, kme_url: str, *, ca: str | os.PathLike[str] | None,
                 sae_cert: str | os.PathLike[str] | None, sae_key: str | os.PathLike[str] | None,
                 sae_id: str, peer_sae_id: str, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.1, max_backoff: float = 2.0, insecure_http: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(sae_id, str) or not sae_id or not isinstance(peer_sae_id, str) or not peer_sae_id:
            raise ConfigError("sae_id and peer_sae_id must be non-empty strings; give both SAE IDs")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ConfigError("timeout must be > 0 and retries, backoff, max_backoff >= 0; fix the options")
        parts = urllib.parse.urlsplit(kme_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"KME URL {kme_url!r} is not an https:// URL with a host; "
                              f"give it as https://HOST:PORT")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"KME URL {kme_url!r} must not carry a query, fragment or user; "
                              f"give only https://HOST:PORT[/prefix]")
        if parts.scheme == "http" and not insecure_http:
            raise ConfigError(
                f"refusing plain http:// KME URL {kme_url}: QKD keys must travel over HTTPS with mutual TLS; "
                f"use https://, or pass the insecure-HTTP flag only for a local KME simulator")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"KME URL {kme_url!r} has a bad port; give it as https://HOST:PORT") from None
        self.kme_url = kme_url.rstrip("/")
        self.sae_id = sae_id
        self.peer_sae_id = peer_sae_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/") + API_PREFIX
        self._sleep = sleep
        self._ctx = self._tls_context(ca, sae_cert, sae_key) if self._https else None
        self._conn: http.client.HTTPConnection | None = None
        self._conn_used = False
        self._lock = threading.Lock()

    @staticmethod
    def _tls_context(ca: str | os.PathLike[str] | None, cert: str | os.PathLike[str] | None,
                     key: str | os.PathLike[str] | None) -> ssl.SSLContext:
        if ca is None or cert is None or key is None:
            raise ConfigError("an https:// KME needs the CA certificate, the SAE certificate and the SAE key; "
                              "give all three")
        for path, what in ((ca, "CA certificate"), (cert, "SAE certificate"), (key, "SAE key")):
            if not os.path.isfile(path):
                raise ConfigError(f"{what} {os.fspath(path)} does not exist; check the path")
        check_not_world_readable(key, "SAE key")
        # create_default_context: CERT_REQUIRED and check_hostname, the server is verified.
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"cannot load CA certificate {os.fspath(ca)}: {exc}; give a PEM file") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"cannot load SAE certificate {os.fspath(cert)} with key {os.fspath(key)}: "
                              f"{getattr(exc, 'reason', None) or exc}; check they are a matching PEM pair") from None
        return ctx

    def __repr__(self) -> str:
        return f"Etsi014Client({self.kme_url!r}, sae_id={self.sae_id!r}, peer_sae_id={self.peer_sae_id!r})"

    def describe(self) -> str:
        return f"etsi014 {self.kme_url} sae={self.sae_id} peer={self.peer_sae_id}"

    # -- QKDKeySource ------------------------------------------------------------------------

    def get_new_keys(self, number: int = 1, size_bits: int = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        """Master SAE: ``number`` new keys of ``size_bits`` bits for slave ``peer_sae_id`` (§5.3)."""
        return list(self.enc_keys(number, size_bits).keys)

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID],
                       size_bits: int | None = QKD_KEY_BYTES * 8) -> list[QKDKey]:
        """Slave SAE: the keys with ``key_ids`` from master ``peer_sae_id`` (§5.4), each
        ``size_bits`` long (``None``: any size, all equal)."""
        return list(self.dec_keys(key_ids, size_bits=size_bits).keys)

    def get_keys_from(self, key_ids: Sequence[uuid.UUID], master_sae_id: str) -> list[QKDKey]:
        """Slave SAE: the keys with ``key_ids`` from ``master_sae_id`` (§5.4), 256 bits each."""
        return list(self.dec_keys(key_ids, master_sae_id=master_sae_id or None, size_bits=QKD_KEY_BYTES * 8).keys)

    # -- ETSI GS QKD 014 methods -------------------------------------------------------------

    def status(self, slave_sae_id: str | None = None) -> KMEStatus:
        """§5.2 Get status of the key shared with ``slave_sae_id`` (default: the peer)."""
        slave = slave_sae_id or self.peer_sae_id
        obj = self._call("status", "GET", self._path(slave, "status"), None)
        try:
            st = parse_status(obj)
        except ValueError as exc:
            raise self._bad_answer("status", str(exc)) from None
        if st.slave_sae_id != slave or st.master_sae_id != self.sae_id:
            raise self._bad_answer(
                "status", f"it describes master {st.master_sae_id!r} -> slave {st.slave_sae_id!r}, "
                          f"not {self.sae_id!r} -> {slave!r} (check the SAE IDs match the certificate)")
        return st

    def enc_keys(self, number: int = 1, size: int | None = None, *, slave_sae_id: str | None = None,
                 additional_slave_sae_ids: Sequence[str] = (), extension_mandatory: Sequence[object] = (),
                 extension_optional: Sequence[object] = (),
                 method: Literal["POST", "GET"] = "POST") -> KeyContainer:
        """§5.3 Get key: ``number`` new keys of ``size`` bits (``None``: the KME's default) for
        ``slave_sae_id`` (default: the peer).  The GET form carries only number and size."""
        if type(number) is not int or number < 1:
            raise ValueError("number must be an integer >= 1")
        if size is not None and (type(size) is not int or size < 1):
            raise ValueError("size must be an integer >= 1 (bits)")
        slave = slave_sae_id or self.peer_sae_id
        path = self._path(slave, "enc_keys")
        if method == "GET":
            if additional_slave_sae_ids or extension_mandatory or extension_optional:
                raise ValueError("the GET form of enc_keys carries only number and size (§5.3); use POST")
            query = {"number": number} | ({"size": size} if size is not None else {})
            obj = self._call("enc_keys", "GET", f"{path}?{urllib.parse.urlencode(query)}", None)
        elif method == "POST":
            request: dict[str, object] = {"number": number}
            if size is not None:
                request["size"] = size
            if additional_slave_sae_ids:
                request["additional_slave_SAE_IDs"] = list(additional_slave_sae_ids)
            if extension_mandatory:
                request["extension_mandatory"] = list(extension_mandatory)
            if extension_optional:
                request["extension_optional"] = list(extension_optional)
            obj = self._call("enc_keys", "POST", path, request)
        else:
            raise ValueError("method must be 'POST' or 'GET'")
        try:
            return parse_key_container(obj, number=number, size_bits=size)
        except ValueError as exc:
            raise self._bad_answer("enc_keys", str(exc)) from None

    def dec_keys(self, key_ids: Sequence[uuid.UUID], *, master_sae_id: str | None = None,
                 size_bits: int | None = None, method: Literal["POST", "GET"] = "POST") -> KeyContainer:
        """§5.4 Get key with key IDs: the keys ``key_ids`` from ``master_sae_id`` (default: the
        peer), in this order, each ``size_bits`` long if given.  GET carries one key_ID."""
        ids = list(key_ids)
        if not ids or not all(isinstance(k, uuid.UUID) for k in ids):
            raise ValueError("key_ids must be a non-empty sequence of uuid.UUID")
        if len(set(ids)) != len(ids):
            raise ValueError("key_ids contains the same key_ID twice")
        master = master_sae_id or self.peer_sae_id
        path = self._path(master, "dec_keys")
        if method == "GET":
            if len(ids) != 1:
                raise ValueError("the GET form of dec_keys carries one key_ID (§5.4); use POST for several")
            obj = self._call("dec_keys", "GET", f"{path}?{urllib.parse.urlencode({'key_ID': str(ids[0])})}", None)
        elif method == "POST":
            obj = self._call("dec_keys", "POST", path, {"key_IDs": [{"key_ID": str(k)} for k in ids]})
        else:
            raise ValueError("method must be 'POST' or 'GET'")
        try:
            return parse_key_container(obj, size_bits=size_bits, key_ids=ids)
        except ValueError as exc:
            raise self._bad_answer("dec_keys", str(exc)) from None

    def close(self) -> None:
        """Close the kept-alive connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> Self:
        return self

    # -- plumbing -------------------------------------------------------------------------------

    def _path(self, sae_id: str, method: str) -> str:
        return f"{self._prefix}/{urllib.parse.quote(sae_id, safe='')}/{method}"

    def _bad_answer(self, op: str, problem: str) -> KMEResponseError:
        return KMEResponseError(
            f"KME {self.kme_url} sent a malformed {op} answer: {problem}; no key from it was used -- "
            f"the KME is faulty or misconfigured, report it to its operator", status=200)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._conn_used = False

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                         context=self._ctx)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._conn_used = False
        return self._conn

    def _unreachable(self, op: str, exc: BaseException) -> QKDUnavailable:
        where = f"KME {self.kme_url}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return QKDUnavailable(f"{where} presented a certificate that does not verify ({exc.verify_message}); "
                                  f"check the CA file and that the URL's host is in the KME certificate")
        if isinstance(exc, TimeoutError | socket.timeout):
            return QKDUnavailable(f"{where} did not answer {op} within {self.timeout:g} s; check the KME is "
                                  f"running and reachable, or raise the timeout")
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or exc.__class__.__name__
            return QKDUnavailable(f"TLS with {where} failed during {op} ({reason}); check that the KME trusts "
                                  f"this SAE's certificate and that the CA file is the KME's")
        if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
            return QKDUnavailable(f"{where} closed the connection during {op} without answering; check that it "
                                  f"accepts this SAE's certificate and is an ETSI GS QKD 014 KME")
        if isinstance(exc, ConnectionRefusedError):
            return QKDUnavailable(f"cannot reach {where}: connection refused; check the URL and that the "
                                  f"KME is running")
        if isinstance(exc, socket.gaierror):
            return QKDUnavailable(f"cannot reach {where}: unknown host; check the URL")
        if isinstance(exc, http.client.HTTPException):
            return KMEResponseError(f"{where} sent a malformed HTTP answer to {op} ({exc.__class__.__name__}); "
                                    f"check the URL points at an ETSI GS QKD 014 KME")
        return QKDUnavailable(f"cannot reach {where} for {op}: {getattr(exc, 'strerror', None) or exc}; "
                              f"check the URL and the network")

    def _send(self, op: str, method: str, path: str,
              body: bytes | None) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._connection()
            reused = self._conn_used
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read(_MAX_BODY + 1)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
                self._drop()
                # A kept-alive connection the KME closed while idle: it never saw this request.
                if reused and attempt == 0:
                    continue
                raise self._unreachable(op, exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._unreachable(op, exc) from None
            if len(data) > _MAX_BODY:
                self._drop()
                raise KMEResponseError(f"KME {self.kme_url} sent more than {_MAX_BODY} bytes to {op}; "
                                       f"check the URL points at an ETSI GS QKD 014 KME", status=resp.status)
            self._conn_used = True
            if resp.will_close:
                self._drop()
            return resp.status, resp.reason, resp.msg, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, op: str, method: str, path: str, request: dict[str, object] | None) -> object:
        body = None if request is None else json.dumps(request, separators=(",", ":")).encode()
        schedule = Backoff(self.backoff, max(self.backoff, self.max_backoff)) if self.backoff > 0 else None
        with self._lock:
            for attempt in range(self.retries + 1):
                t0 = time.perf_counter()
                status, reason, headers, data = self._send(op, method, path, body)
                _log.debug("%s %s -> %d in %.1f ms", method, path.split("?")[0], status,
                           (time.perf_counter() - t0) * 1e3)
                if status == 200:
                    try:
                        return _strict_json(data)
                    except (ValueError, UnicodeDecodeError) as exc:
                        raise self._bad_answer(op, f"the body is not JSON ({_shown(str(exc))[:80]})") from None
                if status == 503 and attempt < self.retries:
                    wait = schedule.delay(attempt + 1) if schedule is not None else 0.0
                    retry_after = headers.get("Retry-After", "")
                    if retry_after.strip().isdigit():
                        wait = max(wait, float(retry_after))
                    wait = min(wait, self.max_backoff)
                    _log.info("KME %s answered 503 to %s; retry %d/%d in %.2f s", self.kme_url, op,
                              attempt + 1, self.retries, wait)
                    self._sleep(wait)
                    continue
                raise self._kme_error(op, status, reason, data, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _kme_error(self, op: str, status: int, reason: str, data: bytes, retried: int) -> Exception:
        message, details = parse_error_body(data)
        said = f": {_shown(message)}" if message else " (no ETSI 014 error message)"
        if details:
            said += f" [details: {_shown(details)}]"
        tries = f" after {retried} retries" if retried else ""
        advice = _ADVICE.get((status, op)) or _ADVICE.get(
            status, "check the KME URL (the base before /api/v1) and the KME's logs")
        if status == 400 and op == "dec_keys" and message and _REPLAY_RE.search(message):
            return KMEKeyReplay(
                f"KME {self.kme_url} refused a key_ID as already consumed{said}; each QKD key is delivered once "
                f"-- a replayed or duplicated key_ID, abort this exchange and start a new one",
                status=status, kme_message=message, details=details)
        return KMEError(f"KME {self.kme_url} answered {status} {_shown(reason)[:40]} to {op}{tries}{said}; {advice}",
                        status=status, kme_message=message, details=details)


def _check_settings(s: ExchangeSettings) -> None:
    missing = [flag for flag, value in (("--kme-url", s.kme_url), ("--sae-id", s.sae_id),
                                        ("--peer-sae-id", s.peer_sae_id or s.peer_sae_map)) if not value]
    if s.kme_url and not s.kme_url.startswith("http://"):
        missing += [flag for flag, value in (("--kme-ca", s.kme_ca), ("--sae-cert", s.sae_cert),
                                             ("--sae-key", s.sae_key)) if value is None]
    if missing:
        raise ConfigError(f"--qkd etsi014 needs {', '.join(missing)}")


def _open_settings(s: ExchangeSettings) -> QKDKeySource:
    _check_settings(s)
    return Etsi014Client(s.kme_url or "", ca=s.kme_ca, sae_cert=s.sae_cert, sae_key=s.sae_key,
                         sae_id=s.sae_id or "", peer_sae_id=s.peer_sae_id or "",
                         insecure_http=s.kme_insecure_http, timeout=min(10.0, s.timeout))


#: The ``etsi014`` entry of the QKD source registry.
SOURCE = QKDSourceKind("etsi014", open=_open_settings, check=_check_settings,
                       description="a KME reached over ETSI GS QKD 014 (HTTPS with mutual TLS)")
