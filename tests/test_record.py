"""fast_init keeps a frozen dataclass a frozen dataclass: only its construction is cheaper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from hybridkex.protocol._record import fast_init
from hybridkex.protocol._wire import QKDBlock, QKDStatus


@fast_init
@dataclass(frozen=True)
class _Point:
    x: int
    y: int = 2
    label: str = field(default="", repr=False, compare=False)


def test_construction_equality_repr_and_defaults_are_the_dataclass_ones() -> None:
    assert _Point(1) == _Point(1, 2) == _Point(x=1, y=2, label="other")
    assert _Point(1, 3) != _Point(1)
    assert repr(_Point(1, 3, "hidden")) == "_Point(x=1, y=3)"
    assert hash(_Point(1)) == hash(_Point(1, 2))
    assert dataclasses.replace(_Point(1), y=5) == _Point(1, 5)
    with pytest.raises(TypeError):
        _Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Point(1, 2, "a", "extra")  # type: ignore[call-arg]


def test_records_stay_immutable() -> None:
    point = _Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 5  # type: ignore[misc]
    block = QKDBlock(QKDStatus.OFF)
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.key_bits = 256  # type: ignore[misc]


def test_refuses_what_it_cannot_build() -> None:
    @dataclass
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class Factory:
        x: list[int] = field(default_factory=list)

    @dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Factory, Checked):
        with pytest.raises(TypeError, match="not a plain frozen dataclass"):
            fast_init(cls)
