"""The simulators' commands, added to ``hybridkex`` through the ``hybridkex.plugins`` entry point."""

from __future__ import annotations

import click

from ._demo import demo
from ._kme import kme
from ._qkd_link import qkd_link

__all__ = ["register"]


def register(root: click.Group) -> None:
    for command in (demo, qkd_link, kme):
        root.add_command(command)
