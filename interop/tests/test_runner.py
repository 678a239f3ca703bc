"""The runner and the command: timeouts stop a cell's process group, exit codes, progress lines, paths."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridkex_interop import Cell, CellResult, Outcome, RunOptions
from hybridkex_interop import _runner as runner
from hybridkex_interop._catalogue import find_cell
from hybridkex_interop.cli import interop


def test_a_cell_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    # The silent-responder cell waits several seconds for a timeout; give it one second.
    cell = dataclasses.replace(find_cell("net/silent/exchange"), timeout=1.0)
    options = RunOptions(report_dir=tmp_path, cache_dir=tmp_path / "cache")
    t0 = time.monotonic()
    result = runner._run_one(cell, options, runner._Running())
    assert result.outcome is Outcome.TIMEOUT and "no result within 1 s" in result.error
    assert time.monotonic() - t0 < 1.0 + runner._GRACE + 3
    assert (tmp_path / result.log).is_file()
    assert (tmp_path / "cells" / runner.slug(cell.id)).is_dir()  # kept for a look


def _fake(outcome: Outcome) -> object:
    def run_cells(cells: Sequence[Cell], options: RunOptions) -> list[CellResult]:
        return [CellResult(c, outcome, 0.5, error="" if outcome is Outcome.PASSED else "it broke") for c in cells]
    return run_cells


@pytest.mark.parametrize(("outcome", "code"), [(Outcome.PASSED, 0), (Outcome.SKIPPED, 0), (Outcome.FAILED, 1),
                                               (Outcome.TIMEOUT, 1), (Outcome.ERROR, 1)])
def test_exit_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcome: Outcome, code: int) -> None:
    monkeypatch.setattr(runner, "run_cells", _fake(outcome))
    result = CliRunner().invoke(interop, ["run", "--only", "vectors/*", "--report", str(tmp_path)])
    assert result.exit_code == code, result.output
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["ok"] is (code == 0) and len(doc["cells"]) == 4
    if code:
        assert "rerun: hybridkex interop run --only 'vectors/catkdf/hkdf-sha256'" in result.output


def test_unknown_pattern_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(interop, ["run", "--only", "no/such/*", "--report", str(tmp_path)])
    assert result.exit_code == 2 and "no cell matches" in result.output


def test_list() -> None:
    result = CliRunner().invoke(interop, ["list", "--only", "openssl/*"])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 8


def test_command_with_a_relative_report_dir(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hybridkex.cli", "interop", "run", "--only", "vectors/*",
                           "--report", "rel"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if re.match(r"^\[\d/4\] P ", line)]
    assert len(progress) == 4
    doc = json.loads((tmp_path / "rel" / "report.json").read_text())
    assert doc["command"] == "hybridkex interop run --only 'vectors/*' --report rel"
    assert not (tmp_path / "rel" / "cells").exists() and not (tmp_path / "rel" / "fixtures").exists()
