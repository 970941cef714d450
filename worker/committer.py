"""Run a :class:`~worker.planner.Plan` through the commit script and read its verdict.

A verdict is either :class:`Committed` or :class:`Stale` (another replica linked an id the
plan relied on, and nothing was written). Stale batches are planned again from what the
script reported, a bounded number of times; a batch that stays stale is left pending.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol

from redis.exceptions import NoScriptError, ResponseError

from resolver.ids import utf8_id
from resolver.links import LinkOutcome

from .errors import StaleCommitError
from .parser import Entry
from .planner import Plan, Planner
from .replication import ReplicaWait
from .split import Splitter
from .wire import RoundTrip

__all__ = ["MAX_STALE_RETRIES", "Committed", "Committer", "Sink", "Stale"]

MAX_STALE_RETRIES = 8
"""Each retry re-reads what changed; only a hot, contested id could need more."""


class Committed(NamedTuple):
    emitted: int
    dead_lettered: int
    duplicates: list[int]
    """0-based indexes (in plan order) of entries that were already acked: not re-emitted."""
    outcomes: list[LinkOutcome]
    """One per link of the plan, in order."""
    depths: list[int]
    """Chain depth of each id the script resolved; -1 where it met a cycle."""
    learned: list[tuple[int, str, str | None]]
    """(tenant number, id, target or None) for every link the script read."""
    dropped: list[int] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    """0-based indexes of entries acked but not emitted: their id is forgotten
    (STITCH_FORGOTTEN_EVENTS=drop)."""


class Stale(NamedTuple):
    """Link predictions the script found stale (another replica linked first), or a
    tenant's generation (links were removed since the cache learned them); nothing was
    written. Moved roots are not stale: the script follows them itself."""

    links: list[int]
    """0-based indexes of links whose predicted outcome was wrong."""
    too_deep: list[int] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    """Those of ``links`` the script refused for good (too deep, blocked, forgotten: the
    planner remembers them)."""
    generations: list[tuple[int, str, bool]] = []  # noqa: RUF012
    """(tenant number, current generation, has tombstones) of tenants whose generation moved."""


class Sink(Protocol):
    def committed(
        self, entries: list[Entry], plan: Plan, result: Committed, elapsed_s: float
    ) -> None:
        """A batch committed ``elapsed_s`` after its entries were in hand: account for it."""


def _learned(flat: list[Any]) -> list[tuple[int, str, str | None]]:
    """(tenant number, id, target) triples; hops through a non-UTF-8 id are not learned,
    so the cache never sends one back: the script resolves those ids byte for byte."""
    learned = []
    for k in range(0, len(flat), 3):
        uid, raw_target = utf8_id(flat[k + 1]), flat[k + 2]
        target = None if raw_target is None else utf8_id(raw_target)
        if uid is not None and (target is not None or raw_target is None):
            learned.append((int(flat[k]), uid, target))
    return learned


FINAL_REFUSALS = (b"too_deep", b"blocked", b"forgotten", b"quarantined")


def _stale(links: list[Any]) -> Stale:
    """From the script's {link ordinal, current target, outcome} triples."""
    return Stale(
        [int(link[0]) - 1 for link in links],
        [int(link[0]) - 1 for link in links if link[2] in FINAL_REFUSALS],
    )


def _stale_generations(tenants: list[Any]) -> Stale:
    """From the script's {tenant number, generation, tombstones} triples."""
    return Stale([], [], [(int(t[0]), t[1].decode(), int(t[2]) > 0) for t in tenants])


def _committed(reply: list[Any]) -> Committed:
    return Committed(
        int(reply[1]),
        int(reply[2]),
        [int(n) - 1 for n in reply[3]],
        [LinkOutcome(o.decode()) for o in reply[4]],
        [int(d) for d in reply[5][1::2]],
        _learned(reply[6]),
        [int(n) - 1 for n in reply[7]],
    )


class Committer:
    __slots__ = ("_log", "_planner", "_stale_commits", "_wire", "sink", "wait")

    def __init__(
        self,
        wire: RoundTrip,
        planner: Planner,
        sink: Sink,
        stale_commits: Any,
        log: Any,
        wait: ReplicaWait | None = None,
    ) -> None:
        self._wire = wire
        self._planner = planner
        self.sink = sink
        self._stale_commits = stale_commits
        self._log = log
        self.wait = wait if wait is not None else ReplicaWait(0, 0, None, log)
        """WAIT for replicas behind every commit (STITCH_WAIT_REPLICAS), or nothing."""

    def verdict(self, plan: Plan, reply: Any, waited: Any = None) -> Committed | Stale:
        """Interpret a reply (and the WAIT reply sent behind it, if waiting); after a Redis
        restart (NOSCRIPT) load the script and run again."""
        if isinstance(reply, NoScriptError):
            self._wire.call("SCRIPT", "LOAD", self._planner.command.source)
            reply, waited = self._send(plan)
        if isinstance(reply, ResponseError):
            raise reply
        if reply[0] == 2:
            return _stale_generations(reply[1])
        if reply[0] != 1:
            return _stale(reply[1])
        if self.wait.replies:
            self.wait.check(waited)
        return _committed(reply)

    def commit(self, plan: Plan) -> Committed | Stale:
        return self.verdict(plan, *self._send(plan))

    def _send(self, plan: Plan) -> tuple[Any, Any]:
        """The commit (and its WAIT) on one connection: (verdict reply, WAIT reply or None)."""
        wait = self.wait
        if not wait.replies:
            return self._wire.request(plan.packed), None
        reply, waited = self._wire.requests(plan.packed + wait.packed, 2)
        return reply, waited

    def finish(self, entries: list[Entry], plan: Plan, result: Committed, started: float) -> None:
        """``plan`` committed: the planner learns from it, then the sink accounts for it."""
        self._planner.learn(plan, result)
        self.sink.committed(entries, plan, result, time.monotonic() - started)

    def forget_stale(self, plan: Plan, stale: Stale) -> None:
        self._stale_commits.inc()
        self._planner.learn_stale(plan, stale)
        if stale.generations:
            self._log.info(
                "links were removed: dropping the tenants' cache, retrying",
                tenants=len(stale.generations),
            )
        else:
            self._log.info("commit found stale links, retrying", links=len(stale.links))

    def commit_now(self, entries: list[Entry], started: float | None = None) -> bool:
        """Plan and commit, again while stale; False if the batch was left pending.

        A batch Redis refuses for something in it is committed in halves (see split.py).
        """
        begun = time.monotonic() if started is None else started

        def finish(piece: list[Entry], plan: Plan, result: Committed) -> None:
            self.finish(piece, plan, result, begun)

        try:
            Splitter(self._commit_fresh, finish, self._log).commit(entries)
        except StaleCommitError as exc:
            self._log.error("batch left pending, retried from the pending list", error=str(exc))
            return False
        return True

    def _commit_fresh(self, entries: list[Entry]) -> tuple[Plan, Committed]:
        for _ in range(MAX_STALE_RETRIES):
            plan = self._planner.plan(entries)
            result = self.commit(plan)
            if isinstance(result, Committed):
                return plan, result
            self.forget_stale(plan, result)
        raise StaleCommitError(
            f"batch {entries[0].id!r}.. stayed stale after {MAX_STALE_RETRIES} tries"
        )
