"""What the suite is made of: cells, their outcomes, and the result of running one.

A *cell* is one scenario run against one peer or with one set of parameters; the report
lays cells out as matrices (one per section), rows being scenarios and columns peers or
parameters.  Every cell ends in one :class:`Outcome`, shown as a letter, as in aioquic's
interop table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Outcome", "Cell", "CellResult", "Section", "LEGEND_ORDER"]


class Outcome(enum.Enum):
    """How a cell ended.  The value is the letter shown in the matrix."""

    PASSED = "P"
    FAILED = "F"
    TIMEOUT = "T"
    ERROR = "E"
    SKIPPED = "S"
    XFAILED = "X"

    @property
    def label(self) -> str:
        """One word for the legend."""
        return _LABELS[self][0]

    @property
    def meaning(self) -> str:
        """What the letter means, for the legend."""
        return _LABELS[self][1]

    @property
    def colour(self) -> str:
        """Background colour of the cell in the HTML report."""
        return _LABELS[self][2]

    @property
    def is_failure(self) -> bool:
        """True for outcomes that make ``hybridkex interop run`` exit non-zero (on expected-to-pass cells)."""
        return self in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.ERROR)


_LABELS: dict[Outcome, tuple[str, str, str]] = {
    Outcome.PASSED: ("passed", "works together / the documented outcome was observed", "#9be59b"),
    Outcome.FAILED: ("failed", "an assertion of the scenario did not hold", "#f08080"),
    Outcome.TIMEOUT: ("timeout", "the cell did not finish within its time bound and was stopped", "#f4a460"),
    Outcome.ERROR: ("error", "the suite itself broke while running the cell: a bug in the harness", "#d8a0e0"),
    Outcome.SKIPPED: ("skipped", "a tool or package is missing here; the reason is given", "#dcdcdc"),
    Outcome.XFAILED: ("known failure", "failed as documented for a known limitation", "#fff3a0"),
}

#: Order in which the legend and summaries list outcomes.
LEGEND_ORDER = (Outcome.PASSED, Outcome.FAILED, Outcome.TIMEOUT, Outcome.ERROR, Outcome.SKIPPED, Outcome.XFAILED)


@dataclass(frozen=True)
class Cell:
    """One scenario with one set of parameters, run as its own process."""

    id: str
    """Stable identifier, e.g. ``hkx/exchange/ml-dsa-65/sim/ml-kem-768/cryptography>cryptography``;
    ``hybridkex interop run --only ID`` runs just this cell."""
    section: str
    """Key of the matrix the cell belongs to (see :class:`Section`)."""
    row: str
    """Row label in that matrix (the scenario)."""
    column: str
    """Column label in that matrix (the peer or parameter)."""
    scenario: str
    """Name of the function that runs the cell (a key of the scenario registry)."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Parameters for the scenario function."""
    timeout: float = 60.0
    """Seconds after which the cell's process group is stopped and the cell counts as a timeout."""
    quick: bool = False
    """Whether ``--quick`` runs this cell."""
    xfail: str | None = None
    """Reason when the cell is known to fail; its failure then does not fail the run."""
    needs: tuple[str, ...] = ()
    """Optional components the cell cannot run without (``liboqs``); when one is missing the runner
    records the skip without starting a process."""

    def __post_init__(self) -> None:
        bad = set(self.id) & set("*?[] \t\n'\"\\")
        if bad:
            raise ValueError(f"cell id {self.id!r} must not contain {''.join(sorted(bad))!r}")


@dataclass(frozen=True)
class Section:
    """One matrix of the report."""

    key: str
    """Short key cells refer to."""
    title: str
    """Heading of the matrix."""
    description: str
    """One paragraph under the heading: what the rows and columns are."""
    columns: tuple[str, ...]
    """Column labels, in order; rows are taken in the order cells are listed."""


@dataclass(frozen=True)
class CellResult:
    """What running one cell produced."""

    cell: Cell
    outcome: Outcome
    duration: float
    """Wall-clock seconds, process start to end."""
    detail: str = ""
    """What was checked or observed (one or a few lines, never key material)."""
    error: str = ""
    """The first error line, for failures, timeouts, errors and skips."""
    log: str = ""
    """Path of the cell's log file, relative to the report directory, when kept."""

    @property
    def expected_to_pass(self) -> bool:
        """Cells without an ``xfail`` reason are expected to pass."""
        return self.cell.xfail is None

    @property
    def counts_as_failure(self) -> bool:
        """True when this result makes the run fail."""
        return self.expected_to_pass and self.outcome.is_failure

    def rerun(self) -> str:
        """The command that reruns just this cell."""
        return f"hybridkex interop run --only '{self.cell.id}'"
