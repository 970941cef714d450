"""Exponential backoff with full jitter, and the give-up deadline for a Redis outage."""

from __future__ import annotations

import random
import time

__all__ = ["Backoff"]

BASE_S = 0.05
CAP_S = 5.0


class Backoff:
    """Delays 0..min(cap, base * 2**n); raises nothing, the caller decides when to give up."""

    __slots__ = ("attempts", "give_up_at", "started_at")

    def __init__(self, give_up_after_s: float) -> None:
        self.started_at = time.monotonic()
        self.give_up_at = self.started_at + give_up_after_s
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(CAP_S, BASE_S * 2 ** min(self.attempts, 16))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.give_up_at

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at
