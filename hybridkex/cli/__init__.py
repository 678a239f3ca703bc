"""The ``hybridkex`` command line: thin click commands over library calls.

Core commands live in this package, one module per command group.  Plugins add their
own groups through the ``hybridkex.plugins`` entry-point group: each entry point names a
callable that receives the root :class:`click.Group` and adds commands to it.  The core
never imports a plugin by name.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

import click

from .._errors import HybridKexError
from .options import EXIT_INTERRUPTED, EXIT_USAGE, fail

__all__ = ["main", "cli"]

PLUGIN_GROUP = "hybridkex.plugins"


class _Root(click.Group):
    """The root group: every command of every distribution reports errors one way.

    One line ``hybridkex: error: ...`` on stderr and an exit code from the one table
    (:data:`hybridkex.cli.options.EXIT_CODES`): click's own usage errors (a bad flag value, a
    missing argument) are configuration errors, exit 2, like a bad configuration file.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = f"\n{exc.ctx.get_usage()}\nTry '{exc.ctx.command_path} --help' for help." if exc.ctx else ""
            click.echo(f"hybridkex: error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"hybridkex: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("hybridkex: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except HybridKexError as exc:  # a command that did not catch its own
            fail(exc)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
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
