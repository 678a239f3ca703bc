"""Where a rotated key goes: one-method objects with ``set_psk(peer, key, epoch)``.

* :class:`WgSink` runs ``wg set IF peer PUB preshared-key /dev/stdin`` with the key in
  base64 on the child's stdin -- never on a command line (visible in ``ps``) or on disk.
  To make WireGuard use a key at once (it mixes the PSK only at its own handshakes, every
  120 s while traffic flows), it removes and re-adds the peer with its full configuration
  in one ``wg set`` call, with a persistent keepalive so that wireguard-go starts the new
  handshake immediately (then restores the keepalive setting).
* :class:`FileSink` replaces one key file per peer atomically, mode 0600.
* :class:`CommandSink` runs an operator's hook with the key on stdin and the metadata in
  ``HKWG_*`` environment variables (e.g. a tiny privileged helper, or another VPN).

Every failure raises :class:`SinkError` with a one-line reason; anything a child process
printed is scrubbed of the key before it reaches a message.
"""

from __future__ import annotations

import base64
import os
import string
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hybridkex import ConfigError, HybridKexError
from hybridkex.io import write_key_file
from hybridkex.protocol import key_fingerprint

from ._keys import PeerRef

__all__ = ["Sink", "SinkError", "WgSink", "FileSink", "CommandSink", "FILE_FORMATS", "SINK_TYPES", "run_wg",
           "interface_public_key", "scrub"]

FILE_FORMATS = ("base64", "hex", "raw")
SINK_TYPES = ("wg", "file", "command")
_TEMPLATE_FIELDS = frozenset({"interface", "peer", "name"})
_COMMAND_FIELDS = frozenset({"interface", "peer", "name", "epoch", "event", "force"})
_MAX_OUTPUT = 300
FIRST_WAIT = 1.0
"""Seconds a forced handshake may take before the peer is re-added once more (a round trip longer than
this costs that handshake, not the key)."""
SECOND_WAIT = 2.0
"""Seconds to wait after that second re-add; later, WireGuard's own retries (every 5 s) take over."""


class SinkError(HybridKexError):
    """A sink could not take the key (the message says which sink and why; never the key)."""


class Sink(Protocol):
    """Takes a peer's new pre-shared key."""

    def set_psk(self, peer: PeerRef, key: bytes, epoch: int, *, event: str = "set",
                force_handshake: bool = False) -> None:
        """Install ``key`` for ``peer``.  ``event`` is ``set``, ``rollback`` or ``stale`` (a random key);
        ``force_handshake``: make the consumer start using it now (where it can)."""


def scrub(text: str, key: bytes) -> str:
    """Remove every encoding of ``key`` from ``text`` and keep one short line."""
    for form in (base64.b64encode(key).decode(), base64.b64encode(key).decode().rstrip("="), key.hex(),
                 key.hex().upper()):
        text = text.replace(form, "[key]")
    line = " ".join(text.split())
    return line[:_MAX_OUTPUT] + ("…" if len(line) > _MAX_OUTPUT else "")


