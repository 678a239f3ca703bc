"""``hybridkex psk init FILE`` and ``hybridkex psk ratchet-init STATE``: pre-shared keys and ratchets."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import click

from .._config import load_psk_file
from .._ratchet import init_ratchet
from ..io._files import atomic_write
from .options import handle_errors

_path = click.Path(path_type=Path, dir_okay=False)


@click.group()
def psk() -> None:
    """Pre-shared keys for PSK authentication, and the QKD-fed authentication ratchet."""


@psk.command("init")
@click.argument("file", type=_path)
@click.option("--ratchet", "ratchet", type=_path, help="Also create an authentication ratchet state bootstrapped "
                                                       "from the new key (copy the key, not the state, to the peer).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@handle_errors
def psk_init(file: Path, ratchet: Path | None, force: bool) -> None:
    """Write 32 random bytes, base64 (as 'wg genpsk' does), to FILE with mode 0600."""
    key = os.urandom(32)
    atomic_write(file, base64.b64encode(key) + b"\n", mode=0o600, overwrite=force)
    click.echo(f"hybridkex: wrote pre-shared key {file}; copy it to the peer over a secure channel", err=True)
    if ratchet is not None:
        init_ratchet(ratchet, key, force=force)
        click.echo(f"hybridkex: wrote authentication ratchet {ratchet}; on the peer run 'hybridkex psk ratchet-init "
                   f"STATE --psk-file {file.name}'", err=True)


@psk.command("ratchet-init")
@click.argument("state", type=_path)
@click.option("--psk-file", type=_path, required=True, help="The bootstrap pre-shared key both sides hold.")
@click.option("--force", is_flag=True,
              help="Replace an existing state: re-bootstrap from the original PSK (do it on both sides, on purpose).")
@handle_errors
def ratchet_init(state: Path, psk_file: Path, force: bool) -> None:
    """Create the authentication ratchet STATE from a bootstrap PSK (once per pair, on both sides)."""
    init_ratchet(state, load_psk_file(psk_file), force=force)
    click.echo(f"hybridkex: wrote authentication ratchet {state} (epoch 0, from {psk_file.name})", err=True)
