"""The second implementation (``interop/jspeer``, JavaScript under node) against hybridkex: a quick subset.

The vectors, and one exchange per direction and authentication mode (PSK without QKD over
ML-KEM-768; ML-DSA-65 with an ETSI GS QKD 014 key over ML-KEM-1024), run as ``hybridkex interop run
--only`` runs them.  Without node and npm the test skips locally and fails in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridkex_interop import select_cells

SUBSET = (
    "jspeer/vectors",
    "jspeer/exchange/psk/off/ml-kem-768/*",
    "jspeer/exchange/ml-dsa-65/etsi014/ml-kem-1024/*",
)


def test_subset_is_what_it_says() -> None:
    ids = {c.id for c in select_cells(only=SUBSET)}
    assert "jspeer/vectors" in ids
    for direction in ("js-py", "py-js"):
        assert f"jspeer/exchange/psk/off/ml-kem-768/{direction}" in ids
        assert f"jspeer/exchange/ml-dsa-65/etsi014/ml-kem-1024/{direction}" in ids
    assert len(ids) == 5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_jspeer_against_hybridkex(tmp_path: Path, require: Callable[[bool, str], None]) -> None:
    require(shutil.which("node") is not None and shutil.which("npm") is not None,
            "node and npm are not installed (Debian packages nodejs and npm)")
    report = tmp_path / "report"
    argv = [sys.executable, "-m", "hybridkex.cli", "interop", "run", "--report", str(report)]
    for pattern in SUBSET:
        argv += ["--only", pattern]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=540)
    doc = json.loads((report / "report.json").read_text()) if (report / "report.json").is_file() else {"cells": []}
    letters = {c["id"]: c["letter"] for c in doc["cells"]}
    assert len(letters) == 5, proc.stderr[-3000:]
    skipped = [c for c in doc["cells"] if c["letter"] == "S"]
    if skipped:
        require(False, f"{skipped[0]['id']} skipped: {skipped[0].get('error', '')}")
    assert proc.returncode == 0 and set(letters.values()) == {"P"}, (letters, proc.stderr[-3000:])
