"""The context a scenario function gets, and how one cell is run (the process is :mod:`._run_cell`).

The runner starts ``python -m hybridkex_interop._run_cell CELL_ID ...`` in a new process group
for every cell, so a cell that hangs or crashes is stopped (SIGTERM, then SIGKILL to the
group) without taking the suite down, and every process it started goes with it.  The
scenario writes what it saw into a small JSON result file; anything it prints goes to the
cell's log.

A scenario is a function ``(ctx: CellContext) -> None``: it returns when the cell passed,
or calls :meth:`CellContext.fail` / :meth:`CellContext.skip`.  Resources that outlive a
process (network namespaces) are registered with :meth:`CellContext.track_netns` so the
runner can remove them even after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

from ._model import Cell

__all__ = ["CellContext", "CellFailed", "CellSkipped", "Scenario", "run_cell", "NETNS_FILE"]

#: File in the cell's work directory that lists the network namespaces the cell created.
NETNS_FILE = "netns.txt"


class CellFailed(Exception):
    """The scenario saw something other than the documented outcome."""


class CellSkipped(Exception):
    """The cell cannot run here (a tool or package is missing)."""


@dataclass
class CellContext:
    """What a scenario function gets: its cell, a private work directory and the shared cache."""

    cell: Cell
    work: Path
    """Empty private directory for this cell (kept on failure, removed otherwise)."""
    cache: Path
    """Shared cache for installed peers (npm packages, pip targets); survives runs."""
    fixtures: Path
    """Shared per-run fixtures (identities, PSKs, test PKI), created on first use under a lock."""
    deadline: float
    """``time.monotonic()`` value by which the cell must be done."""
    ci: bool = False
    """Running in CI (``CI=true``): a missing tool is a failure, not a skip."""
    notes: list[str] = field(default_factory=list)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.cell.params)

    def remaining(self, cap: float | None = None) -> float:
        """Seconds left before the cell's deadline (at least 0.5), at most ``cap``."""
        left = max(0.5, self.deadline - time.monotonic())
        return min(left, cap) if cap is not None else left

    def note(self, text: str) -> None:
        """Record what was checked; the notes become the cell's detail in the report."""
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def fail(self, message: str) -> NoReturn:
        raise CellFailed(message)

    def check(self, condition: object, message: str) -> None:
        """Fail with ``message`` unless ``condition`` holds."""
        if not condition:
            raise CellFailed(message)

    def skip(self, reason: str) -> NoReturn:
        """Skip the cell, whatever the environment (e.g. an optional backend is not installed)."""
        raise CellSkipped(reason)

    def require(self, ok: bool, reason: str) -> None:
        """Skip with ``reason`` when ``ok`` is false -- or fail in CI, which must provide every tool."""
        if ok:
            return
        if self.ci:
            raise CellFailed(f"CI must provide this: {reason}")
        raise CellSkipped(reason)

    def track_netns(self, name: str) -> None:
        """Remember a network namespace so the runner can delete it if this process is killed."""
        with open(self.work / NETNS_FILE, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")


Scenario = Callable[[CellContext], None]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:400]
    return ""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn the runner's SIGTERM into an exception so every cleanup callback runs.
    raise KeyboardInterrupt(f"stopped by signal {signum}")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cell(ctx: CellContext, scenario: Scenario) -> dict[str, str]:
    """Run ``scenario`` and return the result record (outcome letter, detail, error)."""
    outcome, error = "P", ""
    try:
        with _sigterm_raises(), ctx.cleanup:
            scenario(ctx)
    except CellFailed as exc:
        outcome, error = "F", _first_line(str(exc)) or "failed"
    except CellSkipped as exc:
        outcome, error = "S", _first_line(str(exc)) or "skipped"
    except KeyboardInterrupt as exc:
        outcome, error = "T", _first_line(str(exc)) or "stopped"
    except Exception as exc:  # a bug in the harness: report it as an error, with the traceback in the log
        traceback.print_exc()
        outcome, error = "E", f"{type(exc).__name__}: {_first_line(str(exc))}"
    return {"outcome": outcome, "detail": "; ".join(ctx.notes), "error": error}
