"""Crypto backends: the primitive interfaces and the registry that picks an implementation by name.

Built in: ``cryptography`` (always) and ``liboqs`` (when liboqs-python and its shared library
are installed).  A distribution adds one through the ``hybridkex.backends`` entry-point group,
naming a :class:`Backend` subclass.
"""

from ._interface import KEM, KEM_NAMES, KEM_SIZES, SIG_NAMES, SIG_SIZES, Backend, KeyAgreement, SignatureScheme
from ._registry import AUTO_ORDER, available_backends, backend_names, get_backend, register_backend

__all__ = [
    "Backend", "KEM", "KeyAgreement", "SignatureScheme", "KEM_NAMES", "SIG_NAMES", "KEM_SIZES", "SIG_SIZES",
    "get_backend", "available_backends", "backend_names", "register_backend", "AUTO_ORDER",
]
