"""``hybridkex wg``: thin click commands over the rotator library.

Registered on the core CLI through the ``hybridkex.plugins`` entry point
(``wg = "hybridkex_wg.cli:register"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
from hybridkex import ConfigError, HybridKexError, TransportError
from hybridkex.cli.options import exchange_options, handle_errors, settings_from_options

from ._config import DaemonConfig, PeerConfig, load_config, parse_endpoint, peer_identities, rotation_policy
from ._daemon import Daemon
from ._keys import default_initiator, parse_wg_key, wg_key_text
from ._rotation import Role
from ._session import PeerRuntime, Reporter, SocketSet, build_runtime, run_initiator, serve_connection
from ._sinks import CommandSink, FileSink, Sink, WgSink, interface_public_key
from ._status import (
    format_status,
    highest_epochs,
    peer_entry,
    problems,
    read_status,
    status_document,
    write_status,
)

__all__ = ["register", "wg"]

log = logging.getLogger("hybridkex_wg")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ hybridkex-wg: %(levelname)s: %(message)s",
                                  datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger("hybridkex_wg")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


@click.group("wg")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def wg(verbose: bool) -> None:
    """Keep WireGuard pre-shared keys fresh from hybrid QKD + ML-KEM + X25519 exchanges."""
    _setup_logging(verbose)


@wg.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="TOML configuration ('hybridkex wg config-example' prints a commented one).")
@handle_errors
def run(config_path: Path) -> None:
    """Run the rotator daemon: every configured peer rotated every interval.

    SIGHUP reloads the configuration (peers added and removed without disturbing the
    others); SIGTERM stops.  Prints one line per installed or stale key on stdout.
    """
    config = load_config(config_path)
    daemon = Daemon(config, loader=lambda: load_config(config_path))
    daemon.run()


@wg.command("check")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@handle_errors
def check(config_path: Path) -> None:
    """Validate a configuration, load every credential it names and open every QKD source, then exit."""
    config = load_config(config_path)
    peer_identities(config.peers)
    for peer in config.peers:
        peer.settings.handshake_config()
        if peer.settings.qkd != "off" and peer.settings.effective_qkd_policy != "off":
            from hybridkex.qkd import open_source

            # Directly, not through open_qkd_source(): with policy "preferred" that one would hide the failure.
            try:
                source = open_source(peer.settings)
            except (HybridKexError, OSError) as exc:
                raise ConfigError(f"peer {peer.ref.label}: the QKD source cannot be opened: {exc}") from None
            source.close()
    click.echo(f"configuration {config_path} is valid: {len(config.peers)} peer(s)")
    for peer in config.peers:
        click.echo(f"  {peer.ref.label}: {peer.role.value}"
                   f"{' -> ' + ':'.join(map(str, peer.endpoint)) if peer.endpoint else ''}, "
                   f"every {peer.policy.interval:g} s, {peer.policy.failure_policy.value} after "
                   f"{peer.policy.deadline:g} s, qkd {peer.settings.qkd} ({peer.settings.effective_qkd_policy})")


@wg.command("config-example")
def config_example() -> None:
    """Print a commented example configuration."""
    click.echo(resources.files("hybridkex_wg").joinpath("example.toml").read_text(encoding="utf-8"), nl=False)


@wg.command("status")
@click.option("--status-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The daemon's status file.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the status file named in this configuration.")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@handle_errors
def status(status_file: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Show per peer: key age, WireGuard handshake age and whether it used the current key, epoch, QKD, failures
    and the last error.  Exits 1 when any peer is stale or the daemon is not running (it checks the PID and
    that the status file is being rewritten)."""
    if status_file is None:
        if config_path is None:
            raise ConfigError("give --status-file FILE or --config FILE")
        status_file = load_config(config_path, public_key_of=lambda *_: "A" * 43 + "=").status_file
        if status_file is None:
            raise ConfigError(f"{config_path} sets no status_file")
    document = read_status(status_file)
    click.echo(json.dumps(document, indent=1, sort_keys=True) if as_json else format_status(document))
    found = problems(document)
    if found:
        for problem in found:
            click.echo(f"hybridkex-wg: {problem}", err=True)
        sys.exit(1)


def _sinks(no_wg: bool, wg_binary: str, key_file: str | None, hooks: tuple[str, ...]) -> tuple[Sink, ...]:
    sinks: list[Sink] = [] if no_wg else [WgSink(wg_binary)]
    if key_file:
        sinks.append(FileSink(key_file))
    sinks += [CommandSink(tuple(shlex.split(h))) for h in hooks]
    if not sinks:
        raise ConfigError("--no-wg leaves no sink: add --key-file PATH or --hook COMMAND")
    return tuple(sinks)


def _one_shot_initiator(rt: PeerRuntime, reporter: Reporter, connect_retry: float) -> None:
    give_up = time.monotonic() + connect_retry
    sockets = SocketSet()
    while True:
        request = rt.state.start(time.monotonic())
        try:
            run_initiator(rt, request, reporter, sockets, raise_errors=True)
            return
        except TransportError as exc:
            if "refused" not in str(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(0.2)


def _one_shot_responder(rt: PeerRuntime, reporter: Reporter, address: tuple[str, int],
                        accept_timeout: float) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(address)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        server.listen(8)
        click.echo(f"hybridkex-wg: listening on {address[0]}:{server.getsockname()[1]}", err=True)
        give_up = time.monotonic() + accept_timeout
        before = rt.state.rotations
        while rt.state.rotations == before:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"no rotation from the peer within {accept_timeout:g} s")
            server.settimeout(remaining)
            try:
                conn, peer_address = server.accept()
            except TimeoutError:
                continue
            with conn:
                serve_connection(conn, lambda local, peer: rt if (local, peer) == rt.config.key else None,
                                 reporter, peer_address=f"{peer_address[0]}:{peer_address[1]}", raise_errors=True)


