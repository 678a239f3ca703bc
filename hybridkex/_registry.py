"""Named extension points found through entry points, shared by backends and QKD key sources.

A distribution adds an implementation by declaring an entry point in its own metadata, e.g.
``[project.entry-points."hybridkex.qkd_sources"] sim = "hybridkex_sim._source:SOURCE"``.  The core's own
implementations are listed here as ``module:attribute`` strings so that a source tree that was
never installed still works; an entry point of the same name takes precedence.  Nothing is
imported until it is asked for by name, so the registry imports none of its members (and no
member can form an import cycle with it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one kind by name: built-ins, then entry points, then :meth:`register`."""

    def __init__(self, group: str, builtins: dict[str, str], check: Callable[[object], T]) -> None:
        self.group = group
        self._builtins = dict(builtins)
        self._check = check
        self._targets: dict[str, str] | None = None
        self._loaded: dict[str, T] = {}
        self._lock = threading.Lock()

    def _scan(self) -> dict[str, str]:
        if self._targets is None:
            targets = dict(self._builtins)
            for ep in importlib.metadata.entry_points(group=self.group):
                targets[ep.name] = ep.value
            self._targets = targets
        return self._targets

    def names(self) -> list[str]:
        """Every known name, without importing any implementation."""
        with self._lock:
            return sorted(set(self._scan()) | set(self._loaded))

    def register(self, name: str, value: T) -> None:
        """Add (or replace) an implementation at run time; the built-ins and entry points stay."""
        with self._lock:
            self._scan()
            self._loaded[name] = self._check(value)

    def get(self, name: str) -> T | None:
        """The implementation called *name*, imported on first use; None if there is none."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            target = self._scan().get(name)
            if target is None:
                return None
            module, _, attr = target.partition(":")
            value: object = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                value = getattr(value, part)
            checked = self._check(value)
            self._loaded[name] = checked
            return checked
