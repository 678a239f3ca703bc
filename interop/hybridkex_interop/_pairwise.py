"""A small deterministic pairwise (all-pairs) covering: the quick matrix's row picker.

Greedy: repeatedly take, from the full cartesian product, the row that covers the most value
pairs not covered yet (ties: the first in product order), until every pair of values of
every two dimensions appears in some row.  Fine for the few hundred rows the suite has.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

__all__ = ["pairwise", "uncovered_pairs"]

Pair = tuple[int, str, int, str]


def _pairs(row: Sequence[str]) -> set[Pair]:
    return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}


def uncovered_pairs(dimensions: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> set[Pair]:
    """Value pairs of ``dimensions`` that no row in ``rows`` holds (empty when pairwise-complete)."""
    wanted: set[Pair] = set()
    for i, j in itertools.combinations(range(len(dimensions)), 2):
        wanted |= {(i, a, j, b) for a in dimensions[i] for b in dimensions[j]}
    for row in rows:
        wanted -= _pairs(row)
    return wanted


def pairwise(dimensions: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Rows that together hold every pair of values of every two dimensions (and so every value)."""
    if len(dimensions) == 1:
        return [(v,) for v in dimensions[0]]
    todo = uncovered_pairs(dimensions, [])
    candidates = [tuple(r) for r in itertools.product(*dimensions)]
    rows: list[tuple[str, ...]] = []
    while todo:
        best = max(candidates, key=lambda r: len(_pairs(r) & todo))
        rows.append(best)
        todo -= _pairs(best)
    return rows
