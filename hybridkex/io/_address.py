"""``HOST:PORT`` addresses, as every command and configuration file writes them."""

from __future__ import annotations

from .._errors import ConfigError

__all__ = ["parse_address"]


def parse_address(text: object, what: str = "address", *, default_host: str = "127.0.0.1",
                  example: str = "127.0.0.1:7443") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> ``(host, port)``; an empty host means ``default_host``.

    ``what`` names the flag or configuration key in the error, e.g. ``--listen`` or
    ``peer[0].endpoint``.  Raises :class:`~hybridkex.ConfigError` (a ``ValueError`` is never
    seen by callers) that shows ``example``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string HOST:PORT, e.g. {example}")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or (host.startswith("[") != host.endswith("]")):
        raise ConfigError(f"{what} {text!r} is not HOST:PORT; e.g. {example} (port 0: any free port when listening)")
    host = host[1:-1] if host.startswith("[") else host
    return host or default_host, int(port)
