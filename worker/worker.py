"""The daemon: startup -> loop -> shutdown over one consumer of the input stream's group.

The Worker wires its parts and keeps the schedule; the parts do the work: the
:class:`~worker.pipeline.Pipeline` (steady state), :class:`~worker.recovery.Recovery`
(pending entries), the :class:`~worker.committer.Committer` and the
:class:`~worker.planner.Planner`, and :class:`~worker.reconnection.Reconnection` for outages.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from resolver import AliasCache
from resolver.links import LinkRules

from .accounting import Accountant
from .committer import Committer
from .config import Settings
from .connection import redact
from .health import Health
from .measuring import measure_alias_maps
from .metrics import Metrics
from .outage import Reconnector
from .parser import Parser
from .pipeline import Pipeline
from .placement import Placement
from .planner import Planner
from .reconnection import Reconnection
from .recovery import Recovery
from .replication import ReplicaWait
from .scripts import CommitCommand
from .stream import InputStream
from .wire import PipelinedConnection, RoundTrip

__all__ = ["PROGRESS_EVERY_S", "Worker"]

PROGRESS_EVERY_S = 30.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        metrics: Metrics,
        log: Any,
        health: Health | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.health = health if health is not None else Health(settings.stall_after_s)
        self._stop = threading.Event()
        self._client = client
        self.stream = InputStream(client, settings.input_stream, settings.group, settings.consumer)
        self.placement = placement
        """With STITCH_SHARDS > 1: this worker's shard; entries of other shards' tenants are
        dead-lettered (``wrong_shard``)."""
        self.parser = parser = Parser.from_settings(settings, placement)
        self.cache = AliasCache(settings.cache_size)
        self.planner = Planner(
            self.cache,
            LinkRules(settings.placeholders),
            CommitCommand(settings),
            key_prefix=settings.alias_prefix,
            forward_identify=settings.forward_identify,
            tombstone_key=settings.tombstone_key.encode() or None,
        )
        self.accounts = Accountant(metrics, self.health, self.cache, log)
        wait = ReplicaWait(
            settings.wait_replicas, settings.wait_timeout_ms, metrics.under_replicated, log
        )
        self.committer = Committer(
            RoundTrip(client), self.planner, self.accounts, metrics.stale_commits, log, wait
        )
        self.recovery = Recovery(
            settings, client, self.stream, parser, self.committer, self.accounts, self._stop, log
        )
        self.pipeline = Pipeline(
            settings,
            PipelinedConnection(client),
            self.stream,
            parser,
            self.planner,
            self.committer,
            self.recovery,
        )
        self.reconnection = Reconnection(
            settings, client, self.stream, self.pipeline, self.planner, self.recovery,
            self.health, metrics, self.accounts.totals, log,
        )  # fmt: skip
        self._reconnector = Reconnector(
            settings.reconnect_give_up_s, self._stop, self.reconnection, log
        )
        self._next_maintenance = 0.0
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S
        metrics.watch_group(self.stream.group_stats, placement.shard if placement else 0)

    @property
    def totals(self) -> Counter[str]:
        return self.accounts.totals

    def request_stop(self) -> None:
        """Called from a signal handler: only sets a flag."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, drain: bool = False) -> None:
        self.startup()
        try:
            self.loop(drain=drain)
        finally:
            self.shutdown()

    def startup(self) -> None:
        self._with_reconnect(self.reconnection.connect)
        self._with_reconnect(self._measure_alias_maps)
        self.log.info(
            "started",
            redis=redact(self.settings.redis_url),
            stream=self.settings.input_stream,
            group=self.settings.group,
            batch_size=self.settings.batch_size,
        )

    def loop(self, *, drain: bool = False) -> None:
        while not self.stopping:
            idle = self._with_reconnect(self._step) == 0
            if idle and drain and self._with_reconnect(self._drained):
                self.log.info("drained")
                break
        self._with_reconnect(self.pipeline.settle)

    def shutdown(self) -> None:
        self.health.group_ready = False
        self.pipeline.drop()
        self.log.info("stopped", **self.summary())

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.totals.items()))

    def _step(self) -> int:
        """Recovery and maintenance when due, then one turn of the pipeline."""
        now = time.monotonic()
        self.health.beat()
        if self.placement is not None and self.placement.changed():
            self.parser.tenants.forget()
        recovery = self.recovery
        if recovery.due:
            recovery.due = False
            self.pipeline.settle()
            recovery.own_pending()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.claim_interval_ms / 1000
            self.pipeline.settle()
            recovery.reclaim()
            recovery.remove_idle_consumers()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY_S
            self.log.info("progress", cache_entries=len(self.cache), **self.summary())
        if recovery.due:  # a batch was just left pending: recover it before reading on
            return 1
        return self.pipeline.turn()

    def _drained(self) -> bool:
        self.pipeline.settle()
        return self.recovery.reclaim() == 0 and self.stream.own_pending() == 0

    def _measure_alias_maps(self) -> int:
        settings = self.settings
        return measure_alias_maps(
            self._client, settings.alias_prefix, settings.max_chain_depth, self.log
        )

    def _with_reconnect(self, action: Callable[[], Any]) -> Any:
        return self._reconnector.run(action, when_stopped=0)
