"""``python -m hybridkex_interop._run_cell CELL_ID ...``: the process one cell runs in (see :mod:`._cell`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ._catalogue import find_cell, scenario_for
from ._cell import CellContext, run_cell


def main(argv: list[str] | None = None) -> int:
    """Entry point of a cell process (``python -m hybridkex_interop._run_cell``)."""
    parser = argparse.ArgumentParser(prog="python -m hybridkex_interop._run_cell")
    parser.add_argument("cell_id")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    cell = find_cell(args.cell_id)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = CellContext(cell=cell, work=args.work, cache=args.cache, fixtures=args.fixtures,
                      deadline=time.monotonic() + args.timeout,
                      ci=os.environ.get("CI", "").lower() == "true")
    print(f"cell {cell.id}: {cell.row} / {cell.column}", flush=True)
    record = run_cell(ctx, scenario_for(cell))
    print(f"result: {record['outcome']} {record['error']}", flush=True)
    args.result.write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
