"""``hybridkex qkd-link``: create, tap and inspect simulated BB84 link files.

The library (and numpy with it) is imported inside the commands, so ``hybridkex --help``
stays fast.
"""

from __future__ import annotations

import os

import click
from hybridkex import ConfigError
from hybridkex.cli.options import handle_errors

__all__ = ["qkd_link"]

_PROBABILITY = click.FloatRange(0.0, 1.0)
#: Blocks simulated after 'tap' to show what the eavesdropper does to the key rate.
_TAP_TRIAL_BLOCKS = 8



@click.group("qkd-link")
def qkd_link() -> None:
    """Simulated BB84 QKD links: a link file both ends share (the '--qkd sim' key source)."""


@qkd_link.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--channel-error", type=click.FloatRange(0.0, 0.5), default=0.02, show_default=True,
              help="Intrinsic bit-flip probability of the channel.")
@click.option("--eve", type=_PROBABILITY, default=0.0, show_default=True,
              help="Fraction of pulses an intercept-resend eavesdropper measures and resends.")
@click.option("--force", is_flag=True, help="Overwrite an existing link file (its keys become unrecoverable).")
@handle_errors
def init(file: str, channel_error: float, eve: float, force: bool) -> None:
    """Create link FILE with a fresh random seed (mode 0600); copy it to the peer over a secure channel."""
    from .._bb84 import LinkParameters
    from .._simlink import init_link_file

    try:
        link = init_link_file(file, LinkParameters(channel_error=channel_error, eve=eve), force=force)
    except ValueError as exc:  # a parameter out of range
        raise ConfigError(str(exc)) from None
    click.echo(f"created simulated QKD link {file} (BB84, channel error {channel_error:.1%}, "
               f"eve {eve * 100:g}%, fingerprint {link.fingerprint}); copy it to the peer over a secure channel")


@qkd_link.command("tap")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--eve", type=_PROBABILITY, required=True,
              help="Fraction of pulses the eavesdropper intercepts and resends (0 removes her).")
@handle_errors
def tap(file: str, eve: float) -> None:
    """Put an intercept-resend eavesdropper on link FILE (rewrites its parameters, keeps its seed)."""
    from .._bb84 import BB84Link, expected_qber
    from .._simlink import update_link_file

    try:
        link = update_link_file(file, eve=eve)
    except ValueError as exc:  # a parameter out of range
        raise ConfigError(str(exc)) from None
    stats = BB84Link(link.params, link.seed).statistics(_TAP_TRIAL_BLOCKS, int.from_bytes(os.urandom(7), "big"))
    click.echo(f"link {file}: eavesdropper on {eve * 100:g}% of pulses; expected QBER "
               f"{expected_qber(link.params):.1%}; {stats.aborted_blocks} of {stats.blocks} trial blocks aborted, "
               f"{stats.secret_key_bits_per_block:.0f} key bits per block on average")


@qkd_link.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@handle_errors
def show(file: str) -> None:
    """Print the parameters of link FILE and the statistics of one fresh block (never the seed)."""
    from .._bb84 import BB84Link, expected_qber
    from .._simlink import load_link_file

    try:
        link = load_link_file(file)
    except ValueError as exc:  # a parameter out of range
        raise ConfigError(str(exc)) from None
    p = link.params
    block = BB84Link(p, link.seed).block(int.from_bytes(os.urandom(8), "big"))
    lines = [
        f"link file:            {file}",
        f"fingerprint:          {link.fingerprint}",
        f"channel error:        {p.channel_error:.2%}",
        f"eavesdropper (eve):   {p.eve * 100:g}% of pulses intercepted and resent",
        f"expected QBER:        {expected_qber(p):.2%}",
        f"pulses per block:     {p.pulses_per_block}",
        f"sample fraction:      {p.sample_fraction:g}",
        f"QBER abort threshold: {p.qber_abort:.2%}",
        f"EC efficiency f:      {p.ec_efficiency:g}",
        f"security margin:      {p.security_margin_bits} bits",
        "fresh block:",
        f"  estimated QBER:     {block.qber:.2%}",
        f"  sifted bits:        {block.sifted_bits} ({block.sample_bits} disclosed for QBER estimation)",
        f"  EC leak:            {block.ec_leak_bits} bits",
        f"  final key bits:     {block.final_bits}",
        f"  result:             {'ABORTED: ' + block.reason if block.aborted else 'key delivered'}",
    ]
    click.echo("\n".join(lines))
