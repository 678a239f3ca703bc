"""The ``sim`` entry of hybridkex's QKD source registry: a simulated BB84 link in a link file.

This module stays light (no numpy): the CLI lists the registry's names at start-up, and the
link itself is imported only when a source is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridkex import ConfigError
from hybridkex.qkd import QKDKeySource, QKDSourceKind

if TYPE_CHECKING:
    from hybridkex import ExchangeSettings

__all__ = ["SOURCE"]


def _check(settings: ExchangeSettings) -> None:
    if settings.qkd_link is None:
        raise ConfigError("--qkd sim needs --qkd-link FILE (create one with 'hybridkex qkd-link init FILE' and "
                          "copy it to both sides)")


def _open(settings: ExchangeSettings) -> QKDKeySource:
    _check(settings)
    from ._simlink import SimulatedLinkSource

    assert settings.qkd_link is not None
    return SimulatedLinkSource(settings.qkd_link)


def _prepare(settings: ExchangeSettings) -> None:
    """Import numpy, read and check the link file, set up its BB84 link (several hundred milliseconds of
    CPU, cached per process).  Touches no key_ID journal."""
    if settings.qkd_link is None:
        return
    from ._simlink import SimulatedLinkSource

    SimulatedLinkSource(settings.qkd_link)


#: Registered under ``hybridkex.qkd_sources`` as ``sim``.
SOURCE = QKDSourceKind("sim", open=_open, check=_check, prepare=_prepare,
                       description="a simulated BB84 link shared through a link file (for tests and demos)")
