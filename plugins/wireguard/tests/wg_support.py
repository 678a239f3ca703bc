"""Helpers the daemon tests share: a thread-safe stdout stand-in for the Reporter, and a bounded wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Lines:
    """A thread-safe stdout stand-in for the Reporter."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self._lock = threading.Lock()

    def write(self, s: str) -> None:
        with self._lock:
            self.text.extend(x for x in s.splitlines() if x)

    def flush(self) -> None:
        pass

    def records(self, kind: str) -> list[dict[str, str]]:
        with self._lock:
            lines = list(self.text)
        return [dict(f.split("=", 1) for f in line.split()[1:]) for line in lines if line.split()[0] == kind]


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
