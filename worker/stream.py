"""Thin, allocation-light wrappers over the stream commands the worker uses.

Replies are taken raw (hiredis-parsed lists of bytes): redis-py's per-entry dict building
costs more than everything else the worker does with an entry.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import ResponseError

from .metrics import GroupStats

__all__ = ["InputStream", "RawEntry", "command", "entries_of"]

RawEntry = tuple[bytes, list[bytes] | None]
"""(entry id, flat field/value list), or None as payload for an entry deleted while pending."""


def _raw(response: Any, **_: Any) -> Any:
    return response


def command(client: redis.Redis, *args: Any) -> Any:
    """``execute_command`` with the reply typed as what it is: whatever Redis sent."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class InputStream:
    """One input stream read by one consumer of one group."""

    __slots__ = ("client", "consumer", "group", "stream")

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str) -> None:
        # a private client on the same pool: raw callbacks must not leak to the caller's client
        self.client = redis.Redis(connection_pool=client.connection_pool)
        for command in ("XREADGROUP", "XAUTOCLAIM", "XPENDING", "XINFO CONSUMERS", "XINFO GROUPS"):
            self.client.set_response_callback(command, _raw)
        self.stream = stream
        self.group = group
        self.consumer = consumer

    def ensure_group(self, start_id: str) -> bool:
        """Create the group (and the stream); return False if it already existed."""
        try:
            command(self.client, "XGROUP", "CREATE", self.stream, self.group, start_id, "MKSTREAM")
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    def read_command(self, count: int, block_ms: int | None, start: str = ">") -> list[Any]:
        """XREADGROUP; ``start`` ``>`` reads new entries, an id re-reads our own pending ones."""
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        return [*args, "STREAMS", self.stream, start]

    def read(self, count: int, block_ms: int | None, start: str = ">") -> list[RawEntry]:
        return entries_of(command(self.client, *self.read_command(count, block_ms, start)))

    def autoclaim(
        self, min_idle_ms: int, cursor: bytes, count: int
    ) -> tuple[bytes, list[RawEntry], int]:
        """XAUTOCLAIM one page: (next cursor, claimed entries, ids Redis dropped as deleted)."""
        reply = command(
            self.client,
            "XAUTOCLAIM",
            self.stream,
            self.group,
            self.consumer,
            min_idle_ms,
            cursor,
            "COUNT",
            count,
        )
        deleted = len(reply[2]) if len(reply) > 2 else 0
        return reply[0], [(eid, fields) for eid, fields in reply[1]], deleted

    def delivery_counts(self, entries: list[RawEntry]) -> dict[bytes, int]:
        """Redis's own delivery counters for ``entries`` pending on this consumer."""
        if not entries:
            return {}
        reply = command(
            self.client,
            "XPENDING",
            self.stream,
            self.group,
            entries[0][0],
            entries[-1][0],
            len(entries),
            self.consumer,
        )
        return {row[0]: int(row[3]) for row in reply}

    def own_pending(self) -> int:
        """Entries pending for this consumer (XPENDING does not redeliver them)."""
        reply = command(
            self.client, "XPENDING", self.stream, self.group, "-", "+", 1, self.consumer
        )
        return len(reply)

    def consumers(self) -> list[dict[bytes, Any]]:
        reply = command(self.client, "XINFO CONSUMERS", self.stream, self.group)
        return [_pairs(row) for row in reply]

    def group_stats(self) -> GroupStats:
        """The group's lag and pending counts and its consumers, for the scrape-time gauges."""
        info = self.group_info()
        if info is None:
            return GroupStats(None, 0, [])
        lag = info.get(b"lag")
        consumers = [
            (c[b"name"].decode(), int(c[b"pending"]), int(c[b"idle"]) / 1000)
            for c in self.consumers()
        ]
        return GroupStats(None if lag is None else int(lag), int(info[b"pending"]), consumers)

    def group_info(self) -> dict[bytes, Any] | None:
        for row in command(self.client, "XINFO GROUPS", self.stream):
            info = _pairs(row)
            if info.get(b"name") == self.group.encode():
                return info
        return None


def entries_of(reply: Any) -> list[RawEntry]:
    """The entries of an XREADGROUP reply on one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return [(eid, fields) for eid, fields in entries]


def _pairs(row: list[Any] | dict[bytes, Any]) -> dict[bytes, Any]:
    if isinstance(row, dict):  # RESP3 replies are maps already
        return row
    it = iter(row)
    return dict(zip(it, it, strict=False))
