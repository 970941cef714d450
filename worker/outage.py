"""Running the worker's steps through Redis outages.

Two kinds (see server_state.py): a link lost (connection loss, a Redis restart, a timeout, or
NOGROUP: a Redis that came back empty has lost the group, and reconnecting recreates it), and
a live Redis refusing commands for its own state (OOM, READONLY, LOADING, BUSY, ...). Either
way: back off with full jitter, log once when the outage starts, once if its kind changes and
once when it ends (never once per attempt), count every error by kind. A lost link gives up
after ``STITCH_RECONNECT_GIVE_UP_S``; a refusing Redis is waited out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import Backoff
from .errors import RedisUnavailableError
from .server_state import CONNECTION_KINDS, outage_kind

__all__ = ["OUTAGE_ERRORS", "Outage", "OutageHooks", "Reconnector"]

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
T = TypeVar("T")


class Outage:
    """One outage, from its first error to the step that finally worked."""

    __slots__ = ("backoff", "error", "kind", "link_lost", "lost")

    def __init__(self, give_up_s: float, kind: str, error: Exception) -> None:
        self.backoff = Backoff(give_up_s)
        """Delays and attempts, and the outage's duration."""
        self.kind = kind
        self.error = str(error)
        """What started it (the reason logged when it ends)."""
        self.lost: Backoff | None = self.backoff if kind in CONNECTION_KINDS else None
        """Since when the link has been lost (the give-up clock); None while Redis answers."""
        self.link_lost = self.lost is not None
        """The link was lost at some point: the end of the outage is a reconnect."""

    @property
    def refusing(self) -> bool:
        """Redis answers, but refuses commands for its own state."""
        return self.kind not in CONNECTION_KINDS


class OutageHooks(Protocol):
    def connect(self) -> None:
        """Ping, and make sure the group exists; raises an outage error if Redis is down."""

    def went_down(self, exc: Exception) -> None:
        """The first failure of an outage: drop what is in hand (it stays pending)."""

    def failed(self, kind: str) -> None:
        """Any error of an outage, the first included: counted by kind, and what the failed
        attempt had in hand dropped (it stays pending, to be re-read)."""

    def reconnected(self) -> None:
        """A reconnect worked: forget what Redis may have lost before the step runs again."""

    def recovered(self, outage: Outage) -> None:
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
        outage: Outage | None = None
        while True:
            try:
                result = action()
            except Exception as exc:
                kind = outage_kind(exc)
                if kind is None:
                    raise
                self._hooks.failed(kind)
                if self._stop.is_set():
                    if outage is None:
                        self._hooks.went_down(exc)  # what was in flight is gone with the link
                    self._log.warning(
                        "stopping during a redis outage; uncommitted entries stay pending",
                        error=str(exc),
                        kind=kind,
                    )
                    return when_stopped
                outage = self._wait(outage, kind, exc)
                continue
            if outage is not None:
                self._hooks.recovered(outage)
            return result

    def _wait(self, outage: Outage | None, kind: str, exc: Exception) -> Outage:
        if outage is None:
            outage = Outage(self._give_up_s, kind, exc)
            self._hooks.went_down(exc)
            if outage.refusing:
                self._log.warning("redis refusing commands, retrying", kind=kind, error=str(exc))
            else:
                self._log.warning("redis unavailable, reconnecting", kind=kind, error=str(exc))
        else:
            self._changed(outage, kind, exc)
        if outage.lost is not None and outage.lost.expired:
            raise RedisUnavailableError(
                f"Redis unreachable for {outage.lost.elapsed_s:.0f}s "
                f"(STITCH_RECONNECT_GIVE_UP_S={self._give_up_s:g}): {exc}"
            )
        self._stop.wait(outage.backoff.next_delay())
        self._hooks.beat()
        try:
            self._hooks.connect()
        except Exception as failed:
            failed_kind = outage_kind(failed)
            if failed_kind is None:
                raise
            self._hooks.failed(failed_kind)
            self._changed(outage, failed_kind, failed)
            return outage
        self._hooks.reconnected()
        return outage

    def _changed(self, outage: Outage, kind: str, exc: Exception) -> None:
        """A new kind of trouble within the outage: logged once, and the give-up clock runs
        only while the link is lost (a Redis that answers is waited out)."""
        if kind == outage.kind:
            return
        outage.kind = kind
        if outage.refusing:
            outage.lost = None
        elif outage.lost is None:
            outage.lost = Backoff(self._give_up_s)
            outage.link_lost = True
        self._log.warning("redis outage changed", kind=kind, error=str(exc))
