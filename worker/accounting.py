"""What a committed batch adds to the metrics, the run's totals and the log."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from resolver import AliasCache
from resolver.feed import ChangeOp
from resolver.links import LinkOutcome

from .health import Health
from .metrics import Metrics, observe_many
from .parser import Entry, Kind
from .planner import Plan

if TYPE_CHECKING:
    from .committer import Committed

__all__ = ["Accountant"]

REFUSED = (LinkOutcome.CONFLICT, LinkOutcome.CYCLE, LinkOutcome.TOO_DEEP, LinkOutcome.BLOCKED)
LOGGED = (*REFUSED, LinkOutcome.PLACEHOLDER)
"""Outcomes commit.lua writes to the tenant's refusal log (when the entry's XACK returns 1)."""


class Accountant:
    """The committer's sink: metrics, the run's totals, the log and the liveness beat."""

    __slots__ = ("cache", "health", "log", "metrics", "tenants", "totals")

    def __init__(self, metrics: Metrics, health: Health, cache: AliasCache, log: Any) -> None:
        self.metrics = metrics
        self.health = health
        self.cache = cache
        self.log = log
        self.totals: Counter[str] = Counter()
        self.tenants: set[str] = set()
        """Every tenant a committed batch named (merge protection's gauges read them)."""

    def committed(
        self, entries: list[Entry], plan: Plan, result: Committed, elapsed_s: float
    ) -> None:
        self.batch(entries, plan, result)
        self.resolver(plan, result)
        self.tenants.update(plan.tenants)
        self.metrics.batch_seconds.observe(elapsed_s)
        self.health.beat()

    def count(self, name: str, amount: int, counter: Any) -> None:
        if amount:
            self.totals[name] += amount
            counter.inc(amount)

    def batch(self, entries: list[Entry], plan: Plan, result: Committed) -> None:
        m = self.metrics
        self.count("read", len(entries), m.entries_read)
        self.count("emitted", result.emitted, m.events_emitted)
        self.count("duplicates", len(result.duplicates), m.duplicates)
        dropped = set(result.dropped).difference(result.duplicates)
        self.count("forgotten_dropped", len(dropped), m.forgotten_events)
        skip = {entries[i].id for i in result.duplicates}
        now_ms = time.time() * 1000
        delays = []
        for entry in entries:
            if entry.id in skip:
                continue
            if entry.kind is Kind.EVENT:
                delays.append((now_ms - int(entry.id.split(b"-", 1)[0])) / 1000)
            elif entry.kind is Kind.INVALID:
                self._dead_letter(entry)
            elif entry.kind is Kind.GONE:
                self.count("deleted_pending", 1, m.deleted_pending)
        observe_many(m.delay_seconds, delays)
        self._links(entries, plan, result)
        m.committed()
        self.log.debug(
            "batch committed",
            first_id=entries[0].id.decode(),
            last_id=entries[-1].id.decode(),
            emitted=result.emitted,
            dead=result.dead_lettered,
            links=len(plan.links),
        )

    def _dead_letter(self, entry: Entry) -> None:
        self.metrics.dead_letters.labels(entry.error_code).inc()
        self.totals["dead:" + entry.error_code] += 1
        self.log.warning("dead-lettered", entry_id=entry.id.decode(), error=entry.error)

    def _links(self, entries: list[Entry], plan: Plan, result: Committed) -> None:
        duplicate = set(result.duplicates)  # counted by the commit that acked them first
        decided = [
            *((outcome, position) for position, outcome in plan.local_outcomes),
            *zip(result.outcomes, plan.link_entries, strict=True),
        ]
        m = self.metrics
        for outcome, position in decided:
            if outcome is LinkOutcome.APPLIED:  # the script wrote its feed entry with the link
                m.changes.labels(ChangeOp.LINK.value).inc()
            if position in duplicate:
                continue
            self.metrics.identify.labels(outcome.value).inc()
            if outcome in LOGGED:
                m.refusals.labels(outcome.value).inc()
            self.totals["identify:" + outcome.value] += 1
            if outcome in REFUSED:
                entry_id = entries[position].id.decode()
                self.log.info("link refused", outcome=outcome.value, entry_id=entry_id)

    def resolver(self, plan: Plan, result: Committed) -> None:
        m = self.metrics
        m.cache_hits.inc(plan.resolutions - plan.deferred)
        m.cache_misses.inc(plan.deferred)
        depths = [d for d in result.depths if d >= 0]
        m.resolver_cycles.inc(len(result.depths) - len(depths))
        observe_many(m.chain_depth, depths)
        m.cache_entries.set(len(self.cache))
