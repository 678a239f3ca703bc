"""The simulators' commands, added to ``hybridkex`` through the ``hybridkex.plugins`` entry point."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(root: click.Group) -> None:
    # The commands import hybridkex.cli, which loads this entry point while it is being imported:
    # ``register`` must exist before them, so they are imported here, not at the top.
    from ._demo import demo
    from ._kme import kme
    from ._qkd_link import qkd_link

    for command in (demo, qkd_link, kme):
        root.add_command(command)


# Importing a command module directly (``hybridkex_sim.cli._kme``) imports hybridkex.cli, which loads
# the plugins; with ``register`` defined above, loading the core CLI here first registers every
# command before any of them is half imported.
import hybridkex.cli  # noqa: E402, F401