@wg.command("rotate")
@click.option("--interface", required=True, help="Local WireGuard interface, e.g. wg0.")
@click.option("--wg-peer", required=True, metavar="WG_PUBKEY", help="The peer's WireGuard public key (base64).")
@click.option("--listen", "listen_on", metavar="HOST:PORT", help="Wait for the peer's rotator here (responder).")
@click.option("--connect", "connect_to", metavar="HOST:PORT", help="Connect to the peer's rotator (initiator).")
@exchange_options
@click.option("--once", is_flag=True, help="Run one exchange, install the key and exit.")
@click.option("--wg-public-key", metavar="WG_PUBKEY",
              help="This interface's public key [default: read with 'wg show IF public-key'].")
@click.option("--label", "label", default="", help="A label for the peer in output lines and the status file.")
@click.option("--key-file", metavar="PATH", help="Also write the key to this file (0600, atomically replaced; "
              "may use {interface}, {peer}, {name}).")
@click.option("--hook", "hooks", multiple=True, metavar="COMMAND",
              help="Also run COMMAND with the key on stdin and HKWG_* variables (repeatable).")
@click.option("--no-wg", is_flag=True, help="Do not run 'wg set' (only --key-file / --hook).")
@click.option("--wg", "wg_binary", default="wg", show_default=True, help="The wg program.")
@click.option("--interval", type=float, default=120.0, show_default=True, help="Without --once: seconds between "
              "rotations.")
@click.option("--deadline", type=float, help="Without --once: seconds without a fresh key before the failure "
              "policy applies [default: 1.5 x interval].")
@click.option("--failure-policy", type=click.Choice(["auto", "keep", "fail-closed"]), default="auto",
              show_default=True, help="Without --once: after the deadline keep the old key or install a random "
              "one (auto: fail-closed when QKD is required).")
@click.option("--status-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Remember the epoch here between runs (and show it to 'hybridkex wg status').")
@click.option("--accept-timeout", type=float, default=300.0, show_default=True,
              help="With --listen --once: seconds to wait for the peer.")
@click.option("--connect-retry", type=float, default=10.0, show_default=True,
              help="With --connect --once: seconds to keep retrying while the peer is not listening yet.")
@handle_errors
def rotate(interface: str, wg_peer: str, listen_on: str | None, connect_to: str | None, once: bool,
           wg_public_key: str | None, label: str, key_file: str | None, hooks: tuple[str, ...], no_wg: bool,
           wg_binary: str, interval: float, deadline: float | None, failure_policy: str, status_file: Path | None,
           accept_timeout: float, connect_retry: float, **kwargs: Any) -> None:
    """Rotate one peer's pre-shared key: once (--once), or every --interval seconds."""
    if (listen_on is None) == (connect_to is None):
        raise ConfigError("give exactly one of --listen HOST:PORT (responder) and --connect HOST:PORT (initiator)")
    settings = settings_from_options(kwargs)
    peer_public = parse_wg_key(wg_peer, "--wg-peer")
    local_public = parse_wg_key(wg_public_key or interface_public_key(interface, wg_binary), "--wg-public-key")
    default_initiator(local_public, peer_public)  # rejects a peer key equal to our own
    if settings.psk_file is not None or settings.psk_ratchet is not None:
        # PSK mode binds both names into the exchange: default to the two WireGuard keys, as the daemon does.
        settings = dataclasses.replace(settings, name=settings.name or wg_key_text(local_public),
                                       peer_name=settings.peer_name or wg_key_text(peer_public))
        if settings.name == settings.peer_name:
            raise ConfigError("--name and --peer-name must differ")
    settings.validate()
    address = parse_endpoint(listen_on or connect_to or "", "--listen" if listen_on else "--connect")
    table: dict[str, Any] = {"interval": interval, "failure_policy": failure_policy}
    if deadline is not None:
        table["deadline"] = deadline
    policy = rotation_policy(table, "options", settings.effective_qkd_policy == "required")
    role = Role.INITIATOR if connect_to else Role.RESPONDER
    peer = PeerConfig(interface, local_public, peer_public, label, role, address if connect_to else None, settings,
                      policy, _sinks(no_wg, wg_binary, key_file, hooks))
    reporter = Reporter()
    if not once:
        config = DaemonConfig((peer,), address if listen_on else None, status_file, 2)
        Daemon(config).run()
        return
    rt = build_runtime(peer, now=time.monotonic(), highest_epoch=highest_epochs(status_file).get(peer.key, 0))
    try:
        if role is Role.INITIATOR:
            _one_shot_initiator(rt, reporter, connect_retry)
        else:
            _one_shot_responder(rt, reporter, address, accept_timeout)
    finally:
        if status_file is not None:
            offset = time.time() - time.monotonic()
            entry = peer_entry(interface, label, local_public, peer_public, peer.endpoint,
                               policy.failure_policy.value, policy.interval, rt.state.status(), offset)
            write_status(status_file, status_document([entry], listen=None, config=None))


def register(root: click.Group) -> None:
    """Entry point of the ``hybridkex.plugins`` group: add ``hybridkex wg``."""
    root.add_command(wg)
