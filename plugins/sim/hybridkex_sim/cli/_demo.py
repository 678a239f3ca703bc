"""``hybridkex demo``."""

from __future__ import annotations

import sys

import click
from hybridkex.cli.options import handle_errors

from .._demo import run_demo


@click.command()
@handle_errors
def demo() -> None:
    """Run both sides of an exchange over loopback on a simulated QKD link, then tap the link."""
    if not run_demo(click.echo):
        click.echo("hybridkex: error: the demo did not behave as expected (see above)", err=True)
        sys.exit(1)
