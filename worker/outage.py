"""Running the worker's steps through Redis outages.

Connection loss, a Redis restart or a timeout: back off with full jitter, log once when the
outage starts and once when it ends (never once per attempt), and give up after
``STITCH_RECONNECT_GIVE_UP_S``. NOGROUP counts as an outage too: a Redis that came back
empty has lost the group, and reconnecting recreates it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import Backoff
from .errors import RedisUnavailableError

__all__ = ["OUTAGE_ERRORS", "OutageHooks", "Reconnector"]

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
T = TypeVar("T")


class OutageHooks(Protocol):
    def connect(self) -> None:
        """Ping, and make sure the group exists; raises an outage error if Redis is down."""

    def went_down(self, exc: Exception) -> None:
        """The first failure of an outage: drop what is in hand (it stays pending)."""

    def reconnected(self) -> None:
        """A reconnect worked: forget what Redis may have lost before the step runs again."""

    def recovered(self, backoff: Backoff) -> None:
        """The interrupted step finally succeeded."""

    def beat(self) -> None:
        """Still alive while waiting (liveness)."""


class Reconnector:
    __slots__ = ("_give_up_s", "_hooks", "_log", "_stop")

    def __init__(
        self, give_up_s: float, stop: threading.Event, hooks: OutageHooks, log: Any
    ) -> None:
        self._give_up_s = give_up_s
        self._stop = stop
        self._hooks = hooks
        self._log = log

    def run(self, action: Callable[[], T], *, when_stopped: T) -> T:
        """Run ``action``, through outages; ``when_stopped`` if asked to stop meanwhile."""
        backoff: Backoff | None = None
        while True:
            try:
                result = action()
            except (*OUTAGE_ERRORS, ResponseError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" not in str(exc):
                    raise
                if self._stop.is_set():
                    if backoff is None:
                        self._hooks.went_down(exc)  # what was in flight is gone with the link
                    self._log.warning(
                        "stopping during a redis outage; uncommitted entries stay pending",
                        error=str(exc),
                    )
                    return when_stopped
                backoff = self._wait(backoff, exc)
                continue
            if backoff is not None:
                self._hooks.recovered(backoff)
            return result

    def _wait(self, backoff: Backoff | None, exc: Exception) -> Backoff:
        if backoff is None:
            backoff = Backoff(self._give_up_s)
            self._hooks.went_down(exc)
            self._log.warning("redis unavailable, reconnecting", error=str(exc))
        if backoff.expired:
            raise RedisUnavailableError(
                f"Redis unreachable for {backoff.elapsed_s:.0f}s "
                f"(STITCH_RECONNECT_GIVE_UP_S={self._give_up_s:g}): {exc}"
            )
        self._stop.wait(backoff.next_delay())
        self._hooks.beat()
        try:
            self._hooks.connect()
        except OUTAGE_ERRORS:
            return backoff
        self._hooks.reconnected()
        return backoff
