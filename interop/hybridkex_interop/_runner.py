"""Run cells as separate process groups, at most ``jobs`` at a time, each bounded by its timeout.

Each cell runs ``python -m hybridkex_interop._run_cell`` in a new session; its output goes to
``logs/<cell>.log`` under the report directory, its scratch files to ``cells/<cell>/``
(removed when the cell passes or is skipped, kept otherwise).  A cell still running at its
timeout gets SIGTERM (its cleanup runs), then SIGKILL; network namespaces it listed are
deleted afterwards.  One progress line per finished cell goes to ``progress``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._cell import NETNS_FILE
from ._model import Cell, CellResult, Outcome

__all__ = ["RunOptions", "run_cells", "slug", "progress_line"]

#: Seconds a cell gets after SIGTERM to clean up before SIGKILL.
_GRACE = 5.0


@dataclass(frozen=True)
class RunOptions:
    """Where a run writes and how many cells run at once."""

    report_dir: Path
    """Reports, logs and per-cell scratch directories go here."""
    cache_dir: Path
    """Installed third-party peers (npm, pip), kept between runs."""
    jobs: int = 2
    """Cells running at the same time (each may start several processes)."""
    keep: bool = False
    """Keep the scratch directories of passed cells too."""


def slug(cell_id: str) -> str:
    """A file name for a cell id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cell_id).strip("_")


def progress_line(done: int, total: int, result: CellResult) -> str:
    """``[ 3/40] P   1.2s hkx/exchange/...`` plus the first error line for anything but a pass."""
    text = f"[{done:>{len(str(total))}}/{total}] {result.outcome.value} {result.duration:6.1f}s {result.cell.id}"
    if result.error and result.outcome is not Outcome.PASSED:
        text += f"  -- {result.error}"
    return text


class _Running:
    """Process groups of the cells running now, so an interrupt can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The cell leads its own session, so its process group id is its PID.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _delete_netns(work: Path) -> None:
    listed = work / NETNS_FILE
    if not listed.is_file():
        return
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    names = {line.split()[0] for line in existing.splitlines() if line.strip()}
    for name in listed.read_text().split():
        if name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _run_one(cell: Cell, options: RunOptions, running: _Running) -> CellResult:
    name = slug(cell.id)
    work = options.report_dir / "cells" / name
    log = options.report_dir / "logs" / f"{name}.log"
    result_file = work / "result.json"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "hybridkex_interop._run_cell", cell.id, "--work", str(work),
            "--cache", str(options.cache_dir), "--fixtures", str(options.report_dir / "fixtures"),
            "--result", str(result_file), "--timeout", str(cell.timeout)]
    # Every hybridkex process of the cell keeps its QKD key_ID journal in the cell's own directory.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYBRIDKEX_STATE_DIR": str(work / "state")}
    started = time.monotonic()
    timed_out = False
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        running.add(proc)
        try:
            try:
                proc.wait(timeout=cell.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=_GRACE)
                except subprocess.TimeoutExpired:
                    pass
                # Whatever is left of the group (the cell or a child that ignored SIGTERM) goes now.
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        finally:
            running.discard(proc)
    duration = time.monotonic() - started
    if timed_out:
        _delete_netns(work)
    rel_log = str(log.relative_to(options.report_dir))
    record: dict[str, str] = {}
    if result_file.is_file():
        with contextlib.suppress(ValueError):
            record = json.loads(result_file.read_text())
    if timed_out:
        outcome = Outcome.TIMEOUT
        error = f"no result within {cell.timeout:g} s; the cell was stopped"
    elif not record:
        outcome = Outcome.ERROR
        error = f"the cell process exited {proc.returncode} without a result: {_last_line(log)}"
    else:
        outcome = Outcome(record.get("outcome", "E"))
        error = record.get("error", "")
    if cell.xfail is not None and outcome.is_failure:
        outcome = Outcome.XFAILED
    if outcome in (Outcome.PASSED, Outcome.SKIPPED, Outcome.XFAILED) and not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    return CellResult(cell, outcome, duration, record.get("detail", ""), error, rel_log)


def unmet_needs(cells: Sequence[Cell]) -> dict[str, str]:
    """For each optional component the cells need and this machine lacks: the skip reason."""
    from ._hkx import missing_backend

    out = {}
    for need in sorted({n for c in cells for n in c.needs}):
        reason = missing_backend(need)
        if reason is not None:
            out[need] = reason
    return out


def run_cells(cells: Sequence[Cell], options: RunOptions,
              progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
              ) -> list[CellResult]:
    """Run ``cells`` (at most ``options.jobs`` at once) and return their results in the given order."""
    # Cells get absolute paths: they hand them to processes that resolve paths against other directories.
    options = dataclasses.replace(options, report_dir=options.report_dir.absolute(),
                                  cache_dir=options.cache_dir.absolute())
    options.report_dir.mkdir(parents=True, exist_ok=True)
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(options.report_dir / "fixtures", ignore_errors=True)
    running = _Running()
    results: dict[str, CellResult] = {}
    lock = threading.Lock()
    unmet = unmet_needs(cells)

    def one(cell: Cell) -> None:
        missing = [unmet[n] for n in cell.needs if n in unmet]
        if missing:  # known before starting anything: no process for it
            result = CellResult(cell, Outcome.SKIPPED, 0.0, error=missing[0])
        else:
            result = _run_one(cell, options, running)
        with lock:
            results[cell.id] = result
            progress(progress_line(len(results), len(cells), result))

    pool = ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="cell")
    futures = []
    try:
        futures = [pool.submit(one, cell) for cell in cells]
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        running.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(options.report_dir / "fixtures", ignore_errors=True)
        with contextlib.suppress(OSError):
            (options.report_dir / "cells").rmdir()  # only when empty
    return [results[c.id] for c in cells if c.id in results]
