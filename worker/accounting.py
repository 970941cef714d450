"""What a committed batch adds to the metrics, the run's totals and the log."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from resolver import AliasCache
from resolver.links import LinkOutcome

from .committer import Committed
from .metrics import Metrics, observe_many
from .parser import Entry, Kind
from .planner import Plan

__all__ = ["Accountant"]

REFUSED = (LinkOutcome.CONFLICT, LinkOutcome.CYCLE, LinkOutcome.TOO_DEEP)


class Accountant:
    __slots__ = ("log", "metrics", "totals")

    def __init__(self, metrics: Metrics, log: Any) -> None:
        self.metrics = metrics
        self.log = log
        self.totals: Counter[str] = Counter()

    def count(self, name: str, amount: int, counter: Any) -> None:
        if amount:
            self.totals[name] += amount
            counter.inc(amount)

    def batch(self, entries: list[Entry], plan: Plan, result: Committed) -> None:
        m = self.metrics
        self.count("read", len(entries), m.entries_read)
        self.count("emitted", result.emitted, m.events_emitted)
        self.count("duplicates", len(result.duplicates), m.duplicates)
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
            *zip(plan.local_outcomes, plan.local_entries, strict=True),
            *zip(result.outcomes, plan.link_entries, strict=True),
        ]
        for outcome, position in decided:
            if position in duplicate:
                continue
            self.metrics.identify.labels(outcome.value).inc()
            self.totals["identify:" + outcome.value] += 1
            if outcome in REFUSED:
                entry_id = entries[position].id.decode()
                self.log.info("link refused", outcome=outcome.value, entry_id=entry_id)

    def resolver(self, plan: Plan, result: Committed, cache: AliasCache) -> None:
        m = self.metrics
        m.cache_hits.inc(plan.resolutions - plan.deferred)
        m.cache_misses.inc(plan.deferred)
        depths = [d for d in result.depths if d >= 0]
        m.resolver_cycles.inc(len(result.depths) - len(depths))
        observe_many(m.chain_depth, depths)
        m.cache_entries.set(len(cache))
