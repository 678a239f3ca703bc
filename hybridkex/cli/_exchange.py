"""``hybridkex exchange``: agree on a key with one peer and write it to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .._errors import ConfigError
from .._exchange import exchange as run_exchange
from ..io._address import parse_address
from ..io._files import KEY_FORMATS, write_key_file
from ..protocol._handshake import HandshakeResult, key_fingerprint
from .options import exchange_options, handle_errors, settings_from_options


def describe_result(result: HandshakeResult, out: Path | None) -> list[str]:
    """Readable, secret-free lines about a finished exchange."""
    s = result.summary()
    if result.qkd.status == "used":
        qkd = f"QKD key_ID {', '.join(s['qkd_key_ids'])}"  # type: ignore[arg-type]
    elif result.qkd.status == "unavailable":
        qkd = f"WITHOUT QKD (policy preferred): {result.qkd.reason}"
    else:
        qkd = "QKD off"
    lines = [
        f"peer {result.peer.fingerprint} authenticated by {result.peer.auth}",
        f"mixed: {qkd} + {result.suite.kem} + {result.suite.key_agreement} -> CatKDF "
        f"({result.suite.kdf}-{result.suite.hash})",
        f"key {s['key_fingerprint']}" + (f" written to {out}" if out else ""),
    ]
    return lines


@click.command()
@click.option("--listen", "listen_on", metavar="HOST:PORT", help="Wait for the peer here (responder).")
@click.option("--connect", "connect_to", metavar="HOST:PORT", help="Connect to the peer here (initiator).")
@exchange_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Write the 32-byte derived key here (mode 0600), only once both sides confirmed it.")
@click.option("--format", "fmt", type=click.Choice(KEY_FORMATS), default="raw", show_default=True,
              help="Key file encoding.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line about the exchange (never the key).")
@click.option("--accept-timeout", type=float, default=300.0, show_default=True,
              help="With --listen: seconds to wait for the peer to connect.")
@click.option("--connect-retry", type=float, default=10.0, show_default=True,
              help="With --connect: seconds to keep retrying while the peer is not listening yet.")
@handle_errors
def exchange(listen_on: str | None, connect_to: str | None, out: Path, fmt: str, as_json: bool,
             accept_timeout: float, connect_retry: float, **kwargs: Any) -> None:
    """Run one authenticated hybrid key exchange with a peer and write the key to --out."""
    if (listen_on is None) == (connect_to is None):
        raise ConfigError("give exactly one of --listen HOST:PORT (responder) and --connect HOST:PORT (initiator)")
    where = parse_address(listen_on or connect_to or "", "--listen" if listen_on else "--connect")
    if not out.parent.is_dir() and str(out.parent):
        raise ConfigError(f"cannot write {out}: directory {out.parent} does not exist")
    settings = settings_from_options(kwargs)

    def listening(addr: tuple[str, int]) -> None:
        click.echo(f"hybridkex: listening on {addr[0]}:{addr[1]}", err=True)

    result = run_exchange(settings, listen_on=where if listen_on else None,
                          connect_to=where if connect_to else None, accept_timeout=accept_timeout,
                          connect_retry=connect_retry, on_listening=listening)
    if result.qkd.status == "unavailable":
        click.echo(f"hybridkex: warning: the key was agreed WITHOUT QKD (policy preferred): {result.qkd.reason}; "
                   "it rests on ML-KEM and X25519 only", err=True)
    key = result.key()
    write_key_file(out, key, fmt)
    if as_json:
        summary = result.summary()
        summary["ok"] = True
        summary["key_fingerprint"] = key_fingerprint(key)
        summary["out"] = str(out)
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for line in describe_result(result, out):
            click.echo(line)
