"""``hybridkex interop run|list``: the interop suite on the ``hybridkex`` command line.

Registered through the ``hybridkex.plugins`` entry point (``interop = "hybridkex_interop.cli:register"``).
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import click

__all__ = ["register", "interop", "default_cache_dir"]


def default_cache_dir() -> Path:
    """Where installed third-party peers are kept: ``$HYBRIDKEX_INTEROP_CACHE``, else the user cache."""
    explicit = os.environ.get("HYBRIDKEX_INTEROP_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridkex-interop"


_DEFAULT_REPORT = Path("interop-report")
_only = click.option("--only", "only", multiple=True, metavar="PATTERN",
                     help="Run only cells whose id matches this shell-style pattern (repeatable), "
                          "e.g. 'hkx/exchange/*' or one exact cell id.")
_quick = click.option("--quick", is_flag=True, help="A covering subset (every value of every dimension, "
                                                      "pairwise where cheap) instead of the full matrix.")


@click.group("interop")
def interop() -> None:
    """Interop suite: hybridkex against real peers and injected faults, as a matrix report."""


@interop.command("run")
@_quick
@_only
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=_DEFAULT_REPORT, show_default=True,
              help="Write report.json, report.md and report.html (and per-cell logs) here.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where third-party peers are installed [default: $HYBRIDKEX_INTEROP_CACHE or "
                   "~/.cache/hybridkex-interop].")
@click.option("--jobs", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Cells running at the same time.")
@click.option("--keep", is_flag=True, help="Keep the scratch directories of passed cells too.")
def run(quick: bool, only: tuple[str, ...], report_dir: Path, cache_dir: Path | None, jobs: int, keep: bool) -> None:
    """Run the suite and write the report; exit 1 when an expected-to-pass cell fails.

    One line per finished cell goes to stderr.  A failed cell's line and the report give
    its first error line and the command that reruns just that cell.
    """
    from ._catalogue import sections, select_cells
    from ._env import environment
    from ._report import RunInfo, write_reports
    from ._runner import RunOptions, run_cells

    cells = select_cells(quick=quick, only=only)
    if not cells:
        raise click.UsageError(f"no cell matches {' '.join(only)!r}; 'hybridkex interop list' shows the cell ids")
    mode = "selection" if only else ("quick" if quick else "full")
    click.echo(f"hybridkex interop: {len(cells)} cells ({mode}), {jobs} at a time; report in {report_dir}", err=True)
    options = RunOptions(report_dir=report_dir, cache_dir=cache_dir or default_cache_dir(), jobs=jobs, keep=keep)
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    t0 = time.monotonic()
    try:
        results = run_cells(cells, options)
    except KeyboardInterrupt:
        click.echo("hybridkex interop: interrupted; running cells were stopped", err=True)
        sys.exit(130)
    argv = ["hybridkex", "interop", "run", *(["--quick"] if quick else []),
            *[a for p in only for a in ("--only", p)]]
    if report_dir != _DEFAULT_REPORT:
        argv += ["--report", str(report_dir)]
    info = RunInfo(mode=mode, started=started.isoformat().replace("+00:00", "Z"), duration=time.monotonic() - t0,
                   command=shlex.join(argv), environment=environment())
    paths = write_reports(report_dir, sections(), results, info)
    failed = [r for r in results if r.counts_as_failure]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome.label] = counts.get(r.outcome.label, 0) + 1
    summary = ", ".join(f"{n} {label}" for label, n in counts.items())
    click.echo(f"hybridkex interop: {summary} in {info.duration:.0f} s; wrote {', '.join(map(str, paths))}", err=True)
    for r in failed:
        click.echo(f"hybridkex interop: {r.outcome.label}: {r.cell.id}: {r.error}\n    rerun: {r.rerun()}", err=True)
    sys.exit(1 if failed else 0)


@interop.command("list")
@_quick
@_only
def list_cells(quick: bool, only: tuple[str, ...]) -> None:
    """Print the cell ids a run with these options would run, with their rows and columns."""
    from ._catalogue import select_cells

    for cell in select_cells(quick=quick, only=only):
        click.echo(f"{cell.id}\t{cell.row} | {cell.column}")


def register(root: click.Group) -> None:
    """Entry point of the ``hybridkex.plugins`` group: add ``hybridkex interop``."""
    root.add_command(interop)
