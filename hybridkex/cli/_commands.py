"""Registers the core command modules on the root group."""

from __future__ import annotations

import importlib

import click

# module name -> attribute holding a click command or group
_CORE = [
    ("._keygen", "keygen"),
    ("._exchange", "exchange"),
    ("._demo", "demo"),
    ("._qkd_link", "qkd_link"),
    ("._kme", "kme"),
    ("._psk", "psk"),
]


def register(root: click.Group) -> None:
    for module, attr in _CORE:
        try:
            mod = importlib.import_module(module, __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__ or "hybridkex.cli"):
                continue  # command module not written yet
            raise
        root.add_command(getattr(mod, attr))
