"""STITCH_SHARDS > 1: one Worker per shard of STITCH_SHARD_SUBSET in one process, each in its
own thread on its own connection (XREADGROUP BLOCK per shard: an idle shard costs no busy
loop), sharing the metrics, the probes and the override table (worker/placement.py)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from resolver.sharding import OVERRIDES_KEY

from .config import Settings
from .connection import connect
from .health import Health
from .metrics import Metrics
from .placement import OVERRIDES_REFRESH_S, Overrides, Placement
from .worker import Worker

__all__ = ["JOIN_POLL_S", "Fleet", "FleetHealth"]

JOIN_POLL_S = 0.2
"""The main thread waits in short joins, so signal handlers run promptly."""


class Fleet:
    """Started and stopped as one worker: a stop reaches every shard; the first shard that
    fails (Redis gone past the give-up time) stops the others and its error is raised."""

    def __init__(self, settings: Settings, workers: list[Worker], overrides: Overrides) -> None:
        self.settings = settings
        self.workers = workers
        self.overrides = overrides
        self.refresh_s = OVERRIDES_REFRESH_S
        self._stop = threading.Event()
        self._errors: list[BaseException] = []

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, log: Any) -> Fleet:
        """No I/O yet: ``run`` reads the override table before any shard starts."""
        overrides = Overrides(
            connect(settings, route_key=OVERRIDES_KEY), settings.shards, metrics, log
        )
        workers = []
        for shard in settings.shard_numbers:
            own = settings.for_shard(shard)
            client = connect(own, route_key=own.input_stream)
            placement = Placement(settings, shard, overrides)
            health = Health(settings.stall_after_s)
            workers.append(Worker(own, client, metrics, log.bind(shard=shard), health, placement))
        return cls(settings, workers, overrides)

    @property
    def health(self) -> Health:
        """What the probes answer for the whole process: every shard's loop must be live
        (one stalled shard is a stalled worker) and ready."""
        return FleetHealth([worker.health for worker in self.workers])

    def request_stop(self) -> None:
        """Called from a signal handler: only sets flags."""
        self._stop.set()
        for worker in self.workers:
            worker.request_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def summary(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for worker in self.workers:
            totals.update(worker.totals)
        return dict(sorted(totals.items()))

    def run(self, *, drain: bool = False) -> None:
        self.overrides.load(self.settings.reconnect_give_up_s, self._stop)
        if self.stopping:
            return
        self.overrides.watch(self._stop, self.refresh_s)
        threads = [
            threading.Thread(
                target=self._run_one, args=(worker, drain), name=f"shard-{shard}", daemon=True
            )
            for shard, worker in zip(self.settings.shard_numbers, self.workers, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(JOIN_POLL_S)
        self._stop.set()
        if self._errors:
            raise self._errors[0]

    def _run_one(self, worker: Worker, drain: bool) -> None:
        try:
            worker.run(drain=drain)
        except BaseException as exc:
            self._errors.append(exc)
            self.request_stop()


class FleetHealth(Health):
    """Every shard's Health as one: live and ready only while each of them is."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Health]) -> None:
        super().__init__(parts[0].stall_after_s)
        self.parts = parts

    @property
    def live(self) -> bool:
        return all(part.live for part in self.parts)

    @property
    def ready(self) -> bool:
        return all(part.ready for part in self.parts)
