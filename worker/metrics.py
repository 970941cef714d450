"""Prometheus metrics on an explicit registry.

One ``stitch_`` prefix, base units, no tenant or user ids as labels.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from resolver.feed import ChangeOp
from resolver.links import LinkOutcome

from .deadletters import DeadLetter
from .server_state import ERROR_KINDS

__all__ = ["DEAD_LETTER_REASONS", "IDENTIFY_OUTCOMES", "GroupStats", "Metrics", "observe_many"]

IDENTIFY_OUTCOMES = tuple(outcome.value for outcome in LinkOutcome)
NOT_LOGGED = (LinkOutcome.APPLIED, LinkOutcome.NOOP, LinkOutcome.FORGOTTEN)
"""A forgotten identify is not logged: the log would keep the erased ids."""
REFUSAL_OUTCOMES = tuple(o.value for o in LinkOutcome if o not in NOT_LOGGED)
CHANGE_OPS = (ChangeOp.LINK.value,)
"""The worker writes links only; unlink, block and forget come from the operator commands."""
DEAD_LETTER_REASONS = tuple(code.value for code in DeadLetter)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
DEPTH_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32)


class GroupStats(NamedTuple):
    lag: int | None
    """None when Redis reports lag as NULL (after some XDEL/XTRIM): unknown, not zero."""
    pending: int
    consumers: list[tuple[str, int, float]]
    """(name, pending entries, idle seconds) of every consumer in the group."""


class _GroupCollector(Collector):
    """Reads XINFO GROUPS at scrape time, so the gauges are never older than the scrape; one
    reader per shard the process works on, each series labelled with its shard."""

    def __init__(self) -> None:
        self.readers: dict[str, Callable[[], GroupStats]] = {}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """What collect() yields, without asking Redis: registering does no I/O."""
        return self._families([("0", GroupStats(0, 0, []))])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        read = [(shard, _read(stats)) for shard, stats in list(self.readers.items())]
        return self._families([(shard, stats) for shard, stats in read if stats is not None])

    @staticmethod
    def _families(shards: list[tuple[str, GroupStats]]) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "stitch_group_lag",
            "Entries in the shard's input stream not yet delivered to the group.",
            labels=["shard"],
        )
        group_pending = GaugeMetricFamily(
            "stitch_group_pending",
            "Entries delivered to the shard's group but not yet acked.",
            labels=["shard"],
        )
        pending = GaugeMetricFamily(
            "stitch_consumer_pending",
            "Pending entries per consumer of the shard's group.",
            labels=["shard", "consumer"],
        )
        idle = GaugeMetricFamily(
            "stitch_consumer_idle_seconds",
            "Seconds since each consumer of the shard's group last read.",
            labels=["shard", "consumer"],
        )
        for shard, stats in shards:
            if stats.lag is not None:
                lag.add_metric([shard], stats.lag)
            group_pending.add_metric([shard], stats.pending)
            for name, count, idle_s in stats.consumers:
                pending.add_metric([shard, name], count)
                idle.add_metric([shard, name], idle_s)
        if lag.samples:
            yield lag
        yield group_pending
        yield pending
        yield idle


def _read(read_stats: Callable[[], GroupStats]) -> GroupStats | None:
    try:
        return read_stats()
    except Exception:  # a scrape must not fail because Redis (or one shard's node) is down
        return None


class Metrics:
    """Every metric lehnz-stitch exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._groups: _GroupCollector | None = None
        r = self.registry
        self.entries_read = Counter("stitch_entries_read", "Stream entries read.", registry=r)
        self.events_emitted = Counter(
            "stitch_events_emitted", "Enriched events written to the output stream.", registry=r
        )
        self.dead_letters = Counter(
            "stitch_dead_letters",
            "Entries written to the dead-letter stream, by reason code.",
            ["reason"],
            registry=r,
        )
        self.identify = Counter(
            "stitch_identify", "Identify events by link outcome.", ["outcome"], registry=r
        )
        self.changes = Counter(
            "stitch_changes",
            "Entries appended to the change feed (alias map changes), by op.",
            ["op"],
            registry=r,
        )
        self.refusals = Counter(
            "stitch_refusals",
            "Refused identifies written to their tenant's refusal log, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.forgotten_events = Counter(
            "stitch_forgotten_events",
            "Entries acked but not emitted because their user_id is forgotten "
            "(STITCH_FORGOTTEN_EVENTS=drop).",
            registry=r,
        )
        self.reclaimed = Counter(
            "stitch_entries_reclaimed",
            "Entries claimed from idle consumers (XAUTOCLAIM).",
            registry=r,
        )
        self.redeliveries = Counter(
            "stitch_redeliveries",
            "Entries read again after an earlier delivery (own pending list or reclaimed).",
            registry=r,
        )
        self.duplicates = Counter(
            "stitch_duplicates_suppressed",
            "Entries whose commit found them already acked, so nothing was emitted again.",
            registry=r,
        )
        self.deleted_pending = Counter(
            "stitch_deleted_pending",
            "Pending entries whose payload was deleted or trimmed; acked without output.",
            registry=r,
        )
        self.stale_commits = Counter(
            "stitch_stale_commits",
            "Commits refused because another replica changed a link first; retried.",
            registry=r,
        )
        self.under_replicated = Counter(
            "stitch_commits_under_replicated",
            "Commits fewer replicas than STITCH_WAIT_REPLICAS acknowledged within "
            "STITCH_WAIT_TIMEOUT_MS (kept: a failover may lose them).",
            registry=r,
        )
        self.reconnects = Counter(
            "stitch_reconnects", "Successful reconnects to Redis.", registry=r
        )
        self.redis_errors = Counter(
            "stitch_redis_errors",
            "Redis errors the worker backed off from, by kind: connection, timeout, nogroup "
            "(a link lost) or the code of a Redis refusing commands (oom, readonly, loading, ...).",
            ["kind"],
            registry=r,
        )
        self.consumers_removed = Counter(
            "stitch_consumers_removed",
            "Idle consumers with nothing pending removed from the group.",
            registry=r,
        )
        self.resolver_cycles = Counter(
            "stitch_resolver_cycles",
            "Resolutions that met a cycle (written by someone else) in the alias map.",
            registry=r,
        )
        self.cache_hits = Counter(
            "stitch_resolver_cache_hits", "Ids resolved from the in-process cache.", registry=r
        )
        self.cache_misses = Counter(
            "stitch_resolver_cache_misses", "Ids whose chain had to be read from Redis.", registry=r
        )
        self.cache_entries = Gauge(
            "stitch_resolver_cache_entries", "Entries in the in-process alias cache.", registry=r
        )
        self.batch_seconds = Histogram(
            "stitch_batch_duration_seconds",
            "Time to process and commit one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delay_seconds = Histogram(
            "stitch_end_to_end_delay_seconds",
            "From the input entry's id time to its emit (commit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chain_depth = Histogram(
            "stitch_chain_depth",
            "Links walked for ids whose chain was read from Redis.",
            buckets=DEPTH_BUCKETS,
            registry=r,
        )
        self.last_commit = Gauge(
            "stitch_last_commit_timestamp_seconds",
            "Unix time of the last successful commit.",
            registry=r,
        )
        self.redis_up = Gauge(
            "stitch_redis_connected", "1 while the worker's Redis connection works.", registry=r
        )
        for outcome in IDENTIFY_OUTCOMES:
            self.identify.labels(outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for op in CHANGE_OPS:
            self.changes.labels(op)
        for outcome in REFUSAL_OUTCOMES:
            self.refusals.labels(outcome)
        for kind in ERROR_KINDS:
            self.redis_errors.labels(kind)

    def watch_group(self, read_stats: Callable[[], GroupStats], shard: int = 0) -> None:
        """Export the group gauges of ``shard`` (one Metrics serves every shard's worker)."""
        if self._groups is None:
            self._groups = _GroupCollector()
            self.registry.register(self._groups)
        self._groups.readers[str(shard)] = read_stats

    def committed(self) -> None:
        self.last_commit.set(time.time())


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Observe a whole batch with one increment per touched bucket instead of one per value.

    Same result as ``observe()`` in a loop (bucket = first upper bound >= value); it reads
    the client's bucket list, so it falls back to the loop if that layout ever changes.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    for index, count in Tally(bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)
    total.inc(sum(values))
