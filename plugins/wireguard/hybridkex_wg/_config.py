"""The daemon's TOML configuration: parsing (tomllib) and validation.

Every problem is a :class:`hybridkex.ConfigError` that names where it is (``peer[2]
(site-b).endpoint``) and what to write instead; unknown keys are errors, so a typo never
silently falls back to a default.  Relative paths are relative to the config file.

The ``[exchange]`` table takes the same settings as ``hybridkex exchange``'s flags and
lands in :class:`hybridkex.ExchangeSettings`; a peer's own ``[peer.exchange]`` table
overrides single keys (e.g. its own PSK file or QKD link), and ``[peer.rotation]``
overrides the timing and failure policy.

Every WireGuard peer is bound to exactly one hybridkex identity: in ML-DSA mode exactly one
pinned ``id.pub``, in PSK mode its own key file and the names ``name``/``peer_name``
(default: this interface's and the peer's WireGuard public keys, unique per pair).  Two
WireGuard peers that share one credential are refused, or either could rotate the other's
key (see :func:`peer_identities`).
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridkex import ConfigError, ExchangeSettings, load_public_identity
from hybridkex.io import parse_address

from ._keys import PeerRef, default_initiator, parse_wg_key, wg_key_text
from ._rotation import FailurePolicy, Role, RotationPolicy
from ._sinks import SINK_TYPES, CommandSink, FileSink, Sink, WgSink, interface_public_key

__all__ = ["DaemonConfig", "PeerConfig", "load_config", "parse_config", "parse_endpoint", "DEFAULT_INTERVAL",
           "rotation_policy", "EXCHANGE_TOML_KEYS", "MIN_INTERVAL", "ON_STOP", "peer_identities"]

DEFAULT_INTERVAL = 120.0
#: WireGuard retries a handshake only every 5 s; below 10 s a forced handshake may not finish before the next key.
MIN_INTERVAL = 10.0
#: Default seconds an unauthenticated partner may hold a responder worker (the handshake after its Request):
#: a few round trips, plus the initiator's and our own QKD key fetches (an ETSI 014 KME may take seconds).
PREAUTH_TIMEOUT = 10.0
#: What a clean stop (SIGTERM) does to the installed keys.
ON_STOP = ("keep", "cut")
_TOP_KEYS = {"listen", "status_file", "workers", "wg", "rotation", "exchange", "interface", "peer", "metrics",
             "on_stop", "preauth_timeout"}
_ROTATION_KEYS = {"interval", "jitter", "deadline", "retry_initial", "retry_max", "failure_policy", "startup_spread"}
_INTERFACE_KEYS = {"name", "public_key", "sink"}
_PEER_KEYS = {"interface", "public_key", "name", "endpoint", "role", "rotation", "exchange", "sink"}
_PATH_KEYS = {"identity", "psk_file", "qkd_link", "kme_ca", "sae_cert", "sae_key", "qkd_journal"}
_STR_KEYS = {"kem", "backend", "qkd", "qkd_policy", "kme_url", "sae_id", "peer_sae_id", "name", "peer_name"}
#: TOML names in [exchange]; ``pinned_peers`` is ExchangeSettings.peers (the peers' hybridkex id.pub files).
EXCHANGE_TOML_KEYS = _PATH_KEYS | _STR_KEYS | {"pinned_peers", "kme_insecure_http", "timeout", "qkd_journal_days"}
_ROLES = ("auto", "initiator", "responder")


@dataclass(frozen=True)
class PeerConfig:
    """One WireGuard peer to keep rotated."""

    interface: str
    """Local WireGuard interface."""
    local_public: bytes
    """The local interface's WireGuard public key."""
    public_key: bytes
    """The peer's WireGuard public key."""
    name: str
    """Label for logs and the status file."""
    role: Role
    """Who connects for this pair (resolved from ``auto`` by the key order)."""
    endpoint: tuple[str, int] | None
    """The peer's rotator listener, for the initiator."""
    settings: ExchangeSettings
    """Authentication, KEM, QKD and timeout of the exchange."""
    policy: RotationPolicy
    """Interval, jitter, deadline, retries, failure policy."""
    sinks: tuple[Sink, ...]
    """Where the keys go."""

    @property
    def key(self) -> tuple[bytes, bytes]:
        """(local public key, peer public key): the pair's identity, independent of interface names."""
        return self.local_public, self.public_key

    @property
    def ref(self) -> PeerRef:
        return PeerRef(self.interface, self.public_key, self.name)


