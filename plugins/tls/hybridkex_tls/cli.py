"""``hybridkex tls serve`` and ``hybridkex tls connect``: thin click commands over the library.

Registered on the root ``hybridkex`` group through the ``hybridkex.plugins`` entry point.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

import click
from hybridkex import ConfigError, HybridKexError, TransportError
from hybridkex.cli.options import exchange_options, handle_errors, settings_from_options
from hybridkex.io import parse_address

__all__ = ["register", "tls"]

_COPY_CHUNK = 1 << 16


def register(root: click.Group) -> None:
    """Entry point of the ``hybridkex.plugins`` group: add ``tls`` to the root command."""
    root.add_command(tls)


def _static_options(f: Any) -> Any:
    f = click.option("--groups", metavar="LIST",
                     help="With --external-psk: TLS key-exchange groups, OpenSSL syntax (e.g. X25519 or "
                          "X25519MLKEM768:X25519) [default: OpenSSL's]. The hybrid mode always uses X25519MLKEM768.")(f)
    f = click.option("--psk-identity", default="Client_identity", show_default=True,
                     help="With --external-psk: the PSK identity (as openssl -psk_identity).")(f)
    f = click.option("--external-psk", type=click.Path(path_type=Path, dir_okay=False),
                     help="Static mode: TLS 1.3 with this raw external PSK (FILE holds the key bytes, mode 0600) "
                          "and no hybrid exchange; talks to 'openssl s_client/s_server -psk HEX'.")(f)
    return f


def _context(role: str, kwargs: dict[str, Any], own: dict[str, Any] | None = None) -> Any:
    """Build the HybridTLSContext from the command's options (pops them from kwargs)."""
    from ._context import HybridTLSContext, load_external_psk

    own = own or {}
    external_psk: Path | None = kwargs.pop("external_psk")
    psk_identity: str = kwargs.pop("psk_identity")
    groups: str | None = kwargs.pop("groups")
    timeout: float = kwargs["timeout"]
    settings = settings_from_options(kwargs)
    factory = HybridTLSContext.client if role == "client" else HybridTLSContext.server
    if external_psk is not None:
        if settings.identity or settings.peers or settings.psk_file or getattr(settings, "psk_ratchet", None) \
                or settings.qkd != "off":
            raise ConfigError("--external-psk runs TLS with a static key and no hybrid exchange; drop --identity, "
                              "--peer, --psk-file and --qkd, or drop --external-psk")
        return factory(external_psk=load_external_psk(external_psk), psk_identity=psk_identity, groups=groups,
                       timeout=timeout, **own)
    if groups is not None:
        raise ConfigError("--groups only applies with --external-psk; the hybrid mode always uses X25519MLKEM768")
    if settings.identity is None and settings.psk_file is None:
        raise ConfigError("no authentication configured: give --identity DIR/id.key and --peer PEER.pub, or "
                          "--psk-file FILE for the hybrid exchange, or --external-psk FILE for a static TLS PSK")
    return factory(settings, **own)


def _describe(info: dict[str, object]) -> str:
    line = f"{info['tls_version']} {info['cipher']} over {info['group']}, external PSK"
    if info["mode"] == "hybrid":
        ids = info.get("qkd_key_ids") or []
        qkd = f"QKD key_ID {', '.join(str(i) for i in ids)}" if ids else f"QKD {info['qkd']}"  # type: ignore[attr-defined]
        if info.get("resumed"):
            line = (f"{info['tls_version']} {info['cipher']} over {info['group']}, resumed session "
                    f"#{info.get('resumptions')} of a hybrid exchange {info.get('qkd_key_age')} s old ({qkd})")
        else:
            line += f" from the hybrid exchange ({info['hybrid_suite']}, {qkd})"
        line += f"; peer {info['peer']} ({info['auth']})"
    else:
        line += " (static)"
    return line


@click.group("tls")
def tls() -> None:
    """TLS 1.3 keyed by the hybrid exchange (RFC 9258 external PSK, psk_dhe_ke over X25519MLKEM768)."""


@tls.command("serve")
@click.option("--listen", "listen_on", metavar="HOST:PORT", required=True,
              help="Address to listen on (port 0 picks a free port; the address is printed on stderr).")
@exchange_options
@_static_options
@click.option("--echo", is_flag=True, help="Send back everything a client sends (instead of printing it).")
@click.option("--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit after this many connections (0: serve until interrupted).")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Authenticated connections served at once; more wait for a slot.")
@click.option("--max-pending-per-source", type=click.IntRange(min=1), default=32, show_default=True,
              help="Unauthenticated connections from one address; a new one closes the oldest.")
@click.option("--session-lifetime", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              metavar="SECONDS", help="How long after a hybrid exchange clients may resume its TLS session "
                                      "(no new QKD key); 0 turns resumption off.")
@click.option("--max-resumptions", type=click.IntRange(min=0), default=100, show_default=True,
              help="How many connections may resume one hybrid exchange's chain of sessions.")
