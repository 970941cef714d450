"""Bulk-load links through the worker's link rules: one Lua script per chunk of rows,
a few chunks pipelined per round trip.

The client-side half of the rules runs here as in the planner (placeholders refused, a
self-link a noop, ids over STITCH_MAX_ID_BYTES refused as bad rows); the server-side half
(first link stands, cycles, the depth cap with its heights) is link_rules.lua inside
import.lua, which also writes each applied link's provenance and change-feed entry. A
chunk is decided whole, then written whole or refused whole, so a killed import leaves
whole chunks applied and nothing half-written; re-running the file finds those links in
place (the first link stands: noops) and writes nothing for them, no feed entry included.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from threading import Event
from typing import Any

import redis

from resolver.heights import heights_key, sync
from resolver.links import LinkRules
from resolver.provenance import provenance_key
from resolver.quarantine import protection_key, quarantine_key, sizes_key
from resolver.removals import children_key, removals_key, tombstones
from resolver.scripts import LINK_RULES_LUA, load_lua

from ..config import Settings
from .import_rows import BadRow, Row

__all__ = ["CHUNK", "IMPORT_LUA", "PIPELINE", "Importer", "Outcome", "file_id", "rows_of"]

IMPORT_LUA = LINK_RULES_LUA + load_lua("worker", "import.lua")
CHUNK = 1000
"""Rows per script call: about 10 ms of Redis time, so the worker's commits wait at most
that long behind an import (a script blocks Redis while it runs)."""
PIPELINE = 4
"""Chunks sent per round trip: Redis runs one while the next chunk's rows are parsed."""
CONSUMER = "lehnz-stitch-import"
"""The ``consumer`` field of an imported link's provenance."""


class Outcome(StrEnum):
    APPLIED = "applied"
    NOOP = "noop"
    CONFLICT = "conflict"
    CYCLE = "cycle"
    TOO_DEEP = "too_deep"
    BLOCKED = "blocked"
    FORGOTTEN = "forgotten"
    QUARANTINED = "quarantined"
    """Held: the component would outgrow the size cap, or its root took too many links this
    hour (see `quarantine list`)."""
    PLACEHOLDER = "placeholder"
    INVALID = "invalid"
    """The row did not parse (reported by line number)."""


def file_id(path: Path) -> tuple[str, int]:
    """The first 12 hex digits of the file's SHA-256 (the same file gives the same source
    ids on every run) and its line count (for the progress line); one read of the file."""
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
    return digest.hexdigest()[:12], lines


def rows_of(
    rows: Iterable[Row | BadRow], rules: LinkRules, tally: Counter[Outcome]
) -> Iterator[Row | BadRow]:
    """The rows the script must decide, and the bad ones; placeholders and self-links are
    decided here and only counted."""
    is_placeholder = rules.is_placeholder
    for row in rows:
        if isinstance(row, BadRow):
            tally[Outcome.INVALID] += 1
            yield row
        elif is_placeholder(row.previous_user_id) or is_placeholder(row.user_id):
            tally[Outcome.PLACEHOLDER] += 1
        elif row.previous_user_id == row.user_id:
            tally[Outcome.NOOP] += 1
        else:
            yield row


class Importer:
    """Applies (or, in a dry run, only decides) chunks of rows for one tenant."""

    __slots__ = ("_args", "_cap", "_client", "_keys", "_mac", "_rate", "_sha", "dry_run", "scratch")

    def __init__(
        self, client: redis.Redis, settings: Settings, tenant: str, source: str, *, dry_run: bool
    ) -> None:
        self._client = client
        self.dry_run = dry_run
        alias = settings.alias_prefix + tenant
        keys = [
            *(alias, heights_key(alias), provenance_key(alias), settings.changes_key),
            *(removals_key(alias), children_key(alias), sizes_key(alias), quarantine_key(alias)),
            protection_key(alias),
        ]
        self._mac = settings.tombstone_key.encode() or None
        """Tombstones are checked as the worker checks them: by the HMAC of each id."""
        self.scratch: tuple[str, ...] = ()
        """A dry run's staging hashes (links, heights, sizes, protection), deleted by
        :meth:`close`."""
        if dry_run:
            run = f"{alias}:import-dry-run:{secrets.token_hex(4)}"
            self.scratch = (run + ":links", run + ":heights", run + ":sizes", run + ":protection")
        self._keys = [*keys, *self.scratch]
        self._args = [
            "dry" if dry_run else "apply",
            settings.max_chain_depth,
            settings.changes_maxlen,
            tenant,
            CONSUMER,
            f"import:{source}:",
        ]
        self._cap = settings.max_component_size
        self._rate = settings.max_links_per_root_per_hour
        self._sha = ""

    def start(self, max_depth: int) -> None:
        """Measure the map's heights if they do not account for every link (as the worker
        does at start-up), then load the script."""
        sync(self._client, self._keys[0], max_depth)
        self._sha = str(self._client.script_load(IMPORT_LUA))

    def applying(
        self, batches: Iterable[list[list[Row]]], stop: Event
    ) -> Iterator[tuple[list[list[Row]], list[list[Outcome]]]]:
        """Each batch with its outcomes, in order, until ``stop`` is set (checked before a
        batch is read, so every batch read is applied and yielded). One batch is in Redis
        while the next is parsed: a thread waits on the socket, which frees the GIL."""
        pulled = iter(batches)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import") as redis_side:
            in_flight: tuple[list[list[Row]], Future[list[list[Outcome]]]] | None = None
            while not stop.is_set() and (batch := next(pulled, None)) is not None:
                sent = redis_side.submit(self.apply, batch)
                if in_flight is not None:
                    yield in_flight[0], in_flight[1].result()
                in_flight = batch, sent
            if in_flight is not None:
                yield in_flight[0], in_flight[1].result()

    def apply(self, chunks: list[list[Row]]) -> list[list[Outcome]]:
        """Each chunk's outcomes, in row order; the chunks in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.evalsha(self._sha, len(self._keys), *self._keys, *self._chunk_args(chunk))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        outcomes = []
        for chunk, reply in zip(chunks, replies, strict=True):
            answer = reply
            if isinstance(reply, redis.exceptions.NoScriptError):  # Redis restarted
                self._sha = str(self._client.script_load(IMPORT_LUA))
                answer = self._client.evalsha(
                    self._sha, len(self._keys), *self._keys, *self._chunk_args(chunk)
                )
            if isinstance(answer, Exception):
                raise answer
            outcomes.append([Outcome(o.decode()) for o in answer])
        return outcomes

    def _chunk_args(self, chunk: list[Row]) -> list[Any]:
        args: list[Any] = [*self._args, len(chunk), self._cap, self._rate]
        for row in chunk:
            at = "" if row.applied_at_ms is None else row.applied_at_ms
            prev, user = row.previous_user_id, row.user_id
            macs = ("", "") if self._mac is None else tombstones(self._mac, (prev, user))
            args.extend((row.line, prev, user, at, *macs))
        return args

    def close(self) -> None:
        if self.scratch:
            self._client.delete(*self.scratch)
