"""The ``hybridkex`` command line: thin click commands over library calls.

Core commands live in this package, one module per command group.  Plugins add their
own groups through the ``hybridkex.plugins`` entry-point group: each entry point names a
callable that receives the root :class:`click.Group` and adds commands to it.  The core
never imports a plugin by name.
"""

from __future__ import annotations

import importlib.metadata

import click

__all__ = ["main", "cli"]

PLUGIN_GROUP = "hybridkex.plugins"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hybridkex")
def cli() -> None:
    """Hybrid key exchange: QKD + ML-KEM + X25519 through ETSI TS 103 744 CatKDF."""


def _register_core() -> None:
    from . import _commands

    _commands.register(cli)


def _register_plugins() -> None:
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
            register(cli)
        except Exception as exc:  # a broken plugin must not take the core CLI down
            click.echo(f"hybridkex: warning: plugin {ep.name!r} failed to load: {exc}", err=True)


_register_core()
_register_plugins()


def main() -> None:
    cli(prog_name="hybridkex")


if __name__ == "__main__":  # pragma: no cover
    main()
