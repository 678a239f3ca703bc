"""``hybridkex interop run --quick`` as a user runs it: a subprocess, the three reports, the expected matrix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybridkex_interop import sections, select_cells


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_matrix(tmp_path: Path) -> None:
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "hybridkex.cli", "interop", "run", "--quick", "--report",
                           str(report)], capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("report.json", "report.md", "report.html"):
        assert (report / name).is_file(), name

    expected = select_cells(quick=True)
    doc = json.loads((report / "report.json").read_text())
    assert doc["ok"] is True and doc["mode"] == "quick"
    by_id = {c["id"]: c for c in doc["cells"]}
    assert set(by_id) == {c.id for c in expected}
    assert not [c for c in doc["cells"] if c["letter"] in "FTE"]

    # Every matrix is there, with exactly the rows and columns of the quick selection.
    assert [s["key"] for s in doc["sections"]] == [s.key for s in sections()]
    for section in doc["sections"]:
        cells = [c for c in expected if c.section == section["key"]]
        assert [r["scenario"] for r in section["rows"]] == list(dict.fromkeys(c.row for c in cells))
        for row in section["rows"]:
            for column, cell_id in row["cells"].items():
                assert column in section["columns"] and by_id[cell_id]["column"] == column

    # One progress line per cell on stderr, then the summary.
    progress = [line for line in proc.stderr.splitlines() if re.match(r"^\[\s*\d+/\d+\] [PFTESX] ", line)]
    assert len(progress) == len(expected)

    md = (report / "report.md").read_text()
    assert "all expected-to-pass cells passed" in md and "Legend:" in md
    for section in sections():
        assert f"## {section.title}" in md
    assert "<table>" in (report / "report.html").read_text()
