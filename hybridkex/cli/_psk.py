"""``hybridkex psk init FILE``: create a pre-shared key for PSK authentication."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import click

from .._auth import psk_identity
from .._files import atomic_write
from .options import handle_errors


@click.group()
def psk() -> None:
    """Pre-shared keys for PSK authentication."""


@psk.command("init")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file.")
@handle_errors
def psk_init(file: Path, force: bool) -> None:
    """Write 32 random bytes, base64 (as 'wg genpsk' does), to FILE with mode 0600."""
    key = os.urandom(32)
    atomic_write(file, base64.b64encode(key) + b"\n", mode=0o600, overwrite=force)
    click.echo(f"hybridkex: wrote pre-shared key {file} (id psk:{psk_identity(key).hex()}); copy it to the peer "
               "over a secure channel", err=True)
