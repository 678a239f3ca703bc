"""Processes under test: start them, read their output as it comes, and judge how they ended.

Every process a cell starts is a :class:`Spawned`: its stdout and stderr are read by two
threads into line lists (and echoed into the cell's log), so a scenario can wait for a
"listening on" line while the process keeps running, and stop it by PID when done.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ._cell import CellContext

__all__ = ["Spawned", "Finished", "hkx", "spawn", "run", "ERROR_PREFIX", "error_lines", "expect_clean_failure",
           "expect_success", "has_traceback", "LISTENING_RE"]

#: How every hybridkex command reports a failure: exactly one such line on stderr.
ERROR_PREFIX = "hybridkex: error:"
#: The line ``hybridkex exchange --listen`` prints once it accepts connections.
LISTENING_RE = re.compile(r"hybridkex: listening on (\S+):(\d+)")


def hkx(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of ``hybridkex ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "hybridkex.cli", *(os.fspath(a) for a in args)]


@dataclass(frozen=True)
class Finished:
    """How a process ended."""

    name: str
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """A one-line description for failure messages: exit code and first error line."""
        errs = error_lines(self)
        said = errs[0] if errs else (self.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return f"{self.name} exited {self.returncode}: {said[:300]}"


class Spawned:
    """A running process whose output is collected line by line."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin: bool = False, log_stdout: bool = True) -> None:
        self.name = name
        self.log_stdout = log_stdout
        self.argv = list(argv)
        print(f"$ [{name}] {' '.join(self.argv)}", flush=True)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=cwd, bufsize=1)
        self.pid = self.proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._cursor = 0
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(stream, lines, tag), daemon=True)
                         for stream, lines, tag in ((self.proc.stdout, self.out, "out"),
                                                    (self.proc.stderr, self.err, "err"))]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str] | None, lines: list[str], tag: str) -> None:
        if stream is None:
            return
        for line in stream:
            if tag == "err" or self.log_stdout:
                print(f"[{self.name} {tag}] {line.rstrip()}", flush=True)
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, *, stream: str = "err") -> re.Match[str] | None:
        """Wait until a line of ``stream`` matches; None if the process ended or time ran out first."""
        lines = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(lines):
                    m = pattern.search(lines[seen])
                    seen += 1
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    return None
                self._cond.wait(min(left, 0.1))

    def read_line(self, timeout: float) -> str | None:
        """The next stdout line not read before; None if none comes within ``timeout`` or the process ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._cursor >= len(self.out):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers[0].is_alive()):
                    return None
                self._cond.wait(min(left, 0.1))
            self._cursor += 1
            return self.out[self._cursor - 1]

    def send(self, text: str) -> None:
        """Write ``text`` to the process's stdin (opened with ``stdin=True``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float) -> Finished | None:
        """Wait for the process to end; None if it is still running after ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._readers:
            t.join(timeout=5)
        with self._cond:
            return Finished(self.name, self.proc.returncode, "\n".join(self.out), "\n".join(self.err))

    def stop(self, grace: float = 3.0) -> Finished:
        """End the process (SIGTERM, then SIGKILL after ``grace`` seconds) and return how it ended."""
        self.close_stdin()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        done = self.wait(5)
        assert done is not None
        return done

    def finish(self, ctx: CellContext, cap: float | None = None) -> Finished:
        """Wait for the process within the cell's time; fail the cell if it does not end."""
        done = self.wait(ctx.remaining(cap))
        if done is None:
            self.stop()
            ctx.fail(f"{self.name} did not finish within {ctx.remaining(cap):.0f} s and was stopped")
        return done


def spawn(ctx: CellContext, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
          cwd: Path | None = None, stdin: bool = False, log_stdout: bool = True) -> Spawned:
    """Start a process that is stopped when the cell ends (whatever happens).  ``log_stdout=False``
    keeps its stdout out of the cell's log (it carries secrets)."""
    proc = Spawned(name, argv, env=env, cwd=cwd, stdin=stdin, log_stdout=log_stdout)
    ctx.cleanup.callback(proc.stop)
    return proc


def run(ctx: CellContext, name: str, argv: Sequence[str], *, timeout: float | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None) -> Finished:
    """Run a process to completion within the cell's time (and ``timeout``)."""
    proc = spawn(ctx, name, argv, env=env, cwd=cwd, stdin=stdin is not None)
    if stdin is not None:
        proc.send(stdin)
        proc.close_stdin()
    return proc.finish(ctx, timeout)


def error_lines(done: Finished) -> list[str]:
    """The ``hybridkex: error:`` lines a process printed on stderr."""
    return [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def has_traceback(done: Finished) -> bool:
    return "Traceback (most recent call last)" in done.stderr or "Traceback (most recent call last)" in done.stdout


def expect_success(ctx: CellContext, done: Finished) -> None:
    """Fail the cell unless the process exited 0 without a traceback."""
    ctx.check(not has_traceback(done), f"{done.name} printed a Python traceback")
    ctx.check(done.returncode == 0, done.describe())


def expect_clean_failure(ctx: CellContext, done: Finished, codes: Sequence[int] | None = None,
                         contains: Sequence[str] = ()) -> str:
    """The documented way to fail: non-zero exit (one of ``codes``), exactly one ``hybridkex: error:``
    line, no traceback.  Returns the error line; ``contains`` are words one of which it must hold."""
    ctx.check(not has_traceback(done), f"{done.name} printed a Python traceback instead of one error line")
    ctx.check(done.returncode != 0, f"{done.name} exited 0 where it should have failed")
    errors = error_lines(done)
    ctx.check(len(errors) == 1, f"{done.name} printed {len(errors)} '{ERROR_PREFIX}' lines, not 1 "
                                f"(exit {done.returncode}): {done.stderr.strip()[-200:]!r}")
    if codes is not None:
        ctx.check(done.returncode in codes, f"{done.name} exited {done.returncode}, expected one of "
                                            f"{', '.join(map(str, codes))}: {errors[0]}")
    if contains:
        ctx.check(any(word.lower() in errors[0].lower() for word in contains),
                  f"{done.name}'s error does not say {' or '.join(map(repr, contains))}: {errors[0]}")
    return errors[0]
