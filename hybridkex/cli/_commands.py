"""Registers the core command modules on the root group."""

from __future__ import annotations

import importlib

import click

# module name -> attribute holding a click command or group
_CORE = [
    ("._keygen", "keygen"),
    ("._exchange", "exchange"),
    ("._psk", "psk"),
]


def register(root: click.Group) -> None:
    for module, attr in _CORE:
        root.add_command(getattr(importlib.import_module(module, __package__), attr))
