"""Exponential backoff with jitter, the one retry schedule every loop in hybridkex uses."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number *n* (1, 2, ...): ``initial * factor**(n-1)``, at most ``maximum``,
    stretched by a random factor in ``[1, 1 + jitter)`` so that many clients do not retry in step."""

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or self.jitter < 0:
            raise ValueError(f"bad backoff {self!r}: need 0 < initial <= maximum, factor >= 1, jitter >= 0")

    def delay(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(max(attempt, 1) - 1, 64))
        return base * (1 + uniform(0.0, self.jitter)) if self.jitter else base
