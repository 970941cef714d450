"""The daemon: startup -> loop -> shutdown over one consumer of the input stream's group.

The loop is a pipeline on one held connection. In steady state, when batch N's verdict
arrives, batch N+1 is already planned (assuming N's links) and packed: its commit goes out
at once, with the read that fetches batch N+3. Only then does Python account for N, parse
batch N+2 (read with N's commit) and plan and pack it, all while Redis runs N+1. A stale
verdict for N means N is redone synchronously and N+1 planned again before it is sent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import Enum
from typing import Any

import redis
from redis.exceptions import ResponseError

from resolver import Resolver
from resolver.links import LinkOutcome, LinkRules

from .accounting import Accountant
from .backoff import Backoff
from .committer import Committed, Committer, Stale
from .config import Settings
from .connection import redact
from .errors import StaleCommitError
from .health import Health
from .metrics import GroupStats, Metrics
from .outage import Reconnector
from .parser import Entry, Parser
from .planner import Plan, Planner
from .scripts import DELCONSUMER_LUA, Script
from .stream import InputStream, RawEntry, entries_of
from .wire import PipelinedConnection, RoundTrip, pack

__all__ = ["Worker"]

MAX_STALE_RETRIES = 8
"""Each retry re-reads what changed; only a hot, contested id could need more."""
PROGRESS_EVERY_S = 30.0


class _Redo(Enum):
    REDONE = "stale, then committed synchronously (and accounted)"
    LEFT_PENDING = "stale through every retry: left pending for recovery"


REDONE, LEFT_PENDING = _Redo.REDONE, _Redo.LEFT_PENDING


class _Ready:
    """A parsed, planned and packed batch: its commit is ready to send."""

    __slots__ = ("entries", "plan")

    def __init__(self, entries: list[Entry], plan: Plan) -> None:
        self.entries = entries
        self.plan = plan


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
        self.stream = InputStream(client, settings.input_stream, settings.group, settings.consumer)
        self.wire = RoundTrip(client)
        self.channel = PipelinedConnection(client)
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
        self.accounts = Accountant(metrics, log)
        self._stop = threading.Event()
        self._delconsumer = Script(DELCONSUMER_LUA)
        self._recover_pending = True
        self._reconnector = Reconnector(settings.reconnect_give_up_s, self._stop, self, log)
        self._sent: _Ready | None = None
        """The batch whose commit (and a read after it) is on the channel, replies owed."""
        self._queued: _Ready | None = None
        """The next batch, planned on the assumption that ``_sent`` commits."""
        count = settings.batch_size
        self._read_now = pack(self.stream.read_command(count, None))
        self._read_blocking = pack(self.stream.read_command(count, settings.block_ms))
        self._next_maintenance = 0.0
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S
        metrics.watch_group(self.group_stats)

    @property
    def totals(self) -> Counter[str]:
        return self.accounts.totals

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
        self._with_reconnect(self.connect)
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
        self._with_reconnect(self._settle)

    def shutdown(self) -> None:
        self.health.group_ready = False
        self.channel.reset()
        self.log.info("stopped", **self.summary())

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.totals.items()))

    # one iteration -----------------------------------------------------------------------

    def _step(self) -> int:
        """Recovery and maintenance when due, then one turn of the pipeline."""
        now = time.monotonic()
        self.health.beat()
        if self._recover_pending:
            self._recover_pending = False
            self._settle()
            self.recover_own_pending()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.claim_interval_ms / 1000
            self._settle()
            self.reclaim()
            self.remove_idle_consumers()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY_S
            self.log.info("progress", cache_entries=len(self.resolver.cache), **self.summary())
        if self._recover_pending:  # a batch was just left pending: recover it before reading on
            return 1
        return self._turn()

    def _turn(self) -> int:
        """Move the pipeline one batch along; returns entries committed or read (0: idle)."""
        if self._sent is None:
            return self._start()
        return self._advance(self._sent)

    def _start(self) -> int:
        """Nothing on the channel: wait for entries, send their commit and fill the pipeline."""
        queued = self._queued
        if queued is None:
            raw = self.stream.read(self.settings.batch_size, self.settings.block_ms)
            if not raw:
                return 0
            queued = self._prepare(raw)
        # a full batch means more is waiting: fetch the next one now so that it is planned
        # while this commit runs; a short one means we are caught up: send, and wait there
        full = len(queued.entries) >= self.settings.batch_size
        extra = self.stream.read(self.settings.batch_size, None) if full else []
        read = self._read_now if extra else self._read_blocking
        self.channel.send(queued.plan.packed + read, 2)
        self._sent = queued
        self._queued = self._prepare(extra, after=queued.plan) if extra else None
        return len(queued.entries)

    def _advance(self, sent: _Ready) -> int:
        """``sent``'s verdict is due: send the queued commit first, then account and plan."""
        queued, self._sent, self._queued = self._queued, None, None
        result = self._verdict(sent)
        if result is LEFT_PENDING:  # and so is everything after it, to keep the order:
            self.channel.reply()  # the read sent with it; recovery re-reads them all
            return len(sent.entries)
        if result is REDONE and queued is not None:
            queued = self._planned(queued.entries)  # it assumed links that were refused
        try:
            if queued is not None:
                self.channel.send(queued.plan.packed + self._read_now, 2)
                self._sent = queued
        finally:  # ``sent`` is committed: count it even if the send failed
            if isinstance(result, Committed):
                self._finish(sent.entries, sent.plan, result)
        raw = self._entries_read(self.channel.reply())
        if raw:
            self._queued = self._prepare(raw, after=queued.plan if queued is not None else None)
        return len(sent.entries) + len(raw)

    def _verdict(self, sent: _Ready) -> Committed | _Redo:
        """The sent commit's verdict, or what became of it after it was found stale."""
        result = self.committer.verdict(self.wire, sent.plan, self.channel.reply())
        if isinstance(result, Committed):
            return result
        self._forget_stale(sent.plan, result)
        return REDONE if self._commit_entries(sent.entries) else LEFT_PENDING

    @staticmethod
    def _entries_read(reply: Any) -> list[RawEntry]:
        if isinstance(reply, ResponseError):
            raise reply
        return entries_of(reply)

    def _prepare(self, raw: list[RawEntry], after: Plan | None = None) -> _Ready:
        return self._planned([self.parser.parse(eid, fields) for eid, fields in raw], after)

    def _planned(self, entries: list[Entry], after: Plan | None = None) -> _Ready:
        return _Ready(entries, self.committer.pack(self.planner.plan(entries, after=after)))

    def _settle(self) -> None:
        """Commit whatever is sent, planned or read, so nothing is left in hand."""
        sent, queued, self._sent, self._queued = self._sent, self._queued, None, None
        raw: list[RawEntry] = []
        if sent is not None:
            result = self._verdict(sent)
            if isinstance(result, Committed):
                self._finish(sent.entries, sent.plan, result)
            raw = self._entries_read(self.channel.reply())
            if result is LEFT_PENDING:  # leave what came after it too, to keep the order
                return
        if queued is not None:
            self._commit_entries(queued.entries)
        if raw:
            self.process(raw)

    def _drained(self) -> bool:
        self._settle()
        return self.reclaim() == 0 and self.stream.own_pending() == 0

    # recovery ----------------------------------------------------------------------------

    def recover_own_pending(self) -> int:
        """Re-read and finish what this consumer name had pending before a restart."""
        handled, start = 0, "0"
        while not self.stopping:
            entries = self.stream.read(self.settings.batch_size, None, start)
            if not entries:
                break
            self.process(entries, counts=self.stream.delivery_counts(entries))
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
            cursor, entries, deleted = self.stream.autoclaim(
                self.settings.claim_idle_ms, cursor, self.settings.batch_size
            )
            self.accounts.count("deleted_pending", deleted, self.metrics.deleted_pending)
            if entries:
                self.process(entries, counts=self.stream.delivery_counts(entries))
                self.accounts.count("reclaimed", len(entries), self.metrics.reclaimed)
                self.metrics.redeliveries.inc(len(entries))
                claimed += len(entries)
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            self.log.info("reclaimed idle entries", entries=claimed)
        return claimed

    def remove_idle_consumers(self) -> None:
        for info in self.stream.consumers():
            name = info[b"name"].decode()
            if (
                name == self.settings.consumer
                or int(info[b"pending"]) > 0
                or int(info[b"idle"]) < self.settings.consumer_idle_ms
            ):
                continue
            removed = self._delconsumer(
                self.client,
                [self.settings.input_stream],
                [self.settings.group, name, self.settings.consumer_idle_ms],
            )
            if removed == 1:
                self.metrics.consumers_removed.inc()
                self.log.info("removed idle consumer", removed_consumer=name)

    # processing --------------------------------------------------------------------------

    def process(self, raw: list[RawEntry], counts: dict[bytes, int] | None = None) -> None:
        """Parse, plan and commit one batch synchronously (recovery, reclaim, tests)."""
        self._commit_entries([self._parse(eid, fields, counts) for eid, fields in raw])

    def _commit_entries(self, entries: list[Entry]) -> bool:
        """Commit synchronously; False if the batch was left pending for recovery."""
        try:
            plan, result = self._commit_with_retries(entries)
        except StaleCommitError as exc:
            self.log.error("batch left pending, retried from the pending list", error=str(exc))
            self._recover_pending = True
            return False
        self._finish(entries, plan, result)
        return True

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
            result = self.committer.commit(self.wire, plan)
            if isinstance(result, Committed):
                return plan, result
            self._forget_stale(plan, result)
        raise StaleCommitError(
            f"batch {entries[0].id!r}.. stayed stale after {MAX_STALE_RETRIES} tries"
        )

    def _forget_stale(self, plan: Plan, stale: Stale) -> None:
        self.metrics.stale_commits.inc()
        self.resolver.forget({plan.links[n][0] for n in stale.links})
        self.log.info("commit found stale links, retrying", links=len(stale.links))

    def _finish(self, entries: list[Entry], plan: Plan, result: Committed) -> None:
        cache = self.resolver.cache
        tenant_of = plan.tenant_of()
        for index, uid, target in result.learned:
            cache.put(tenant_of[index], uid, target if target is not None else uid)
        for (tenant, prev, user), outcome in zip(plan.links, result.outcomes, strict=True):
            if outcome is LinkOutcome.APPLIED:
                cache.put(tenant, prev, user)
        self.accounts.batch(entries, plan, result)
        self.accounts.resolver(plan, result, cache)
        self.health.beat()

    # connection --------------------------------------------------------------------------

    def connect(self) -> None:
        """Ping and make sure the group exists (an outage hook, also used at start-up)."""
        self.client.ping()
        self.health.connected = True
        self.metrics.redis_up.set(1)
        if self.stream.ensure_group(self.settings.group_start_id):
            self.log.info("created consumer group", start_id=self.settings.group_start_id)
        self.health.group_ready = True

    def _with_reconnect(self, action: Callable[[], Any]) -> Any:
        return self._reconnector.run(action, when_stopped=0)

    # outage hooks (see outage.OutageHooks) ---------------------------------------------------

    def went_down(self, exc: Exception) -> None:
        self.health.connected = False
        self.metrics.redis_up.set(0)
        # what was in hand is pending in Redis (or committed): recovery re-reads it
        self.channel.reset()
        self._sent, self._queued = None, None

    def reconnected(self) -> None:
        # Redis may have lost links (no AOF) or scripts: start from what it holds now,
        # before the interrupted step runs again
        self.resolver.forget()
        self._recover_pending = True

    def recovered(self, backoff: Backoff) -> None:
        self.metrics.reconnects.inc()
        self.totals["reconnects"] += 1
        self.log.info(
            "redis reconnected", attempts=backoff.attempts, outage_s=round(backoff.elapsed_s, 3)
        )

    def beat(self) -> None:
        self.health.beat()

    # scrape-time gauges --------------------------------------------------------------------

    def group_stats(self) -> GroupStats:
        info = self.stream.group_info()
        if info is None:
            return GroupStats(None, 0, [])
        lag = info.get(b"lag")
        consumers = [
            (c[b"name"].decode(), int(c[b"pending"]), int(c[b"idle"]) / 1000)
            for c in self.stream.consumers()
        ]
        return GroupStats(None if lag is None else int(lag), int(info[b"pending"]), consumers)
