"""What the worker does as its Redis link drops and comes back (see outage.OutageHooks)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from .config import Settings
from .health import Health
from .metrics import Metrics
from .outage import Outage
from .pipeline import Pipeline
from .planner import Planner
from .recovery import Recovery
from .server_state import CONNECTION_KINDS, outage_kind
from .stream import InputStream

__all__ = ["Reconnection"]


class Reconnection:
    __slots__ = (
        "_client",
        "_health",
        "_log",
        "_metrics",
        "_pipeline",
        "_planner",
        "_recovery",
        "_settings",
        "_stream",
        "_totals",
    )

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        stream: InputStream,
        pipeline: Pipeline,
        planner: Planner,
        recovery: Recovery,
        health: Health,
        metrics: Metrics,
        totals: Counter[str],
        log: Any,
    ) -> None:
        self._settings = settings
        self._client = client
        self._stream = stream
        self._pipeline = pipeline
        self._planner = planner
        self._recovery = recovery
        self._health = health
        self._metrics = metrics
        self._totals = totals
        self._log = log

    def connect(self) -> None:
        """Ping and make sure the group exists (also the worker's start-up step)."""
        self._client.ping()
        self._health.connected = True
        self._metrics.redis_up.set(1)
        if self._stream.ensure_group(self._settings.group_start_id):
            self._log.info("created consumer group", start_id=self._settings.group_start_id)
        self._health.group_ready = True

    def went_down(self, exc: Exception) -> None:
        self._health.in_outage = True
        if outage_kind(exc) in CONNECTION_KINDS:  # a Redis refusing commands is connected
            self._health.connected = False
            self._metrics.redis_up.set(0)
        self._pipeline.drop()  # what was in hand is pending in Redis: recovery re-reads it,
        self._recovery.due = True  # even if the step works again before a reconnect does
        # every pooled connection too: the next one connects afresh, to the new primary after
        # a failover (an address that answers READONLY now is a replica)
        self._client.connection_pool.disconnect()

    def failed(self, kind: str) -> None:
        self._metrics.redis_errors.labels(kind).inc()
        # every failed attempt, not only the first: a retried step may have read entries
        # (its own pending ones, or new ones behind a refused commit) before failing, and
        # they must be re-read when the outage ends, not left to the idle reclaim
        self._pipeline.drop()
        self._recovery.due = True

    def reconnected(self) -> None:
        # Redis may have lost links (no AOF) or scripts: start from what it holds now,
        # before the interrupted step runs again
        self._planner.forget()
        self._recovery.due = True

    def recovered(self, outage: Outage) -> None:
        self._health.in_outage = False
        if outage.link_lost:
            self._metrics.reconnects.inc()
            self._totals["reconnects"] += 1
        backoff = outage.backoff
        self._log.info(
            "redis reconnected" if outage.link_lost else "redis accepting commands again",
            kind=outage.kind,
            reason=outage.error,
            attempts=backoff.attempts,
            outage_s=round(backoff.elapsed_s, 3),
        )

    def beat(self) -> None:
        self._health.beat()
