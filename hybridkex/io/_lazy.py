"""Names a package exports but imports on first use, for plugins whose CLI must start fast.

A plugin registers its commands through an entry point inside its package, so every
``hybridkex`` command imports that package's ``__init__``; heavy imports (pyOpenSSL, numpy)
are deferred to the first use of a name that needs them::

    __getattr__, __dir__ = lazy_exports(__name__, {"HybridTLSContext": "._context"}, __all__)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str], names: Iterable[str] = ()) -> tuple[
        Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` that imports ``table[name]`` (relative to ``package``) on first use
    and keeps the value, and a ``__dir__`` that lists ``names`` too."""
    listed = tuple(names)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(listed) | set(table))

    return __getattr__, __dir__
