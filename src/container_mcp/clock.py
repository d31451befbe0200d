"""Injectable time. Everything that expires or rate-limits takes a ``Clock``; tests pass a fake."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "system_clock"]

Clock = Callable[[], float]
"""Returns the current time in Unix seconds (float)."""

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
