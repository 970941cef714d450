"""The worker's steady state: batches pipelined over one held connection.

When batch N's verdict arrives, batch N+1 is already planned (assuming N's links) and
packed: its commit goes out at once, with the read that fetches batch N+3. Only then does
Python account for N, parse batch N+2 (read with N's commit) and plan and pack it, all
while Redis runs N+1. A stale verdict for N means N is redone synchronously and N+1
planned again before it is sent.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from redis.exceptions import ResponseError

from .committer import Committed, Committer, Stale
from .config import Settings
from .parser import Entry, Parser
from .planner import Plan, Planner
from .recovery import Recovery
from .split import entries_at_fault
from .stream import InputStream, RawEntry, entries_of
from .wire import PipelinedConnection, pack

__all__ = ["Pipeline"]


class _Redo(Enum):
    REDONE = "stale, then committed synchronously (and accounted)"
    LEFT_PENDING = "stale through every retry: left pending for recovery"


REDONE, LEFT_PENDING = _Redo.REDONE, _Redo.LEFT_PENDING


class _Ready:
    """A parsed, planned and packed batch: its commit is ready to send."""

    __slots__ = ("entries", "plan", "started")

    def __init__(self, entries: list[Entry], plan: Plan, started: float) -> None:
        self.entries = entries
        self.plan = plan
        self.started = started
        """When its entries were in hand (monotonic): the batch duration starts here."""


class Pipeline:
    __slots__ = (
        "_batch_size",
        "_block_ms",
        "_committer",
        "_connection",
        "_parser",
        "_planner",
        "_queued",
        "_read_blocking",
        "_read_now",
        "_recovery",
        "_sent",
        "_stream",
        "_wait",
    )

    def __init__(
        self,
        settings: Settings,
        connection: PipelinedConnection,
        stream: InputStream,
        parser: Parser,
        planner: Planner,
        committer: Committer,
        recovery: Recovery,
    ) -> None:
        self._connection = connection
        self._stream = stream
        self._parser = parser
        self._planner = planner
        self._committer = committer
        self._recovery = recovery
        self._wait = committer.wait  # WAIT behind each commit (STITCH_WAIT_REPLICAS)
        self._batch_size = settings.batch_size
        self._block_ms = settings.block_ms
        self._read_now = pack(stream.read_command(settings.batch_size, None))
        self._read_blocking = pack(stream.read_command(settings.batch_size, settings.block_ms))
        self._sent: _Ready | None = None
        """The batch whose commit (and a read after it) is on the connection, replies owed."""
        self._queued: _Ready | None = None
        """The next batch, planned on the assumption that ``_sent`` commits."""

    def turn(self) -> int:
        """Move the pipeline one batch along; returns entries committed or read (0: idle)."""
        if self._sent is None:
            return self._start()
        return self._advance(self._sent)

    def settle(self) -> None:
        """Commit whatever is sent, planned or read, so nothing is left in hand."""
        sent, queued, self._sent, self._queued = self._sent, self._queued, None, None
        raw: list[RawEntry] = []
        if sent is not None:
            result = self._verdict(sent)
            if isinstance(result, Committed):
                self._committer.finish(sent.entries, sent.plan, result, sent.started)
            raw = _entries_read(self._connection.reply())
            if result is LEFT_PENDING:  # leave what came after it too, to keep the order
                return
        if queued is not None and not self._committer.commit_now(queued.entries, queued.started):
            self._recovery.due = True
        if raw:
            self._recovery.process(raw)

    def drop(self) -> None:
        """The link went down: what was in hand is pending in Redis (or committed)."""
        self._connection.reset()
        self._sent, self._queued = None, None

    def _start(self) -> int:
        """Nothing on the connection: wait for entries, send their commit, fill the pipeline."""
        queued = self._queued
        if queued is None:
            raw = self._stream.read(self._batch_size, self._block_ms)
            if not raw:
                return 0
            queued = self._prepare(raw)
        # a full batch means more is waiting: fetch the next one now so that it is planned
        # while this commit runs; a short one means we are caught up: send, and wait there
        full = len(queued.entries) >= self._batch_size
        extra = self._stream.read(self._batch_size, None) if full else []
        read = self._read_now if extra else self._read_blocking
        self._send(queued, read)
        self._sent = queued
        self._queued = self._prepare(extra, after=queued.plan) if extra else None
        return len(queued.entries)

    def _advance(self, sent: _Ready) -> int:
        """``sent``'s verdict is due: send the queued commit first, then account and plan."""
        queued, self._sent, self._queued = self._queued, None, None
        result = self._verdict(sent)
        if result is LEFT_PENDING:  # and so is everything after it, to keep the order:
            self._connection.reply()  # the read sent with it; recovery re-reads them all
            return len(sent.entries)
        if result is REDONE and queued is not None:  # it assumed links that were refused
            queued = _Ready(queued.entries, self._planner.plan(queued.entries), queued.started)
        try:
            if queued is not None:
                self._send(queued, self._read_now)
                self._sent = queued
        finally:  # ``sent`` is committed: count it even if the send failed
            if isinstance(result, Committed):
                self._committer.finish(sent.entries, sent.plan, result, sent.started)
        raw = _entries_read(self._connection.reply())
        if raw:
            self._queued = self._prepare(raw, after=queued.plan if queued is not None else None)
        return len(sent.entries) + len(raw)

    def _send(self, ready: _Ready, read: bytes) -> None:
        """The commit, the WAIT behind it when waiting for replicas, and the next read."""
        wait = self._wait
        self._connection.send(ready.plan.packed + wait.packed + read, 2 + wait.replies)

    def _verdict(self, sent: _Ready) -> Committed | _Redo:
        """The sent commit's verdict, or what became of it after it was found stale (or
        refused for something in it)."""
        result: Committed | Stale | None
        reply = self._connection.reply()
        waited = self._connection.reply() if self._wait.replies else None
        try:
            result = self._committer.verdict(sent.plan, reply, waited)
        except ResponseError as exc:  # refused whole, nothing written: commit_now splits it
            if not entries_at_fault(exc):
                raise
            result = None
        if isinstance(result, Committed):
            return result
        if result is not None:
            self._committer.forget_stale(sent.plan, result)
        if self._committer.commit_now(sent.entries, sent.started):
            return REDONE
        self._recovery.due = True
        return LEFT_PENDING

    def _prepare(self, raw: list[RawEntry], after: Plan | None = None) -> _Ready:
        started = time.monotonic()
        entries = [self._parser.parse(eid, fields) for eid, fields in raw]
        return _Ready(entries, self._planner.plan(entries, after), started)


def _entries_read(reply: Any) -> list[RawEntry]:
    if isinstance(reply, ResponseError):
        raise reply
    return entries_of(reply)
