"""QKD key sources by name (``sim``, ``etsi014``), built from :class:`ExchangeSettings`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import ConfigError
from ._source import QKDKeySource

if TYPE_CHECKING:
    from .._config import ExchangeSettings

__all__ = ["open_source", "register_source"]


def _open_sim(s: ExchangeSettings) -> QKDKeySource:
    if s.qkd_link is None:
        raise ConfigError("--qkd sim needs --qkd-link FILE (create one with 'hybridkex qkd-link init FILE' and "
                          "copy it to both sides)")
    from ._simlink import SimulatedLinkSource

    return SimulatedLinkSource(s.qkd_link)


def _open_etsi014(s: ExchangeSettings) -> QKDKeySource:
    missing = [flag for flag, value in (("--kme-url", s.kme_url), ("--sae-id", s.sae_id),
                                        ("--peer-sae-id", s.peer_sae_id)) if not value]
    insecure = bool(s.kme_url and s.kme_url.startswith("http://"))
    if not insecure:
        missing += [flag for flag, value in (("--kme-ca", s.kme_ca), ("--sae-cert", s.sae_cert),
                                             ("--sae-key", s.sae_key)) if value is None]
    if missing:
        raise ConfigError(f"--qkd etsi014 needs {', '.join(missing)}")
    from ._etsi014 import Etsi014Client

    return Etsi014Client(s.kme_url or "", ca=s.kme_ca, sae_cert=s.sae_cert, sae_key=s.sae_key,
                         sae_id=s.sae_id or "", peer_sae_id=s.peer_sae_id or "",
                         insecure_http=s.kme_insecure_http, timeout=min(10.0, s.timeout))


_SOURCES: dict[str, Callable[[ExchangeSettings], QKDKeySource]] = {"sim": _open_sim, "etsi014": _open_etsi014}


def register_source(name: str, factory: Callable[[ExchangeSettings], QKDKeySource]) -> None:
    """Add a QKD key source by name (e.g. from a plugin)."""
    _SOURCES[name] = factory


def open_source(settings: ExchangeSettings) -> QKDKeySource:
    try:
        factory = _SOURCES[settings.qkd]
    except KeyError:
        raise ConfigError(f"unknown QKD source {settings.qkd!r}; choose one of: {', '.join(_SOURCES)}") from None
    return factory(settings)
