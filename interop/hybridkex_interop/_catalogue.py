"""Every cell of the suite, the sections they sit in, and the scenario that runs each.

Scenario modules each contribute ``SECTIONS`` (matrices), ``cells()`` (the cells, with
``quick`` marking the quick subset) and ``SCENARIOS`` (name -> function).  Cell ids are
checked to be unique; ``--only`` patterns are shell-style globs over them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Sequence
from types import ModuleType

from ._cell import Scenario
from ._model import Cell, Section

__all__ = ["sections", "all_cells", "find_cell", "scenario_for", "select_cells", "KNOWN_FAILURES"]

#: Cells known to fail, by id pattern, with the reason.  Their failure shows as X and does not
#: fail the run; when one passes, the report says so and the entry should go.
KNOWN_FAILURES: dict[str, str] = {}


def _modules() -> list[ModuleType]:
    from . import _etsi014, _hkx, _jspeer, _netfaults, _openssl, _oqsjs, _vectors, _wgdaemon

    return [_hkx, _oqsjs, _openssl, _etsi014, _netfaults, _wgdaemon, _vectors, _jspeer]


def _scenario_modules() -> list[ModuleType]:
    """The matrices' modules, and modules that hold scenarios for another module's cells."""
    from . import _integrations

    return [*_modules(), _integrations]


def sections() -> list[Section]:
    """Every matrix, in report order."""
    return [s for m in _modules() for s in m.SECTIONS]


@functools.cache
def all_cells() -> tuple[Cell, ...]:
    """Every cell of the full matrix, in report order."""
    cells: list[Cell] = []
    for c in (c for m in _modules() for c in m.cells()):
        for pattern, reason in KNOWN_FAILURES.items():
            if fnmatch.fnmatchcase(c.id, pattern):
                c = dataclasses.replace(c, xfail=reason)
        cells.append(c)
    seen: set[str] = set()
    keys = {s.key: s for s in sections()}
    for c in cells:
        if c.id in seen:
            raise AssertionError(f"duplicate cell id {c.id}")
        if c.section not in keys or c.column not in keys[c.section].columns:
            raise AssertionError(f"cell {c.id} names an unknown section or column")
        seen.add(c.id)
    return tuple(cells)


def find_cell(cell_id: str) -> Cell:
    for c in all_cells():
        if c.id == cell_id:
            return c
    raise KeyError(f"no cell {cell_id!r}; 'hybridkex interop list' shows them")


def scenario_for(cell: Cell) -> Scenario:
    for m in _scenario_modules():
        fn = m.SCENARIOS.get(cell.scenario)
        if fn is not None:
            return fn  # type: ignore[no-any-return]
    raise KeyError(f"no scenario {cell.scenario!r}")


def select_cells(*, quick: bool = False, only: Sequence[str] = ()) -> list[Cell]:
    """The cells of a run: all, or the quick subset, narrowed to those matching any ``only`` glob."""
    cells = [c for c in all_cells() if c.quick or not quick]
    if only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) or c.id == p for p in only)]
    return cells
