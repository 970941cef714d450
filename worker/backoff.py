"""Exponential backoff with full jitter, and the give-up deadline for a Redis outage."""

from __future__ import annotations

import time

from redis.backoff import FullJitterBackoff

__all__ = ["BASE_S", "CAP_S", "Backoff"]

BASE_S = 0.05
CAP_S = 5.0
_MAX_DOUBLINGS = 16
"""The cap is reached long before; bounding the exponent keeps 2**n a small number."""


class Backoff:
    """Delays uniform in 0..min(cap, base * 2**n) (full jitter: replicas that lost the same
    Redis do not reconnect in step); raises nothing, the caller decides when to give up."""

    __slots__ = ("_jitter", "attempts", "give_up_at", "started_at")

    def __init__(self, give_up_after_s: float) -> None:
        self.started_at = time.monotonic()
        self.give_up_at = self.started_at + give_up_after_s
        self.attempts = 0
        self._jitter = FullJitterBackoff(cap=CAP_S, base=BASE_S)

    def next_delay(self) -> float:
        delay = self._jitter.compute(min(self.attempts, _MAX_DOUBLINGS))
        self.attempts += 1
        return delay

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.give_up_at

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at
