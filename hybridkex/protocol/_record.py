"""Frozen records that are cheap to make.

A handshake makes some thirty small immutable records (messages, payloads, events, its result).
``dataclass(frozen=True)`` sets each field through ``object.__setattr__``, about 0.3 us a field,
which adds up to a measurable share of the protocol's own work.  :func:`fast_init` keeps all a
frozen dataclass is (equality, repr, immutability afterwards, ``dataclasses.replace``) and gives
it an ``__init__`` that fills the instance dictionary in one call::

    @fast_init
    @dataclass(frozen=True)
    class SendMessage:
        data: bytes
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["fast_init"]

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Replace a frozen dataclass's ``__init__`` with one that sets every field at once.

    Only for plain records: every field in ``__init__``, no ``default_factory``, no
    ``__post_init__`` and no ``__slots__`` (each would need the generated code dataclasses writes).
    It pays from three fields up: below that the instance dictionary costs more than it saves."""
    record: Any = cls
    params = dataclasses.fields(record)
    if not record.__dataclass_params__.frozen or hasattr(cls, "__post_init__") or \
            "__slots__" in cls.__dict__ or any(not f.init or f.default_factory is not dataclasses.MISSING
                                               for f in params):
        raise TypeError(f"fast_init: {cls.__name__} is not a plain frozen dataclass")
    defaults: dict[str, Any] = {}
    signature = []
    for f in params:
        if f.default is dataclasses.MISSING:
            signature.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
    fill = ", ".join(f"{f.name}={f.name}" for f in params)
    source = f"def __init__(self, {', '.join(signature)}):\n    self.__dict__.update({fill})\n"
    namespace: dict[str, Any] = {}
    exec(source, defaults, namespace)  # noqa: S102 - built from field names only, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = record.__init__.__doc__
    record.__init__ = init
    return cls
