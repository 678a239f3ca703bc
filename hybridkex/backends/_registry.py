"""Backends by name, found through the ``hybridkex.backends`` entry-point group."""

from __future__ import annotations

from .._errors import BackendUnavailable
from .._registry import Registry
from ._interface import Backend

__all__ = ["get_backend", "available_backends", "register_backend", "backend_names", "AUTO_ORDER"]

#: order in which ``auto`` tries backends
AUTO_ORDER = ("liboqs", "cryptography")


def _check(value: object) -> type[Backend]:
    if not (isinstance(value, type) and issubclass(value, Backend)):
        raise TypeError(f"a hybridkex backend entry point must name a Backend subclass, not {value!r}")
    return value


_REGISTRY: Registry[type[Backend]] = Registry("hybridkex.backends", {
    "cryptography": "hybridkex.backends._cryptography:CryptographyBackend",
    "liboqs": "hybridkex.backends._liboqs:LiboqsBackend",
}, _check)
_PROBED: dict[str, str | None] = {}
_CACHE: dict[str, Backend] = {}


def register_backend(name: str, backend: type[Backend]) -> None:
    """Add a backend class at run time (distributions use the entry point instead)."""
    _REGISTRY.register(name, backend)
    _PROBED.pop(name, None)
    _CACHE.pop(name, None)


def backend_names() -> list[str]:
    """Every known backend name, without importing any backend."""
    return _REGISTRY.names()


def _probe(name: str) -> str | None:
    """A backend's probe result, computed once per process (probes build keys; that is not free)."""
    if name not in _PROBED:
        cls = _REGISTRY.get(name)
        _PROBED[name] = f"no backend {name!r} is installed" if cls is None else cls.probe()
    return _PROBED[name]


def available_backends() -> dict[str, str | None]:
    """Map each known backend to None (usable) or the reason it is not."""
    return {name: _probe(name) for name in backend_names()}


def get_backend(name: str = "auto") -> Backend:
    """Return a backend by name: ``auto`` or one of :func:`backend_names` (``cryptography``, ``liboqs``, ...)."""
    if name == "auto":
        names = backend_names()
        for candidate in [n for n in AUTO_ORDER if n in names] + [n for n in names if n not in AUTO_ORDER]:
            if _probe(candidate) is None:
                return get_backend(candidate)
        raise BackendUnavailable("no crypto backend is usable; install 'cryptography>=48'")
    if name not in _CACHE:
        cls = _REGISTRY.get(name)
        if cls is None:
            raise BackendUnavailable(f"unknown backend {name!r}; choose one of: auto, {', '.join(backend_names())}")
        reason = _probe(name)
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} is not usable here: {reason}")
        _CACHE[name] = cls()
    return _CACHE[name]
