"""The change feed, and a downstream consumer that keeps an attribution table current.

One stream for every tenant (``STITCH_CHANGES_STREAM``, default ``alias:changes``) gets one
entry per change to an alias map, written by the same script as the change: ``tenant``,
``op``, ``previous_user_id``, ``user_id``, ``root`` (the root of previous_user_id's
component after the change) and ``source_id`` (the identify's input entry id). Folding it
from its start rebuilds the alias maps exactly (:func:`fold`).

The stream is bounded by an approximate MAXLEN (``STITCH_CHANGES_MAXLEN``): a consumer that
falls behind the bound has missed changes for good and must re-snapshot from the maps
(:meth:`Attribution.snapshot`) before it follows the feed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from .ids import decode_id

__all__ = ["Attribution", "Change", "ChangeOp", "fold", "follow", "parse_change", "read_changes"]


class ChangeOp(StrEnum):
    LINK = "link"
    """previous_user_id -> user_id was written (it had no link before)."""
    UNLINK = "unlink"
    """previous_user_id -> user_id was removed (``lehnz-stitch unlink``); root is
    previous_user_id, now the root of its own tree; source_id is the operation's id."""
    BLOCK = "block"
    """The link just unlinked will never be made again (right after its ``unlink``)."""
    FORGET = "forget"
    """A person was erased (``lehnz-stitch forget``): previous_user_id and user_id are empty,
    root is the HMAC (STITCH_TOMBSTONE_KEY) of the erased component's root, field ``ids`` how
    many ids were erased; source_id is the operation's id. No raw id is written."""
    QUARANTINE = "quarantine"
    """previous_user_id -> user_id was held, not written (merge protection): fields
    ``reason`` and ``size`` (the component it would have made); source_id: the identify's.
    Also an existing link ``audit --apply`` held (reason ``audit:<rule>``, source_id the
    operation's id): an UNLINK entry for it comes first."""
    APPROVE = "approve"
    """An operator applied a held link (``quarantine approve``): a link like LINK, whose
    source_id is the operation's id."""
    REJECT = "reject"
    """An operator dropped a held link (``quarantine reject``); BLOCK follows with --block."""


LINKING = (ChangeOp.LINK, ChangeOp.APPROVE)
NOT_LINKING = (ChangeOp.BLOCK, ChangeOp.QUARANTINE, ChangeOp.REJECT)


class Change(NamedTuple):
    entry_id: str
    tenant: str
    op: ChangeOp
    previous_user_id: str
    user_id: str
    root: str
    source_id: str


def parse_change(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Change:
    def text(name: bytes) -> str:
        return decode_id(fields[name])

    return Change(
        decode_id(entry_id) if isinstance(entry_id, bytes) else entry_id,
        text(b"tenant"),
        ChangeOp(text(b"op")),
        text(b"previous_user_id"),
        text(b"user_id"),
        text(b"root"),
        text(b"source_id"),
    )


def read_changes(client: redis.Redis, stream: str, *, count: int = 1000) -> Iterator[Change]:
    """The whole feed from its start, oldest first, ``count`` entries per XRANGE."""
    start = "-"
    while True:
        batch: Any = client.xrange(stream, start, "+", count=count)
        for entry_id, fields in batch:
            yield parse_change(entry_id, fields)
        if len(batch) < count:
            return
        start = "(" + decode_id(batch[-1][0])


def fold(changes: Iterable[Change]) -> dict[str, dict[str, str]]:
    """The alias maps (tenant -> previous_user_id -> user_id) the changes describe (links and
    unlinks; a forget names no ids: see Attribution.erase)."""
    maps: dict[str, dict[str, str]] = {}
    for change in changes:
        if change.op in LINKING:
            maps.setdefault(change.tenant, {})[change.previous_user_id] = change.user_id
        elif change.op is ChangeOp.UNLINK:
            maps.get(change.tenant, {}).pop(change.previous_user_id, None)
    return maps


class Attribution:
    """An example downstream table: every id a feed or snapshot named -> its person (root).

    A link moves previous_user_id's whole tree (previous_user_id was a root: the first link
    of an id stands) under the root the change names, so the table keeps each root's
    members to re-point them without reading Redis.
    """

    __slots__ = ("members", "resnapshot", "root_of")

    def __init__(self) -> None:
        self.root_of: dict[tuple[str, str], str] = {}
        self.members: dict[tuple[str, str], set[str]] = {}
        self.resnapshot: set[str] = set()
        """Tenants with an unlink or forget since the last snapshot: the table keeps roots,
        not trees, so it cannot tell which ids moved (or, for forget, which were erased:
        the entry names none); re-read those tenants' maps."""

    def apply(self, change: Change) -> None:
        tenant, root = change.tenant, change.root
        if change.op not in LINKING:
            if change.op not in NOT_LINKING:
                self.resnapshot.add(tenant)
            return
        moved = self.members.pop((tenant, change.previous_user_id), set())
        moved |= {change.previous_user_id, change.user_id, root}
        for uid in moved:
            self.root_of[tenant, uid] = root
        self.members.setdefault((tenant, root), set()).update(moved)

    def snapshot(self, maps: Mapping[str, Mapping[str, str]]) -> None:
        """Start over from whole alias maps (read with HSCAN), e.g. after falling behind."""
        self.root_of.clear()
        self.members.clear()
        self.resnapshot.clear()
        for tenant, links in maps.items():
            for uid in links:
                path, node = [uid], uid
                while node in links and len(path) <= len(links):
                    node = links[node]
                    path.append(node)
                for member in path:
                    self.root_of[tenant, member] = node
                self.members.setdefault((tenant, node), set()).update(path)

    def person(self, tenant: str, uid: str) -> str:
        return self.root_of.get((tenant, uid), uid)


def follow(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    table: Attribution,
    *,
    count: int = 500,
    block_ms: int | None = None,
) -> int:
    """One step of a consumer group on the feed: read new entries, apply, then XACK; returns
    the changes applied. The table lives in memory: a restarted consumer snapshots again."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    entries = [entry for _, batch in reply or [] for entry in batch]
    for entry_id, fields in entries:
        table.apply(parse_change(entry_id, fields))
    if entries:
        client.xack(stream, group, *(entry_id for entry_id, _ in entries))
    return len(entries)
