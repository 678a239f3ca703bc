"""The report writer: the three files, the matrix layout, the legend, failures with their rerun line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridkex_interop import Cell, CellResult, Outcome, RunInfo, Section, write_reports
from hybridkex_interop._report import NOT_RUN, render_html, render_markdown, report_document
from hybridkex_interop._runner import progress_line

SECTIONS = [
    Section("s1", "First matrix", "Rows are scenarios.", ("left", "right", "unused")),
    Section("s2", "Empty matrix", "Nothing ran here.", ("only",)),
]
INFO = RunInfo(mode="quick", started="2026-01-01T00:00:00Z", duration=12.3, command="hybridkex interop run --quick",
               environment={"python": "CPython 3.11", "node": "v20 <x>"})


def cell(row: str, column: str, **kw: object) -> Cell:
    return Cell(id=f"s1/{row}/{column}", section="s1", row=row, column=column, scenario="x", **kw)  # type: ignore[arg-type]


def results() -> list[CellResult]:
    return [
        CellResult(cell("a", "left"), Outcome.PASSED, 1.3, detail="same key"),
        CellResult(cell("a", "right"), Outcome.FAILED, 2.0, error="the two sides wrote different keys | oops"),
        CellResult(cell("b", "left"), Outcome.SKIPPED, 0.1, error="liboqs not installed"),
        CellResult(cell("c", "right"), Outcome.TIMEOUT, 60.0, error="no result within 60 s"),
        CellResult(cell("d", "left", xfail="known bug"), Outcome.XFAILED, 3.0, error="it broke as known"),
        CellResult(cell("e", "left", xfail="fixed bug"), Outcome.PASSED, 1.0),
        CellResult(cell("f", "right", xfail="known bug"), Outcome.SKIPPED, 0.0, error="tool missing"),
    ]


def test_writes_three_files(tmp_path: Path) -> None:
    paths = write_reports(tmp_path / "r", SECTIONS, results(), INFO)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_json_document() -> None:
    doc = report_document(SECTIONS, results(), INFO)
    assert doc["ok"] is False and doc["mode"] == "quick"
    assert doc["counts"] == {"passed": 2, "failed": 1, "timeout": 1, "error": 0, "skipped": 2, "known failure": 1}
    assert [s["key"] for s in doc["sections"]] == ["s1"]  # empty matrices are left out
    rows = doc["sections"][0]["rows"]
    assert [r["scenario"] for r in rows] == ["a", "b", "c", "d", "e", "f"]
    assert rows[0]["cells"] == {"left": "s1/a/left", "right": "s1/a/right"}
    failed = next(c for c in doc["cells"] if c["id"] == "s1/a/right")
    assert failed["letter"] == "F" and failed["rerun"] == "hybridkex interop run --only 's1/a/right'"
    assert {c["letter"] for c in doc["cells"]} == {"P", "F", "S", "T", "X"}
    assert [entry["letter"] for entry in doc["legend"]] == ["P", "F", "T", "E", "S", "X"]
    json.dumps(doc)  # serialisable


def test_markdown_matrix_and_failures() -> None:
    md = render_markdown(SECTIONS, results(), INFO)
    assert "| scenario | left | right |" in md  # a column with no cell at all is left out
    assert "| a | P 1.3s | F 2.0s |" in md
    assert f"| b | S 0.1s | {NOT_RUN} |" in md
    assert "**2 cell(s) FAILED**" in md
    assert "rerun: `hybridkex interop run --only 's1/a/right'`" in md
    assert "rerun: `hybridkex interop run --only 's1/c/right'`" in md
    assert "different keys \\| oops" in md  # pipes escaped inside tables and lists
    assert "liboqs not installed" in md.split("## Skipped")[1]
    known = md.split("## Known failures")[1]
    assert "`s1/d/left`: known bug (saw: it broke as known)" in known
    assert "`s1/e/left`: fixed bug (now passed: drop the entry)" in known
    assert "s1/f/right" not in known  # a skipped known failure says nothing either way
    assert "Empty matrix" not in md
    assert "| First matrix | 2 | 1 | 1 |  | 2 | 1 |" in md  # the per-matrix summary
    for o in Outcome:
        assert f"**{o.value}** {o.label}" in md


def test_html_colours_and_escaping() -> None:
    page = render_html(SECTIONS, results(), INFO)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert f"background:{Outcome.FAILED.colour}" in page and f"background:{Outcome.PASSED.colour}" in page
    assert "v20 &lt;x&gt;" in page and "<x>" not in page
    assert "hybridkex interop run --only &#x27;s1/a/right&#x27;" in page


def test_all_passed_verdict() -> None:
    ok = [r for r in results() if not r.counts_as_failure]
    assert report_document(SECTIONS, ok, INFO)["ok"] is True
    assert "all expected-to-pass cells passed" in render_markdown(SECTIONS, ok, INFO)


def test_progress_line() -> None:
    r = results()
    assert progress_line(3, 40, r[0]) == "[ 3/40] P    1.3s s1/a/left"
    assert progress_line(12, 40, r[1]).endswith("s1/a/right  -- the two sides wrote different keys | oops")


def test_failure_accounting() -> None:
    r = {x.cell.id: x for x in results()}
    assert r["s1/a/right"].counts_as_failure and r["s1/c/right"].counts_as_failure
    assert not r["s1/b/left"].counts_as_failure and not r["s1/d/left"].counts_as_failure


@pytest.mark.parametrize("bad", ["a b", "a*", "it's", "x[1]"])
def test_cell_ids_stay_shell_and_glob_safe(bad: str) -> None:
    with pytest.raises(ValueError):
        Cell(id=bad, section="s", row="r", column="c", scenario="x")