def _run(argv: Sequence[str], stdin: bytes, timeout: float, what: str, key: bytes,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, env=env, check=False)
    except FileNotFoundError:
        raise SinkError(f"{what}: {argv[0]} not found; install it or give its full path") from None
    except PermissionError:
        raise SinkError(f"{what}: {argv[0]} is not executable by this user") from None
    except subprocess.TimeoutExpired:
        raise SinkError(f"{what}: {argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise SinkError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        said = scrub(proc.stderr.decode("utf-8", "replace") or proc.stdout.decode("utf-8", "replace"), key)
        raise SinkError(f"{what}: {argv[0]} exited with status {proc.returncode}" + (f": {said}" if said else ""))
    return proc


def run_wg(wg: str, args: Sequence[str], timeout: float = 10.0) -> str:
    """Run a ``wg`` command that handles no secret; returns its stdout."""
    proc = _run([wg, *args], b"", timeout, f"'wg {' '.join(args)}'", b"\0" * 32)
    return proc.stdout.decode("utf-8", "replace")


def interface_public_key(interface: str, wg: str = "wg") -> str:
    """The public key of a WireGuard interface (``wg show IF public-key``)."""
    try:
        return run_wg(wg, ["show", interface, "public-key"]).strip()
    except SinkError as exc:
        raise ConfigError(f"cannot read the public key of interface {interface}: {exc}; give it as public_key "
                          "in the configuration, or run with CAP_NET_ADMIN") from None


@dataclass(frozen=True)
class WgSink:
    """``wg set IF peer PUB preshared-key /dev/stdin``: WireGuard mixes the key from its next handshake.

    ``wg set`` would silently *create* a peer that is not configured; with ``require_peer``
    (the default) the sink first checks ``wg show IF peers`` and refuses, so the rotator
    never adds peers the operator removed from WireGuard.
    """

    wg: str = "wg"
    """The wg program."""
    timeout: float = 10.0
    """Seconds each wg call may take."""
    require_peer: bool = True
    """Refuse peers WireGuard does not have instead of creating them."""

    def _show(self, peer: PeerRef, what: str) -> dict[str, str]:
        try:
            out = run_wg(self.wg, ["show", peer.interface, what], self.timeout)
        except SinkError as exc:
            raise SinkError(f"wg sink ({peer.label}): {exc}") from None
        table: dict[str, str] = {}
        for line in out.splitlines():
            public, _, value = line.partition("\t")
            table[public.strip()] = value.strip()
        return table

    def set_psk(self, peer: PeerRef, key: bytes, epoch: int, *, event: str = "set",
                force_handshake: bool = False) -> None:
        pub = peer.public_key_text
        what = f"wg sink ({peer.label})"
        stdin = base64.b64encode(key) + b"\n"
        if force_handshake:
            endpoints = self._show(peer, "endpoints")
            if pub not in endpoints:
                raise SinkError(f"{what}: {pub} is not a peer of interface {peer.interface}; add it to WireGuard "
                                "first")
            allowed = self._show(peer, "allowed-ips").get(pub, "").split()
            keepalive = self._show(peer, "persistent-keepalive").get(pub, "off")
            argv = [self.wg, "set", peer.interface, "peer", pub, "remove", "peer", pub, "preshared-key", "/dev/stdin",
                    "allowed-ips", ",".join(a for a in allowed if a != "(none)")]
            endpoint = endpoints[pub]
            if endpoint and endpoint != "(none)":
                argv += ["endpoint", endpoint]
            # A keepalive set on a new peer makes wireguard-go send one at once: that starts the handshake.
            argv += ["persistent-keepalive", keepalive if keepalive.isdigit() else "25"]
            _run(argv, stdin, self.timeout, what, key)
            # The re-added peer reports 0 until its first handshake.  If none comes within FIRST_WAIT, re-add it
            # once more: when the partner initiated at the same moment, each end answered the other's initiation
            # and dropped the answer to its own, and WireGuard retries only after REKEY_TIMEOUT (5 s) -- a peer
            # sends no new initiation sooner, whatever triggers it; a new peer does, at once.  A random key
            # (event "stale") is meant to make the handshake fail: nothing to wait for.
            if event != "stale" and not self._wait_handshake(peer, FIRST_WAIT):
                _run(argv, stdin, self.timeout, what, key)
                self._wait_handshake(peer, SECOND_WAIT)
            if not keepalive.isdigit():  # the re-add set the operator's own keepalive, if there is one
                run_wg(self.wg, ["set", peer.interface, "peer", pub, "persistent-keepalive", "off"], self.timeout)
            return
        if self.require_peer:
            if pub not in self._show(peer, "peers"):
                raise SinkError(f"{what}: {pub} is not a peer of interface "
                                f"{peer.interface}; add it to WireGuard first (or set require_peer = false)")
        _run([self.wg, "set", peer.interface, "peer", pub, "preshared-key", "/dev/stdin"], stdin, self.timeout, what,
             key)

    def _wait_handshake(self, peer: PeerRef, seconds: float) -> bool:
        """Whether WireGuard completed a handshake with the (re-added) peer within ``seconds``."""
        give_up = time.monotonic() + seconds
        while True:
            if self.latest_handshakes(peer.interface).get(peer.public_key_text, 0) > 0:
                return True
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.05)

    def installed_fingerprint(self, peer: PeerRef) -> str:
        """The fingerprint of the PSK WireGuard holds for ``peer`` ("" for none); the key never leaves here."""
        value = self._show(peer, "preshared-keys").get(peer.public_key_text, "")
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError:
            return ""
        return key_fingerprint(key) if len(key) == 32 else ""

    def latest_handshakes(self, interface: str) -> dict[str, int]:
        """``wg show IF latest-handshakes``: peer (base64) -> Unix time of its last handshake (0: never)."""
        out = run_wg(self.wg, ["show", interface, "latest-handshakes"], self.timeout)
        result: dict[str, int] = {}
        for line in out.splitlines():
            public, _, value = line.partition("\t")
            if value.strip().isdigit():
                result[public.strip()] = int(value.strip())
        return result


