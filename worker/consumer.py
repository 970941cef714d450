"""The daemon: startup -> loop -> shutdown over one consumer of the input stream's group."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resolver import Resolver
from resolver.links import LinkOutcome, LinkRules

from .backoff import Backoff
from .batch import Plan, Planner
from .commit import Committed, Committer, Stale
from .config import Settings
from .errors import RedisUnavailableError, StaleCommitError
from .health import Health
from .metrics import GroupStats, Metrics, observe_many
from .schema import Entry, Kind, Parser
from .scripts import DELCONSUMER_LUA, Script
from .streams import RawEntry, Streams

__all__ = ["Worker"]

MAX_STALE_RETRIES = 8
"""Each retry re-reads what changed; only a hot, contested id could need more."""
PROGRESS_EVERY_S = 30.0
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class Worker:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        metrics: Metrics,
        log: Any,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.log = log
        self.health = health if health is not None else Health(stall_after_s=60.0)
        self.streams = Streams(client, settings.input_stream, settings.group, settings.consumer)
        self.parser = Parser(settings.max_event_bytes)
        rules = LinkRules(settings.placeholders)
        self.resolver = Resolver(
            client,
            key_prefix=settings.alias_prefix,
            cache_size=settings.cache_size,
            max_depth=settings.max_chain_depth,
            rules=rules,
        )
        self.planner = Planner(self.resolver, rules, forward_identify=settings.forward_identify)
        self.committer = Committer(settings)
        self.totals: Counter[str] = Counter()
        self._stop = threading.Event()
        self._delconsumer = Script(DELCONSUMER_LUA)
        self._recover_pending = True
        metrics.watch_group(self.group_stats)
        self._next_maintenance = 0.0
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S

    # lifecycle -------------------------------------------------------------------------

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
        self._with_reconnect(self._connect)
        self.log.info(
            "started",
            stream=self.settings.input_stream,
            group=self.settings.group,
            batch_size=self.settings.batch_size,
        )

    def loop(self, *, drain: bool = False) -> None:
        while not self.stopping:
            if self._with_reconnect(self._step) == 0 and drain and self._drained():
                self.log.info("drained")
                return

    def shutdown(self) -> None:
        self.health.group_ready = False
        self.log.info("stopped", **self.summary())

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.totals.items()))

    # one iteration -----------------------------------------------------------------------

    def _step(self) -> int:
        """Maintenance when due, then one read of new entries; returns entries handled."""
        now = time.monotonic()
        self.health.beat()
        if self._recover_pending:
            self.recover_own_pending()
            self._recover_pending = False
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.claim_interval_ms / 1000
            self.reclaim()
            self.remove_idle_consumers()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY_S
            self.log.info("progress", cache_entries=len(self.resolver.cache), **self.summary())
        entries = self.streams.read(self.settings.batch_size, self.settings.block_ms)
        if entries:
            try:
                self.process(entries)
            except StaleCommitError as exc:
                self.log.error("batch left pending for reclaim", error=str(exc))
        return len(entries)

    def _drained(self) -> bool:
        return self.reclaim() == 0 and not self.streams.read(1, None, "0")

    # recovery ----------------------------------------------------------------------------

    def recover_own_pending(self) -> int:
        """Re-read and finish what this consumer name had pending before a restart."""
        handled, start = 0, "0"
        while not self.stopping:
            entries = self.streams.read(self.settings.batch_size, None, start)
            if not entries:
                break
            self.process(entries, counts=self.streams.delivery_counts(entries))
            self.metrics.redeliveries.inc(len(entries))
            handled += len(entries)
            start = entries[-1][0].decode()
        if handled:
            self.log.info("recovered pending entries", entries=handled)
        return handled

    def reclaim(self) -> int:
        """XAUTOCLAIM entries idle past the threshold from any consumer, to the cursor's end."""
        cursor, claimed = b"0-0", 0
        while not self.stopping:
            cursor, entries, deleted = self.streams.autoclaim(
                self.settings.claim_idle_ms, cursor, self.settings.batch_size
            )
            self._count("deleted_pending", deleted, self.metrics.deleted_pending)
            if entries:
                self.process(entries, counts=self.streams.delivery_counts(entries))
                self._count("reclaimed", len(entries), self.metrics.reclaimed)
                self.metrics.redeliveries.inc(len(entries))
                claimed += len(entries)
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            self.log.info("reclaimed idle entries", entries=claimed)
        return claimed

    def remove_idle_consumers(self) -> None:
        for info in self.streams.consumers():
            name = info[b"name"].decode()
            if (
                name == self.settings.consumer
                or int(info[b"pending"]) > 0
                or int(info[b"idle"]) < self.settings.consumer_idle_ms
            ):
                continue
            if (
                self._delconsumer(
                    self.client,
                    [self.settings.input_stream],
                    [self.settings.group, name, self.settings.consumer_idle_ms],
                )
                == 1
            ):
                self.metrics.consumers_removed.inc()
                self.log.info("removed idle consumer", removed_consumer=name)

    # processing --------------------------------------------------------------------------

    def process(self, raw: list[RawEntry], counts: dict[bytes, int] | None = None) -> None:
        started = time.perf_counter()
        entries = [self._parse(eid, fields, counts) for eid, fields in raw]
        plan, result = self._commit_with_retries(entries)
        self._learn_links(plan, result)
        self._account(entries, plan, result)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.committed()
        self.health.beat()

    def _parse(
        self, eid: bytes, fields: list[bytes] | None, counts: dict[bytes, int] | None
    ) -> Entry:
        if counts is not None and fields is not None:
            delivered = counts.get(eid, 1)
            if delivered > self.settings.max_deliveries:
                return Entry(eid, fields).reject(
                    "max_deliveries_exceeded",
                    f"delivered {delivered} times, limit {self.settings.max_deliveries}",
                )
        return self.parser.parse(eid, fields)

    def _commit_with_retries(self, entries: list[Entry]) -> tuple[Plan, Committed]:
        for _ in range(MAX_STALE_RETRIES):
            plan = self.planner.plan(entries)
            result = self.committer.commit(self.client, plan)
            if isinstance(result, Committed):
                return plan, result
            self._forget_stale(plan, result)
        raise StaleCommitError(
            f"batch {entries[0].id!r}.. stayed stale after {MAX_STALE_RETRIES} tries"
        )

    def _forget_stale(self, plan: Plan, stale: Stale) -> None:
        self.metrics.stale_commits.inc()
        by_index = {index: tenant for tenant, index in plan.tenants.items()}
        cache = self.resolver.cache
        for index, uid, target in stale.roots:
            cache.put(by_index[index], uid, target)
        if stale.links:
            tenants = {by_index[plan.links[4 * n]] for n in stale.links}
            self.resolver.forget(tenants)
        self.log.info(
            "commit found stale links, retrying", roots=len(stale.roots), links=len(stale.links)
        )

    def _learn_links(self, plan: Plan, result: Committed) -> None:
        cache = self.resolver.cache
        for tenant, prev, user in plan.applied_links():
            cache.put(tenant, prev, user)

    def _account(self, entries: list[Entry], plan: Plan, result: Committed) -> None:
        m, totals = self.metrics, self.totals
        n = len(entries)
        self._count("read", n, m.entries_read)
        self._count("emitted", result.emitted, m.events_emitted)
        self._count("duplicates", len(result.duplicates), m.duplicates)
        skip = {entries[i].id for i in result.duplicates}
        now_ms = time.time() * 1000
        delays = []
        for entry in entries:
            if entry.id in skip:
                continue
            if entry.kind is Kind.EVENT:
                delays.append((now_ms - int(entry.id.split(b"-", 1)[0])) / 1000)
            elif entry.kind is Kind.INVALID:
                m.dead_letters.labels(entry.error_code).inc()
                totals["dead:" + entry.error_code] += 1
                self.log.warning("dead-lettered", entry_id=entry.id.decode(), error=entry.error)
            elif entry.kind is Kind.GONE:
                self._count("deleted_pending", 1, m.deleted_pending)
        observe_many(m.delay_seconds, delays)
        for outcome in (*plan.local_outcomes, *result.outcomes):
            m.identify.labels(outcome.value).inc()
            totals["identify:" + outcome.value] += 1
            if outcome in (LinkOutcome.CONFLICT, LinkOutcome.CYCLE):
                self.log.info("link refused", outcome=outcome.value)
        self._resolver_stats()
        self._next_log_batch(plan, result)

    def _resolver_stats(self) -> None:
        planner, m = self.planner, self.metrics
        m.cache_hits.inc(planner.cache_hits)
        m.cache_misses.inc(planner.cache_misses)
        m.resolver_cycles.inc(planner.cycles)
        for depth in planner.depths:
            m.chain_depth.observe(depth)
        planner.cache_hits = planner.cache_misses = planner.cycles = 0
        planner.depths.clear()
        m.cache_entries.set(len(self.resolver.cache))

    def _next_log_batch(self, plan: Plan, result: Committed) -> None:
        self.log.debug(
            "batch committed",
            entries=plan.n_entries,
            emitted=result.emitted,
            dead=result.dead_lettered,
            links=plan.n_links,
        )

    def _count(self, name: str, amount: int, counter: Any) -> None:
        if amount:
            self.totals[name] += amount
            counter.inc(amount)

    # connection --------------------------------------------------------------------------

    def _connect(self) -> None:
        self.client.ping()
        self.health.connected = True
        self.metrics.redis_up.set(1)
        if self.streams.ensure_group(self.settings.group_start_id):
            self.log.info("created consumer group", start_id=self.settings.group_start_id)
        self.health.group_ready = True

    def _with_reconnect(self, action: Any) -> Any:
        """Run ``action``; on a connection failure back off, reconnect and run it again."""
        backoff: Backoff | None = None
        while True:
            try:
                result = action()
            except OUTAGE_ERRORS as exc:
                backoff = self._outage(backoff, exc)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                backoff = self._outage(backoff, exc)
                continue
            if backoff is not None:
                self._recovered(backoff)
            return result

    def _outage(self, backoff: Backoff | None, exc: Exception) -> Backoff:
        if backoff is None:
            backoff = Backoff(self.settings.reconnect_give_up_s)
            self.health.connected = False
            self.metrics.redis_up.set(0)
            self.log.warning("redis unavailable, reconnecting", error=str(exc))
        if backoff.expired:
            raise RedisUnavailableError(
                f"Redis unreachable for {backoff.elapsed_s:.0f}s "
                f"(STITCH_RECONNECT_GIVE_UP_S={self.settings.reconnect_give_up_s:g}): {exc}"
            )
        self._stop.wait(backoff.next_delay())
        self.health.beat()
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._connect()
        return backoff

    def _recovered(self, backoff: Backoff) -> None:
        self.metrics.reconnects.inc()
        self.totals["reconnects"] += 1
        # Redis may have lost links (no AOF) or scripts; start from what it holds now.
        self.resolver.forget()
        self._recover_pending = True
        self.log.info(
            "redis reconnected", attempts=backoff.attempts, outage_s=round(backoff.elapsed_s, 3)
        )

    # scrape-time gauges --------------------------------------------------------------------

    def group_stats(self) -> GroupStats:
        info = self.streams.group_info()
        if info is None:
            return GroupStats(None, 0, [])
        lag = info.get(b"lag")
        consumers = [
            (c[b"name"].decode(), int(c[b"pending"]), int(c[b"idle"]) / 1000)
            for c in self.streams.consumers()
        ]
        return GroupStats(None if lag is None else int(lag), int(info[b"pending"]), consumers)
