"""Entries that were delivered but never committed: our own after a restart, other
consumers' once idle past the threshold, and consumers that are gone for good."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import redis

from .accounting import Accountant
from .committer import Committer
from .config import Settings
from .deadletters import DeadLetter
from .metrics import Metrics
from .parser import Entry, Parser
from .scripts import DELCONSUMER_LUA
from .stream import InputStream, RawEntry

__all__ = ["Recovery"]


class Recovery:
    """Re-reads and commits what is pending; ``due`` asks for our own pending list."""

    __slots__ = (
        "_accounts",
        "_committer",
        "_delconsumer",
        "_log",
        "_metrics",
        "_parser",
        "_reread",
        "_settings",
        "_stop",
        "_stream",
        "due",
    )

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        stream: InputStream,
        parser: Parser,
        committer: Committer,
        accounts: Accountant,
        stop: threading.Event,
        log: Any,
    ) -> None:
        self._settings = settings
        self._stream = stream
        self._parser = parser
        self._committer = committer
        self._accounts = accounts
        self._metrics: Metrics = accounts.metrics
        self._stop = stop
        self._log = log
        self._delconsumer = client.register_script(DELCONSUMER_LUA)
        self.due = True
        """Set at start, after a reconnect and when a batch was left pending."""
        self._reread: Counter[bytes] = Counter()
        """How often this process re-read each of its own pending entries: re-reads after
        an outage are not deliveries that crashed a worker, and must not count towards
        STITCH_MAX_DELIVERIES (a slot migration may retry a batch dozens of times)."""

    def own_pending(self) -> int:
        """Re-read and finish what this consumer name had pending (before a restart, say)."""
        handled, start = 0, "0"
        while not self._stop.is_set():
            entries = self._stream.read(self._settings.batch_size, None, start)
            if not entries:
                break
            counts = self._stream.delivery_counts(entries)
            reread = self._reread
            own = {eid: delivered - reread[eid] for eid, delivered in counts.items()}
            reread.update(eid for eid, _ in entries)
            self.process(entries, counts=own)
            self._metrics.redeliveries.inc(len(entries))
            handled += len(entries)
            start = entries[-1][0].decode()
        if not self.due:  # everything re-read is committed (or dead-lettered) now
            self._reread.clear()
        if handled:
            self._log.info("recovered pending entries", entries=handled)
        return handled

    def reclaim(self) -> int:
        """XAUTOCLAIM entries idle past the threshold from any consumer, to the cursor's end."""
        cursor, claimed = b"0-0", 0
        settings, accounts, metrics = self._settings, self._accounts, self._metrics
        while not self._stop.is_set():
            cursor, entries, deleted = self._stream.autoclaim(
                settings.claim_idle_ms, cursor, settings.batch_size
            )
            accounts.count("deleted_pending", deleted, metrics.deleted_pending)
            if entries:
                self.process(entries, counts=self._stream.delivery_counts(entries))
                accounts.count("reclaimed", len(entries), metrics.reclaimed)
                metrics.redeliveries.inc(len(entries))
                claimed += len(entries)
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            self._log.info("reclaimed idle entries", entries=claimed)
        return claimed

    def remove_idle_consumers(self) -> None:
        """Drop consumers idle past the threshold, atomically only if nothing is pending."""
        settings = self._settings
        for info in self._stream.consumers():
            name = info[b"name"].decode()
            if (
                name == settings.consumer
                or int(info[b"pending"]) > 0
                or int(info[b"idle"]) < settings.consumer_idle_ms
            ):
                continue
            removed = self._delconsumer(
                keys=[settings.input_stream], args=[settings.group, name, settings.consumer_idle_ms]
            )
            if removed == 1:
                self._metrics.consumers_removed.inc()
                self._log.info("removed idle consumer", removed_consumer=name)

    def process(self, raw: list[RawEntry], counts: dict[bytes, int] | None = None) -> None:
        """Parse and commit one batch synchronously; a poison entry is dead-lettered."""
        entries = [self._parse(eid, fields, counts) for eid, fields in raw]
        if not self._committer.commit_now(entries):
            self.due = True

    def _parse(
        self, eid: bytes, fields: list[bytes] | None, counts: dict[bytes, int] | None
    ) -> Entry:
        limit = self._settings.max_deliveries
        if counts is not None and fields is not None:
            delivered = counts.get(eid, 1)
            if delivered > limit:
                return Entry(eid, fields).reject(
                    DeadLetter.MAX_DELIVERIES_EXCEEDED, delivered=delivered, limit=limit
                )
        return self._parser.parse(eid, fields)
