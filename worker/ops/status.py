"""What ``lehnz-stitch status`` reports, read from Redis without writing anything.

The group and its consumers (XINFO GROUPS, XINFO CONSUMERS), the three streams (XINFO
STREAM), links per tenant (HLEN of every alias map), dead letters by ``error_code`` (XRANGE
over the whole dead stream: it is bounded by ``STITCH_DEAD_MAXLEN``; ``--watch`` then reads
only what was added, until something is removed), and the time of the last commit.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis

from resolver.heights import alias_keys

from ..config import Settings
from ..stream import InputStream
from .dead_letters import DeadLetters, error_code

__all__ = [
    "ConsumerState",
    "DeadLetterCounts",
    "GroupState",
    "Status",
    "StreamState",
    "entry_time",
    "read_status",
]

NOT_A_DEAD_LETTER = "(not a dead letter)"


class StreamState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    length: int
    last_id: str | None
    """The newest id ever added (``last-generated-id``), even if that entry was deleted since;
    None for a stream that never held an entry or does not exist."""
    entries_added: int | None
    """Entries ever added (Redis 7.0+); with ``length``, tells that something was removed."""


class ConsumerState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    idle_s: float


class GroupState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    lag: int | None
    """Entries not yet delivered to the group; None when Redis cannot tell (after deletions)."""
    pending: int
    """Delivered, not yet acknowledged."""
    last_delivered_id: str
    consumers: list[ConsumerState]


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The ``status --json`` object; its keys are documented in the README."""

    at: str
    shard: int
    """The shard read (STITCH_SHARDS > 1: one object per shard); 0 with one shard."""
    input: StreamState
    output: StreamState
    dead: StreamState
    group: GroupState | None
    """None while the group does not exist (no worker has started on this stream)."""
    dead_letters: dict[str, int]
    links: dict[str, int]
    last_commit_at: str | None
    last_commit_age_s: float | None


def entry_time(entry_id: str) -> datetime:
    """When Redis created the entry (the id's millisecond part, on Redis's clock)."""
    return datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, UTC)


class DeadLetterCounts:
    """Dead letters by code: the whole stream once, then only entries added since, as long as
    nothing was removed (entries ever added minus the length has not changed)."""

    __slots__ = ("_counts", "_dead_letters", "_last", "_removed")

    def __init__(self, dead_letters: DeadLetters) -> None:
        self._dead_letters = dead_letters
        self._counts: Counter[str] = Counter()
        self._last: str | None = None
        self._removed: int | None = None

    def refresh(self, dead: StreamState) -> dict[str, int]:
        removed = None if dead.entries_added is None else dead.entries_added - dead.length
        if removed is None or removed != self._removed or self._last is None:
            self._counts.clear()
            self._last = None
        self._removed = removed
        start = "-" if self._last is None else "(" + self._last
        for page in self._dead_letters.scan(start, "+", page=1000):
            for _, flat in page:
                self._counts[error_code(flat) or NOT_A_DEAD_LETTER] += 1
            self._last = page[-1][0].decode()
        return dict(sorted(self._counts.items(), key=lambda item: (-item[1], item[0])))


def read_status(
    client: redis.Redis, settings: Settings, counts: DeadLetterCounts | None = None
) -> Status:
    """One reading; pass the same ``counts`` again to count only new dead letters."""
    now = time.time()
    streams = _streams(client, settings)
    dead = streams[settings.dead_stream]
    counts = counts if counts is not None else DeadLetterCounts(DeadLetters(client, settings))
    commits = [s.last_id for s in (streams[settings.output_stream], dead) if s.last_id]
    last = max((entry_time(i) for i in commits), default=None)
    return Status(
        at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        shard=settings.shard_numbers[0],
        input=streams[settings.input_stream],
        output=streams[settings.output_stream],
        dead=dead,
        group=_group(client, settings),
        dead_letters=counts.refresh(dead),
        links=_links(client, settings.alias_prefix),
        last_commit_at=None if last is None else last.isoformat(timespec="milliseconds"),
        last_commit_age_s=None if last is None else round(now - last.timestamp(), 3),
    )


def _streams(client: redis.Redis, settings: Settings) -> dict[str, StreamState]:
    names = (settings.input_stream, settings.output_stream, settings.dead_stream)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command("XINFO STREAM", name)  # type: ignore[no-untyped-call]
    replies = pipe.execute(raise_on_error=False)
    return {name: _stream(name, reply) for name, reply in zip(names, replies, strict=True)}


def _stream(name: str, reply: Any) -> StreamState:
    if isinstance(reply, redis.ResponseError):
        if "no such key" not in str(reply):
            raise reply
        return StreamState(name=name, length=0, last_id=None, entries_added=None)
    last = _text(reply["last-generated-id"])
    added = reply.get("entries-added")
    return StreamState(
        name=name,
        length=int(reply["length"]),
        last_id=None if last == "0-0" else last,
        entries_added=None if added is None else int(added),
    )


def _group(client: redis.Redis, settings: Settings) -> GroupState | None:
    stream = InputStream(client, settings.input_stream, settings.group, "status")
    try:
        info = stream.group_info()
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return None
        raise
    if info is None:
        return None
    lag = info.get(b"lag")
    consumers = [
        ConsumerState(
            name=_text(c[b"name"]), pending=int(c[b"pending"]), idle_s=int(c[b"idle"]) / 1000
        )
        for c in stream.consumers()
    ]
    return GroupState(
        name=settings.group,
        lag=None if lag is None else int(lag),
        pending=int(info[b"pending"]),
        last_delivered_id=_text(info[b"last-delivered-id"]),
        consumers=consumers,
    )


def _links(client: redis.Redis, prefix: str) -> dict[str, int]:
    keys = alias_keys(client, prefix)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hlen(key)
    return {key[len(prefix) :]: int(n) for key, n in zip(keys, pipe.execute(), strict=True)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
