"""``hybridkex keygen DIR``: create an ML-DSA identity."""

from __future__ import annotations

from pathlib import Path

import click

from .._identity import write_identity
from ..backends import SIG_NAMES
from ..protocol._identity import generate_identity
from .options import handle_errors


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--alg", type=click.Choice(SIG_NAMES), default="ml-dsa-65", show_default=True,
              help="ML-DSA parameter set (FIPS 204).")
@click.option("--force", is_flag=True, help="Replace an existing identity in DIR.")
@handle_errors
def keygen(directory: Path, alg: str, force: bool) -> None:
    """Create DIR/id.key (0600) and DIR/id.pub, and print the public key's fingerprint."""
    identity = generate_identity(alg)
    key_path, pub_path = write_identity(identity, directory, force=force)
    click.echo(f"{identity.fingerprint} {alg} {pub_path}")
    click.echo(f"hybridkex: wrote {key_path} (keep it secret) and {pub_path} (give it to your peers)", err=True)
