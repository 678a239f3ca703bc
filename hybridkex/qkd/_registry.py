"""QKD key sources by name, found through the ``hybridkex.qkd_sources`` entry-point group.

The core ships ``etsi014`` (a KME reached over ETSI GS QKD 014); the ``hybridkex-sim``
distribution adds ``sim`` (a simulated BB84 link) the same way any other distribution adds
a source: an entry point naming a :class:`QKDSourceKind`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import ConfigError, HybridKexError
from .._registry import Registry
from ..protocol._qkd import QKDKeySource

if TYPE_CHECKING:
    from .._config import ExchangeSettings

__all__ = ["QKDSourceKind", "open_source", "register_source", "source_names", "check_source", "prepare_source"]


def _no_check(settings: ExchangeSettings) -> None:
    return None


@dataclass(frozen=True)
class QKDSourceKind:
    """One kind of QKD key source, as ``--qkd NAME`` selects it."""

    name: str
    """The name users type (``--qkd NAME``, ``qkd = "NAME"``)."""
    open: Callable[[ExchangeSettings], QKDKeySource]
    """Build the source from the exchange settings (may raise :class:`ConfigError` or a ``QKDError``)."""
    check: Callable[[ExchangeSettings], None] = _no_check
    """Raise :class:`ConfigError` naming what the settings lack, without opening anything."""
    description: str = ""
    """One line for ``--help``."""
    prepare: Callable[[ExchangeSettings], None] = _no_check
    """Do the source's one-time work ahead of the first key (a long-running daemon calls it at
    start-up); it must not consume keys.  Its failures are ignored (:func:`prepare_source`): :attr:`open`
    reports them."""


def _check_kind(value: object) -> QKDSourceKind:
    if not isinstance(value, QKDSourceKind):
        raise TypeError(f"a hybridkex.qkd_sources entry point must name a QKDSourceKind, not {value!r}")
    return value


_REGISTRY: Registry[QKDSourceKind] = Registry("hybridkex.qkd_sources",
                                              {"etsi014": "hybridkex.qkd._etsi014:SOURCE"}, _check_kind)


def register_source(kind: QKDSourceKind) -> None:
    """Add a QKD key source at run time (distributions use the entry point instead)."""
    _REGISTRY.register(kind.name, kind)


def source_names() -> list[str]:
    """Every installed source name, without importing any source."""
    return _REGISTRY.names()


def _kind(name: str) -> QKDSourceKind:
    kind = _REGISTRY.get(name)
    if kind is None:
        known = ", ".join(["off", *source_names()])
        hint = " (the simulated link comes with the hybridkex-sim distribution)" if name == "sim" else ""
        raise ConfigError(f"unknown QKD source {name!r}; choose one of: {known}{hint}")
    return kind


def check_source(settings: ExchangeSettings) -> None:
    """Raise :class:`ConfigError` when ``settings.qkd`` is unknown or lacks what it needs."""
    _kind(settings.qkd).check(settings)


def open_source(settings: ExchangeSettings) -> QKDKeySource:
    """Open the source that ``settings.qkd`` names."""
    return _kind(settings.qkd).open(settings)


def prepare_source(settings: ExchangeSettings) -> None:
    """Let the source that ``settings.qkd`` names do its one-time work now (nothing for ``off``).

    A failure here is not reported: opening the source reports it, under the QKD policy."""
    if settings.qkd != "off" and settings.effective_qkd_policy != "off":
        with contextlib.suppress(HybridKexError, OSError):
            _kind(settings.qkd).prepare(settings)