def check_template(template: str, allowed: frozenset[str] = _TEMPLATE_FIELDS, what: str = "file sink path") -> None:
    """Reject a template with placeholders other than ``allowed`` (public values only, never the key)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{what} {template!r} is not a valid template: {exc}") from None
    unknown = fields - allowed
    if unknown:
        raise ConfigError(f"{what} {template!r} uses unknown placeholder(s) {sorted(unknown)}; use "
                          + ", ".join("{" + f + "}" for f in sorted(allowed)))


@dataclass(frozen=True)
class FileSink:
    """One key file per peer, replaced atomically with mode 0600 (e.g. for a WireGuard ``PresharedKeyFile``
    watcher or another consumer).  ``path`` may use {interface}, {peer} and {name}."""

    path: str
    """Path template: {interface}, {peer} (file-safe public key), {name}."""
    fmt: str = "base64"
    """``base64`` (as wg reads it), ``hex`` or ``raw``."""

    def __post_init__(self) -> None:
        check_template(self.path)
        if self.fmt not in FILE_FORMATS:
            raise ConfigError(f"file sink format {self.fmt!r} is not one of {', '.join(FILE_FORMATS)}")

    def path_for(self, peer: PeerRef) -> Path:
        return Path(self.path.format(interface=peer.interface, peer=peer.file_safe_key,
                                     name=peer.name or peer.file_safe_key))

    def set_psk(self, peer: PeerRef, key: bytes, epoch: int, *, event: str = "set",
                force_handshake: bool = False) -> None:
        target = self.path_for(peer)
        try:
            try:
                write_key_file(target, key, self.fmt)
            except ConfigError:
                if target.parent.is_dir():
                    raise
                # Made on first use (and again if someone removed it), not checked at every install.
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_key_file(target, key, self.fmt)
        except (HybridKexError, OSError) as exc:
            raise SinkError(f"file sink ({peer.label}): {exc}") from None


@dataclass(frozen=True)
class CommandSink:
    """Runs ``argv`` with the key (base64 and a newline) on stdin and the metadata in the environment:
    ``HKWG_INTERFACE``, ``HKWG_PEER`` (base64 public key), ``HKWG_PEER_NAME``, ``HKWG_EPOCH``,
    ``HKWG_EVENT`` (set|rollback|stale), ``HKWG_FINGERPRINT`` and ``HKWG_FORCE_HANDSHAKE`` (1 when both
    ends now hold the key and the consumer should start using it at once).

    Arguments may name the public values too -- {interface}, {peer} (base64 public key),
    {name}, {epoch}, {event}, {force} (1 or 0) -- e.g. for ``sudo``, which drops the environment.
    """

    argv: tuple[str, ...]
    """Program and arguments (no shell)."""
    timeout: float = 10.0
    """Seconds the command may take."""

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) and a for a in self.argv):
            raise ConfigError("command sink needs a non-empty list of program and arguments")
        object.__setattr__(self, "argv", tuple(self.argv))
        for arg in self.argv:
            check_template(arg, _COMMAND_FIELDS, "command sink argument")

    def set_psk(self, peer: PeerRef, key: bytes, epoch: int, *, event: str = "set",
                force_handshake: bool = False) -> None:
        values = {"interface": peer.interface, "peer": peer.public_key_text, "name": peer.name, "epoch": str(epoch),
                  "event": event, "force": "1" if force_handshake else "0"}
        env = dict(os.environ)
        env.update({
            "HKWG_INTERFACE": peer.interface,
            "HKWG_PEER": peer.public_key_text,
            "HKWG_PEER_NAME": peer.name,
            "HKWG_EPOCH": str(epoch),
            "HKWG_EVENT": event,
            "HKWG_FINGERPRINT": key_fingerprint(key),
            "HKWG_FORCE_HANDSHAKE": "1" if force_handshake else "0",
        })
        argv = [arg.format(**values) for arg in self.argv]
        _run(argv, base64.b64encode(key) + b"\n", self.timeout, f"command sink ({peer.label})", key, env)