@click.option("--pre-auth-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="Time a client has to authenticate before it is dropped.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Close an established connection silent this long [default: no limit].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per connection (never a key).")
@handle_errors
def serve(listen_on: str, echo: bool, count: int, max_connections: int, max_pending_per_source: int,
          session_lifetime: float, max_resumptions: int, pre_auth_timeout: float, idle_timeout: float | None,
          as_json: bool, **kwargs: Any) -> None:
    """Accept TLS clients: hybrid exchange (or resumption), then TLS 1.3. Prints or echoes what they send."""
    from ._server import HybridTLSServer
    from ._tlssocket import HybridTLSSocket

    address = parse_address(listen_on, "--listen")
    context = _context("server", kwargs, {"session_lifetime": session_lifetime, "max_resumptions": max_resumptions,
                                          "pre_auth_timeout": pre_auth_timeout, "idle_timeout": idle_timeout})
    finished = threading.Semaphore(0)
    output_lock = threading.Lock()

    def say(line: str, *, err: bool = True) -> None:
        with output_lock:
            click.echo(line, err=err)

    def handler(conn: HybridTLSSocket) -> None:
        peer = _peer_name(conn.getpeername())
        info = conn.info()
        if as_json:
            say(json.dumps({"ok": True, "peer_address": peer, **info}, sort_keys=True), err=False)
        say(f"hybridkex: {peer}: {_describe(info)}")
        try:
            while True:
                data = conn.recv(_COPY_CHUNK)
                if not data:
                    break
                if echo:
                    conn.sendall(data)
                else:
                    with output_lock:
                        sys.stdout.buffer.write(data)
                        sys.stdout.buffer.flush()
            with contextlib.suppress(OSError):  # the client may already be gone
                conn.shutdown(socket.SHUT_WR)
        except Exception as exc:
            say(f"hybridkex: {peer}: connection failed: {exc}")
        say(f"hybridkex: {peer}: closed")

    def on_error(peer: Any, exc: BaseException) -> None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if as_json:
            say(json.dumps({"ok": False, "peer_address": _peer_name(peer), "error": type(exc).__name__,
                            "message": message}, sort_keys=True), err=False)
        say(f"hybridkex: {_peer_name(peer)}: error: {message}")

    def handled(conn: HybridTLSSocket) -> None:
        try:
            handler(conn)
        finally:
            finished.release()

    def failed(peer: Any, exc: BaseException) -> None:
        # Only setup failures arrive here: the handler catches its own errors.
        on_error(peer, exc)
        finished.release()

    server = HybridTLSServer(context, address, handled, max_connections=max_connections, on_error=failed,
                             max_pending_per_source=max_pending_per_source,
                             max_pending=max(256, max_pending_per_source))
    with server:
        host, port = server.server_address
        mode = "hybrid exchange + TLS 1.3" if context.hybrid else "TLS 1.3 with a static external PSK"
        say(f"hybridkex: listening on {host}:{port} ({mode})")
        server.start()
        served = 0
        while count == 0 or served < count:
            finished.acquire()
            served += 1


def _peer_name(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def _send_stdin(conn: Any, source: BinaryIO, errors: list[BaseException]) -> None:
    try:
        while True:
            data = source.read1(_COPY_CHUNK) if hasattr(source, "read1") else source.read(_COPY_CHUNK)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except (OSError, ValueError) as exc:
        errors.append(exc)


@tls.command("connect")
@click.argument("address", metavar="HOST:PORT")
@exchange_options
@_static_options
@click.option("--json", "as_json", is_flag=True,
              help="First print one JSON line about the connection (TLS version, cipher, group, PSK, hybrid suite, "
                   "QKD key_IDs; never a key).")
@handle_errors
def connect(address: str, as_json: bool, **kwargs: Any) -> None:
    """Connect, run the hybrid exchange and TLS 1.3; send stdin, print what comes back (like s_client -quiet).

    When stdin ends, the TLS write side is closed (close_notify); the command exits when the server closes.
    """
    host, port = parse_address(address, "address")
    context = _context("client", kwargs)
    try:
        raw = socket.create_connection((host, port), timeout=context.timeout)
    except TimeoutError:
        raise TransportError(f"connecting to {host}:{port} timed out after {context.timeout:g} s") from None
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}; is the server "
                             "running?") from None
    raw.settimeout(None)
    with context.wrap_socket(raw) as conn:
        info = conn.info()
        if as_json:
            click.echo(json.dumps({"ok": True, **info}, sort_keys=True))
        click.echo(f"hybridkex: connected to {host}:{port}: {_describe(info)}", err=True)
        errors: list[BaseException] = []
        sender = threading.Thread(target=_send_stdin, args=(conn, sys.stdin.buffer, errors), daemon=True)
        sender.start()
        out = sys.stdout.buffer
        try:
            while True:
                data = conn.recv(_COPY_CHUNK)
                if not data:
                    break
                out.write(data)
                out.flush()
        except OSError as exc:
            if isinstance(exc, HybridKexError):
                raise
            raise TransportError(f"the connection failed: {exc.strerror or exc}") from None
        sender.join(0.5)
        if errors and not isinstance(errors[0], (BrokenPipeError, ConnectionResetError)):
            raise TransportError(f"sending to the server failed: {errors[0]}")
