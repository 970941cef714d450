"""Which shard each tenant belongs to, as the worker sees it: the override table, re-read
every OVERRIDES_REFRESH_S seconds by one thread, and each shard worker's check that an
entry's tenant is its own (else the entry is dead-lettered as ``wrong_shard``)."""

from __future__ import annotations

import threading
from typing import Any

import redis

from resolver.sharding import OVERRIDES_KEY, parse_overrides, shard_of, workers_view

from .config import Settings
from .errors import ConfigError
from .metrics import Metrics
from .outage import Outage, Reconnector

__all__ = ["OVERRIDES_REFRESH_S", "Overrides", "Placement"]

OVERRIDES_REFRESH_S = 10.0
"""How stale a worker's copy of the override table may be (README: Scaling past one Redis)."""


class Overrides:
    """The override table (tenant -> shard) shared by every shard worker of the process, as
    the workers see it (a tenant being moved is already its target's: ``workers_view``).

    ``table`` is swapped whole, never changed in place, so readers in other threads see the
    old table or the new one; ``version`` grows with each change, so a worker knows when to
    forget the tenants it has already checked.
    """

    __slots__ = ("_client", "_log", "_metrics", "_shards", "table", "version")

    def __init__(self, client: redis.Redis, shards: int, metrics: Metrics, log: Any) -> None:
        self._client = client
        self._shards = shards
        self._metrics = metrics
        self._log = log
        self.table: dict[str, int] = {}
        self.version = 0

    def load(self, give_up_s: float, stop: threading.Event) -> None:
        """The first read, through outages (until ``give_up_s``): no shard may start
        without the table, or an overridden tenant's events would go to its hashed shard.
        A bad table is a ConfigError."""
        hooks = _Hooks(self._client, self._metrics)
        nothing: dict[bytes, bytes] = {}
        table = Reconnector(give_up_s, stop, hooks, self._log).run(self._read, when_stopped=nothing)
        try:
            self._swap(workers_view(parse_overrides(table, self._shards)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def refresh(self) -> None:
        """Read the table again; keep the last good one if Redis fails or the table is bad."""
        try:
            table = workers_view(parse_overrides(self._read(), self._shards))
        except (redis.RedisError, OSError, ValueError) as exc:
            self._log.warning("override table not re-read; keeping the last", error=str(exc))
            return
        if table != self.table:
            self._log.info("override table changed", overrides=len(table))
            self._swap(table)

    def watch(
        self, stop: threading.Event, every_s: float = OVERRIDES_REFRESH_S
    ) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(every_s):
                self.refresh()

        thread = threading.Thread(target=loop, name="overrides", daemon=True)
        thread.start()
        return thread

    def _read(self) -> dict[bytes, bytes]:
        return self._client.hgetall(OVERRIDES_KEY)  # type: ignore[return-value]

    def _swap(self, table: dict[str, int]) -> None:
        self.table = table
        self.version += 1


class Placement:
    """One shard worker's view: its shard, and where a tenant that is not its own belongs."""

    __slots__ = ("_base", "overrides", "seen_version", "shard")

    def __init__(self, base: Settings, shard: int, overrides: Overrides) -> None:
        self._base = base
        self.shard = shard
        self.overrides = overrides
        self.seen_version = overrides.version

    def misplaced(self, tenant: str) -> dict[str, Any] | None:
        """None for a tenant of this shard; else the ``wrong_shard`` dead letter's
        particulars: the tenant, its shard and that shard's input stream."""
        owner = shard_of(tenant, self._base.shards, self.overrides.table)
        if owner == self.shard:
            return None
        return {
            "tenant": tenant,
            "shard": owner,
            "stream": self._base.for_shard(owner).input_stream,
        }

    def changed(self) -> bool:
        """The table changed since the last call: tenants checked before must be again."""
        version = self.overrides.version
        if version == self.seen_version:
            return False
        self.seen_version = version
        return True


class _Hooks:
    """The override table's first read through an outage: nothing in hand to drop."""

    def __init__(self, client: redis.Redis, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    def connect(self) -> None:
        self._client.ping()

    def went_down(self, exc: Exception) -> None:
        self._client.connection_pool.disconnect()

    def failed(self, kind: str) -> None:
        self._metrics.redis_errors.labels(kind).inc()

    def reconnected(self) -> None:
        """Nothing cached to forget."""

    def recovered(self, outage: Outage) -> None:
        """Nothing to report beyond the Reconnector's log."""

    def beat(self) -> None:
        """No loop to keep alive yet."""
