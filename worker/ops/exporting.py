"""The alias map as the join table warehouses load, read in pages in constant memory.

One page: HSCAN ``COUNT PAGE`` of the alias map, HMGET of those ids' provenance, and their
roots through the library's batch resolution (``Resolver.resolve_many``: one HMGET per hop
level, over a bounded cache). Nothing but the page and the cache is held, whatever the
map's size.

What a scan sees while links are added (HSCAN's guarantees, links never being removed):
every link present when the export starts is in it; a link added during the export may or
may not be; a link may appear twice if the hash was resized during the scan (rows are
identical but for ``root``, which may have moved on); each ``root`` is the root when its
page was read. The change feed's last id, read before the scan, is where a consumer
resumes: replaying the feed from after it onto the export (idempotent) gives the map as
it is now.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis

from resolver import Resolver
from resolver.ids import decode_id
from resolver.provenance import parse_provenance, provenance_key

from ..config import Settings
from ..stream import command

__all__ = ["COLUMNS", "PAGE", "ExportRow", "feed_position", "iso_ms", "pages"]

PAGE = 1000
"""Links per HSCAN call (a hint: Redis returns about that many)."""
CACHE = 100_000
"""Entries of the resolver's cache: bounded, however many links the map holds."""
COLUMNS = ("previous_user_id", "user_id", "root", "source_id", "applied_at")


class ExportRow(NamedTuple):
    previous_user_id: str
    user_id: str
    root: str
    source_id: str | None
    """The identify's input entry id (``import:<file>:<line>`` for an imported link); None
    for a link without provenance (written by another program)."""
    applied_at_ms: int | None


def feed_position(client: redis.Redis, feed: str) -> str:
    """The change feed's last generated id (``0-0`` when it does not exist yet)."""
    if int(command(client, "EXISTS", feed)) == 0:
        return "0-0"
    info: Any = client.xinfo_stream(feed)
    return decode_id(info["last-generated-id"])


def pages(client: redis.Redis, settings: Settings, tenant: str) -> Iterator[list[ExportRow]]:
    """The map's links, one page at a time."""
    alias = settings.alias_prefix + tenant
    resolver = Resolver(client, key_prefix=settings.alias_prefix, cache_size=CACHE)
    cursor = 0
    while True:
        reply: Any = client.hscan(alias, cursor, count=PAGE)
        cursor, found = reply
        if found:
            prevs = [decode_id(k) for k in found]
            users = [decode_id(v) for v in found.values()]
            origins = client.hmget(provenance_key(alias), list(found))
            roots = resolver.resolve_many(tenant, users)
            yield [
                _row(prev, user, root, origin)
                for prev, user, root, origin in zip(prevs, users, roots, origins, strict=True)
            ]
        if cursor == 0:
            return


def _row(prev: str, user: str, root: str, origin: Any) -> ExportRow:
    found = parse_provenance(origin)
    if found is None:
        return ExportRow(prev, user, root, None, None)
    return ExportRow(prev, user, root, found.source_id, found.applied_at_ms)


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
