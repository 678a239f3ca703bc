"""Fixtures for the WireGuard rotator tests: keys, PSK files, ports, TOML files, daemons.

Every process a test starts is stopped by PID in a finalizer; every daemon run in a
thread is stopped and joined.
"""

from __future__ import annotations

import base64
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Run the CLI of the installed packages, independent of PATH.
CLI = [sys.executable, "-c", "from hybridkex.cli import main; main()"]


def new_wg_key() -> str:
    """A random WireGuard-shaped public key (base64 of 32 bytes); no WireGuard needed."""
    return base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def toml_dumps(document: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for test configurations: scalars, tables and arrays of tables."""
    lines: list[str] = []
    nested: list[str] = []
    for key, value in document.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            nested.append(f"[{name}]\n" + toml_dumps(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                nested.append(f"[[{name}]]\n" + toml_dumps(item, name))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n" + "".join(nested)


@pytest.fixture
def cli() -> list[str]:
    """The command prefix that runs ``hybridkex``."""
    return list(CLI)


@pytest.fixture
def new_key() -> Callable[[], str]:
    """Factory of random WireGuard-shaped public keys."""
    return new_wg_key


@pytest.fixture
def port() -> Callable[[], int]:
    """Factory of free loopback ports."""
    return free_port


@pytest.fixture
def write_toml() -> Callable[[Path, dict[str, Any]], Path]:
    def write(path: Path, document: dict[str, Any]) -> Path:
        path.write_text(toml_dumps(document))
        return path
    return write


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth.psk"
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    path.chmod(0o600)
    return path


def parse_line(line: str) -> tuple[str, dict[str, str]]:
    """``psk-set a=1 b=2`` -> ("psk-set", {"a": "1", "b": "2"})."""
    kind, *fields = line.split()
    return kind, dict(f.split("=", 1) for f in fields)


class DaemonProcess:
    """A ``hybridkex ...`` child process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 stderr_path: Path | None = None) -> None:
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen([*(prefix or []), *CLI, *args], stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def records(self, kind: str) -> list[dict[str, str]]:
        return [fields for k, fields in map(parse_line, list(self.lines)) if k == kind]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        give_up = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > give_up:
                raise AssertionError(f"timed out waiting for {what}; stdout: {self.lines[-10:]}; "
                                     f"stderr: {self.stderr_tail()}")
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(f"process exited ({self.proc.returncode}) before {what}; "
                                     f"stderr: {self.stderr_tail()}")
            time.sleep(0.05)

    def stderr_tail(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(2)
        if not isinstance(self._stderr, int):
            self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def spawn() -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``hybridkex ARGS`` processes; all are stopped (by PID) afterwards."""
    started: list[DaemonProcess] = []

    def start(args: list[str], **kwargs: Any) -> DaemonProcess:
        process = DaemonProcess(args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def run_daemon() -> Iterator[Callable[[dict[str, Any], Path], tuple[Any, Any]]]:
    """Start in-process daemons in threads, each with its own Reporter; returns (daemon, its result lines).
    All are stopped and joined afterwards, and each must have stopped."""
    from wg_support import Lines

    from hybridkex_wg._config import parse_config
    from hybridkex_wg._daemon import Daemon
    from hybridkex_wg._session import Reporter

    running: list[tuple[Daemon, threading.Thread]] = []

    def start(document: dict[str, Any], base: Path) -> tuple[Daemon, Lines]:
        out = Lines()
        daemon = Daemon(parse_config(document, base=base, min_interval=0.1), reporter=Reporter(out))  # type: ignore[arg-type]
        ready = threading.Event()
        thread = threading.Thread(target=daemon.run, kwargs={"on_ready": ready.set}, daemon=True)
        thread.start()
        assert ready.wait(10), "daemon did not start"
        running.append((daemon, thread))
        return daemon, out

    yield start
    for daemon, thread in running:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"