@dataclass(frozen=True)
class DaemonConfig:
    """A whole ``hybridkex wg run`` configuration."""

    peers: tuple[PeerConfig, ...]
    listen: tuple[str, int] | None = None
    """Where partners' rotators connect (needed when this side responds for any peer)."""
    status_file: Path | None = None
    """Secret-free JSON status, replaced atomically (read by ``hybridkex wg status``)."""
    workers: int = 16
    """Threads for exchanges we initiate, and as many again for exchanges we answer."""
    source: Path | None = None
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (``/metrics``), or None."""
    on_stop: str = "keep"
    """``keep``: a clean stop leaves the keys installed (restarts do not cut tunnels); ``cut``: random keys."""
    preauth_timeout: float = PREAUTH_TIMEOUT
    """Seconds a partner that has not authenticated yet may hold a responder worker: from our Accept to the
    end of the handshake (at most the exchange's ``timeout``)."""


def parse_endpoint(text: object, where: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (the core's one parser, with this file's key in the error)."""
    return parse_address(text, where, example="192.0.2.1:7443")


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _number(value: object, where: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{where} must be {'greater than' if strict else 'at least'} {minimum:g}")
    return float(value)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def rotation_policy(table: Mapping[str, Any], where: str, qkd_required: bool, *,
                    min_interval: float = MIN_INTERVAL) -> RotationPolicy:
    """Build the rotation policy from an (already merged) ``[rotation]`` table."""
    _check_keys(table, _ROTATION_KEYS, where)
    interval = _number(table.get("interval", DEFAULT_INTERVAL), f"{where}.interval", strict=True)
    if interval < min_interval:
        raise ConfigError(f"{where}.interval = {interval:g} s is too short: WireGuard retries a handshake only every "
                          f"5 s, so each key needs at least {min_interval:g} s to be put to use; set interval >= "
                          f"{min_interval:g}")
    jitter = _number(table.get("jitter", 0.1), f"{where}.jitter")
    retry_initial = _number(table.get("retry_initial", min(2.0, interval / 4)), f"{where}.retry_initial",
                            strict=True)
    retry_max = _number(table.get("retry_max", max(retry_initial, min(30.0, interval / 4))), f"{where}.retry_max",
                        strict=True)
    deadline = _number(table.get("deadline", 1.5 * interval), f"{where}.deadline", strict=True)
    spread = _number(table.get("startup_spread", 5.0), f"{where}.startup_spread")
    policy_name = table.get("failure_policy", "auto")
    if policy_name == "auto":
        failure = FailurePolicy.FAIL_CLOSED if qkd_required else FailurePolicy.KEEP
    else:
        try:
            failure = FailurePolicy(policy_name)
        except ValueError:
            raise ConfigError(f"{where}.failure_policy must be \"keep\", \"fail-closed\" or \"auto\" (fail-closed "
                              "when QKD is required), not {policy_name!r}") from None
    try:
        return RotationPolicy(interval=interval, jitter=jitter, deadline=deadline, retry_initial=retry_initial,
                              retry_max=retry_max, failure_policy=failure, startup_spread=spread)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def exchange_settings(table: Mapping[str, Any], where: str, base: Path, *,
                      names: tuple[str, str] | None = None) -> ExchangeSettings:
    """Build :class:`ExchangeSettings` from a merged ``[exchange]`` table (paths relative to ``base``).

    ``names``: the default (name, peer_name) for PSK mode -- this interface's and the peer's
    WireGuard public keys."""
    _check_keys(table, EXCHANGE_TOML_KEYS, where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _PATH_KEYS:
            values[key] = base / _string(value, f"{where}.{key}")
        elif key in _STR_KEYS:
            values[key] = _string(value, f"{where}.{key}")
        elif key == "pinned_peers":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise ConfigError(f"{where}.pinned_peers must be a list of id.pub paths")
            values["peers"] = tuple(base / _string(v, f"{where}.pinned_peers[]") for v in value)
        elif key == "kme_insecure_http":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.kme_insecure_http must be true or false")
            values[key] = value
        elif key in ("timeout", "qkd_journal_days"):
            values[key] = _number(value, f"{where}.{key}", strict=True)
    psk_mode = "psk_file" in values or "psk_ratchet" in values
    if psk_mode and names is not None:
        values.setdefault("name", names[0])
        values.setdefault("peer_name", names[1])
    if psk_mode and values.get("name") == values.get("peer_name") and values.get("name") is not None:
        raise ConfigError(f"{where}: name and peer_name are both {values['name']!r}; the two ends need distinct "
                          "names (default: the two WireGuard public keys)")
    settings = ExchangeSettings(**values)
    try:
        settings.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return settings


def _sinks(items: object, where: str, base: Path, wg: str) -> tuple[Sink, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where} must be a non-empty list of [[...sink]] tables")
    sinks: list[Sink] = []
    for i, raw in enumerate(items):
        here = f"{where}[{i}]"
        item = _table(raw, here)
        kind = item.get("type")
        if kind == "wg":
            _check_keys(item, {"type", "wg", "timeout", "require_peer"}, here)
            require_peer = item.get("require_peer", True)
            if not isinstance(require_peer, bool):
                raise ConfigError(f"{here}.require_peer must be true or false")
            sinks.append(WgSink(_string(item.get("wg", wg), f"{here}.wg"),
                                _number(item.get("timeout", 10.0), f"{here}.timeout", strict=True), require_peer))
        elif kind == "file":
            _check_keys(item, {"type", "path", "format"}, here)
            path = _string(item.get("path"), f"{here}.path")
            try:
                sinks.append(FileSink(str(base / path), _string(item.get("format", "base64"), f"{here}.format")))
            except ConfigError as exc:
                raise ConfigError(f"{here}: {exc}") from None
        elif kind == "command":
            _check_keys(item, {"type", "command", "timeout"}, here)
            command = item.get("command")
            if isinstance(command, str):
                command = [command]
            if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
                raise ConfigError(f"{here}.command must be a list: program and arguments (no shell)")
            timeout = _number(item.get("timeout", 10.0), f"{here}.timeout", strict=True)
            sinks.append(CommandSink(tuple(command), timeout))
        else:
            raise ConfigError(f"{here}.type must be one of {', '.join(SINK_TYPES)}, not {kind!r}")
    return tuple(sinks)


def parse_config(document: Mapping[str, Any], *, base: Path = Path("."), source: Path | None = None,
                 public_key_of: Callable[[str, str], str] = interface_public_key,
                 min_interval: float = MIN_INTERVAL) -> DaemonConfig:
    """Validate a parsed TOML document.  ``public_key_of(interface, wg)`` reads an interface's key when the
    configuration does not give it.  ``min_interval`` is for tests that run on a compressed time scale."""
    _check_keys(document, _TOP_KEYS, "configuration")
    metrics = parse_endpoint(document["metrics"], "metrics") if "metrics" in document else None
    on_stop = document.get("on_stop", "keep")
    if on_stop not in ON_STOP:
        raise ConfigError(f"on_stop must be \"keep\" (a clean stop leaves the keys installed) or \"cut\" "
                          f"(it installs random keys), not {on_stop!r}")
    wg = _string(document.get("wg", "wg"), "wg")
    listen = parse_endpoint(document["listen"], "listen") if "listen" in document else None
    status_file = base / _string(document["status_file"], "status_file") if "status_file" in document else None
    preauth_timeout = _number(document.get("preauth_timeout", PREAUTH_TIMEOUT), "preauth_timeout", strict=True)
    workers_raw = document.get("workers", 16)
    if isinstance(workers_raw, bool) or not isinstance(workers_raw, int) or not 1 <= workers_raw <= 1024:
        raise ConfigError("workers must be an integer between 1 and 1024")
    rotation_defaults = _table(document.get("rotation", {}), "[rotation]")
    _check_keys(rotation_defaults, _ROTATION_KEYS, "[rotation]")
    exchange_defaults = _table(document.get("exchange", {}), "[exchange]")
    _check_keys(exchange_defaults, EXCHANGE_TOML_KEYS, "[exchange]")

    interfaces: dict[str, tuple[bytes, tuple[Sink, ...]]] = {}
    raw_interfaces = document.get("interface", [])
    if not isinstance(raw_interfaces, list):
        raise ConfigError("interfaces are [[interface]] tables (an array), each with a name")
    for i, raw in enumerate(raw_interfaces):
        item = _table(raw, f"interface[{i}]")
        where = f"interface[{i}]"
        _check_keys(item, _INTERFACE_KEYS, where)
        name = _string(item.get("name"), f"{where}.name")
        where = f"interface {name}"
        if name in interfaces:
            raise ConfigError(f"{where} is declared twice")
        public_text = item["public_key"] if "public_key" in item else public_key_of(name, wg)
        public = parse_wg_key(public_text, f"{where}.public_key")
        sinks = _sinks(item.get("sink", [{"type": "wg"}]), f"{where}.sink", base, wg)
        interfaces[name] = (public, sinks)

    raw_peers = document.get("peer", [])
    if not isinstance(raw_peers, list) or not raw_peers:
        raise ConfigError("no peers: add at least one [[peer]] table with interface and public_key")
    peers: list[PeerConfig] = []
    seen: dict[tuple[bytes, bytes], str] = {}
    for i, raw in enumerate(raw_peers):
        item = _table(raw, f"peer[{i}]")
        name = item.get("name", "")
        where = f"peer[{i}]" + (f" ({name})" if name else "")
        _check_keys(item, _PEER_KEYS, where)
        if name != "" and not isinstance(name, str):
            raise ConfigError(f"{where}.name must be a string")
        interface = item.get("interface")
        if interface is None and len(interfaces) == 1:
            interface = next(iter(interfaces))
        interface = _string(interface, f"{where}.interface")
        if interface not in interfaces:
            raise ConfigError(f"{where}.interface {interface!r} has no [[interface]] table; declare it")
        local_public, interface_sinks = interfaces[interface]
        public = parse_wg_key(item.get("public_key", ""), f"{where}.public_key")
        if (local_public, public) in seen:
            raise ConfigError(f"{where} repeats the peer of {seen[(local_public, public)]}")
        seen[(local_public, public)] = where
        role_name = item.get("role", "auto")
        if role_name not in _ROLES:
            raise ConfigError(f"{where}.role must be one of {', '.join(_ROLES)}, not {role_name!r}")
        try:
            initiates = default_initiator(local_public, public) if role_name == "auto" else role_name == "initiator"
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        endpoint = parse_endpoint(item["endpoint"], f"{where}.endpoint") if "endpoint" in item else None
        if initiates and endpoint is None:
            why = "by the key order of role = \"auto\"" if role_name == "auto" else "role = \"initiator\""
            raise ConfigError(f"{where}: this side initiates for this peer ({why}) and needs endpoint = "
                              "\"HOST:PORT\" of the peer's rotator")
        if not initiates and listen is None:
            raise ConfigError(f"{where}: this side answers for this peer and needs listen = \"HOST:PORT\" at the top "
                              "of the configuration")
        merged_exchange = {**exchange_defaults, **_table(item.get("exchange", {}), f"{where}.exchange")}
        settings = exchange_settings(merged_exchange, f"{where}.exchange", base,
                                     names=(wg_key_text(local_public), wg_key_text(public)))
        if not (settings.psk_file or settings.psk_ratchet) and len(settings.peers) != 1:
            raise ConfigError(f"{where}.exchange: pinned_peers lists {len(settings.peers)} identities, but each "
                              "WireGuard peer must be bound to exactly one (or any of them could rotate this "
                              "peer's key); set pinned_peers = [\"its id.pub\"] in this peer's [peer.exchange]")
        merged_rotation = {**rotation_defaults, **_table(item.get("rotation", {}), f"{where}.rotation")}
        policy = rotation_policy(merged_rotation, f"{where}.rotation", settings.effective_qkd_policy == "required",
                                 min_interval=min_interval)
        sinks = _sinks(item["sink"], f"{where}.sink", base, wg) if "sink" in item else interface_sinks
        peers.append(PeerConfig(interface, local_public, public, name, Role.INITIATOR if initiates else Role.RESPONDER,
                                endpoint, settings, policy, sinks))
    return DaemonConfig(tuple(peers), listen, status_file, workers_raw, source, metrics, on_stop, preauth_timeout)


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def peer_identities(peers: tuple[PeerConfig, ...]) -> dict[tuple[bytes, bytes], str]:
    """The one hybridkex identity each WireGuard peer must authenticate as, checked after every exchange:
    the pinned ML-DSA fingerprint (``SHA256:...``) or ``psk:`` + peer_name.

    Raises ConfigError when two WireGuard peers share one credential (one pinned identity,
    one PSK file or ratchet state, or two PSK files with the same content).
    """
    result: dict[tuple[bytes, bytes], str] = {}
    owners: dict[str, str] = {}

    def claim(credential: str, peer: PeerConfig, what: str) -> None:
        other = owners.setdefault(credential, peer.ref.label)
        if other != peer.ref.label:
            raise ConfigError(f"peers {other} and {peer.ref.label} share one {what}; each WireGuard peer needs its "
                              "own credential, or either partner could rotate the other's key")

    for peer in peers:
        s = peer.settings
        if s.psk_file is not None or s.psk_ratchet is not None:
            for path in (s.psk_file, s.psk_ratchet):
                if path is not None:
                    claim("path:" + str(path.resolve()), peer, f"key file ({path})")
            if s.psk_file is not None and s.psk_ratchet is None:
                digest = _file_digest(s.psk_file)
                if digest:
                    claim("psk:" + digest, peer, "pre-shared key (two files with the same content)")
            result[peer.key] = "psk:" + (s.peer_name or "")
        else:
            fingerprint = load_public_identity(s.peers[0]).fingerprint
            claim("id:" + fingerprint, peer, f"pinned identity ({fingerprint})")
            result[peer.key] = fingerprint
    return result


def load_config(path: str | Path, *,
                public_key_of: Callable[[str, str], str] = interface_public_key) -> DaemonConfig:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist; 'hybridkex wg config-example' prints one") \
            from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return parse_config(document, base=path.parent.resolve(), source=path, public_key_of=public_key_of)
