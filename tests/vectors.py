"""One loader for test vectors kept as data files with their provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict[str, Any]:
    """Load ``tests/data/NAME``; the file names its source in ``title``/``source``."""
    with open(DATA / name, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    assert data.get("source"), f"{name} must name its provenance"
    return data
