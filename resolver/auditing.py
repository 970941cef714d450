"""Existing links that break the current rules (``lehnz-stitch audit``), found in pages and
held in the quarantine by one script per page (``lua/audit.lua``).

Two passes, each in pages of ``PAGE`` links, nothing kept between pages but the ids found:

1. the map itself (HSCAN): a placeholder on either side (``STITCH_EXTRA_PLACEHOLDERS``
   included), a blocked link, an erased id (its tombstone) on either side;
2. the components whose stored size or height is over the caps (HSCAN of the sizes and
   heights hashes: upper bounds, so none is missed), each walked from its root through the
   children index, level by level: the links past the depth cap (their previous_user_id
   deeper than it) and the links past the size cap. This pass holds one component's links
   in memory at a time, and reaches only links in the children index (as forget does).

Which links leave a component over the size cap: its links are replayed in the order they
were applied (provenance time; links without provenance first, as older than any the worker
recorded, then by previous_user_id), each kept if the two parts it joins stay within the
cap, as the size rule would have decided had the cap been in force; a link an operator
approved (provenance consumer ``approved_by``) is always kept. For a blob of anonymous ids
identified into one user_id these are the newest links past the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from .heights import LINKS_FIELD, heights_key, sizes_key
from .ids import decode_id
from .provenance import parse_provenance, provenance_key
from .quarantine import CAP_FIELD, review_keys
from .removals import (
    GENERATION_FIELD,
    TOMBSTONES_FIELD,
    TombstoneKeyMissingError,
    block_field,
    children_key,
    removals_key,
    tombstone,
)
from .scripts import AUDIT_LUA

__all__ = ["PAGE", "Finding", "Reason", "component_findings", "hold", "map_findings"]

PAGE = 1000
"""Links per HSCAN call, per pipelined walk step and per audit script (about as long as an
import chunk: the workers wait at most that long behind one)."""


class Reason(StrEnum):
    """The rule a link breaks, as its hold's reason in the quarantine."""

    FORGOTTEN = "audit:forgotten"
    BLOCKED = "audit:blocked"
    PLACEHOLDER = "audit:placeholder"
    TOO_DEEP = "audit:too_deep"
    SIZE = "audit:size"


class Finding(NamedTuple):
    previous_user_id: bytes
    user_id: bytes
    reason: Reason

    def as_json(self, status: str) -> dict[str, str]:
        return {
            "previous_user_id": decode_id(self.previous_user_id),
            "user_id": decode_id(self.user_id),
            "reason": str(self.reason),
            "status": status,
        }


def map_findings(
    client: redis.Redis,
    alias_key: str,
    is_placeholder: Callable[[str], bool],
    tombstone_key: bytes | None,
) -> Iterator[tuple[int, list[Finding]]]:
    """(links read, links breaking a rule) per HSCAN page of the map."""
    meta: Any = client.hmget(removals_key(alias_key), [GENERATION_FIELD, TOMBSTONES_FIELD])
    removed = int(meta[0] or 0) > 0
    erased = int(meta[1] or 0) > 0
    if erased and not tombstone_key:
        raise TombstoneKeyMissingError(f"{alias_key} has tombstones: auditing needs the key")
    cursor = 0
    while True:
        reply: Any = client.hscan(alias_key, cursor, count=PAGE)
        cursor, page = reply
        links = list(page.items())
        reasons: list[Reason | None] = [None] * len(links)
        if removed:
            _removed(client, alias_key, links, reasons, tombstone_key if erased else None)
        for k, (prev, user) in enumerate(links):
            if reasons[k] is None and (
                is_placeholder(decode_id(prev)) or is_placeholder(decode_id(user))
            ):
                reasons[k] = Reason.PLACEHOLDER
        yield len(links), [Finding(p, u, r) for (p, u), r in zip(links, reasons, strict=True) if r]
        if cursor == 0:
            return


def _removed(
    client: redis.Redis,
    alias_key: str,
    links: list[tuple[bytes, bytes]],
    reasons: list[Reason | None],
    tombstone_key: bytes | None,
) -> None:
    """Marks the links that are blocked, or name an erased id (one HMGET)."""
    fields: list[bytes | str] = [block_field(p, u) for p, u in links]
    if tombstone_key:
        for prev, user in links:
            fields += ["t" + tombstone(tombstone_key, decode_id(uid)) for uid in (prev, user)]
    found: Any = client.hmget(removals_key(alias_key), fields) if links else []
    for k in range(len(links)):
        if tombstone_key and (found[len(links) + 2 * k] or found[len(links) + 2 * k + 1]):
            reasons[k] = Reason.FORGOTTEN
        elif found[k]:
            reasons[k] = Reason.BLOCKED


class _Link(NamedTuple):
    target: bytes
    depth: int
    """Links from previous_user_id to the component's root."""


def component_findings(
    client: redis.Redis,
    alias_key: str,
    *,
    max_depth: int,
    default_cap: int,
    approved_by: str,
    skip: set[bytes],
) -> Iterator[list[Finding]]:
    """The links past the depth and size caps, one component at a time; links whose
    previous_user_id is in ``skip`` (found already) count as gone."""
    raw_cap: Any = client.hget(sizes_key(alias_key), CAP_FIELD)
    cap = default_cap if raw_cap is None else int(raw_cap)
    roots = _over(client, sizes_key(alias_key), CAP_FIELD, cap)
    roots |= _over(client, heights_key(alias_key), LINKS_FIELD, max_depth)
    for root in sorted(roots):
        links = _walk(client, alias_key, root)
        too_deep = [p for p, link in links.items() if link.depth == max_depth + 1]
        gone = skip | set(too_deep)
        found = [Finding(p, links[p].target, Reason.TOO_DEEP) for p in too_deep if p not in skip]
        if len(links) + 1 > cap:
            held = _past_cap(client, alias_key, links, cap, approved_by, gone)
            found += [Finding(p, links[p].target, Reason.SIZE) for p in held]
        if found:
            yield found


def _over(client: redis.Redis, key: str, skipped: str, limit: int) -> set[bytes]:
    """The fields of a hash of counts whose value is above ``limit``."""
    return {
        field
        for field, value in client.hscan_iter(key, count=PAGE)
        if field != skipped.encode() and value.isdigit() and int(value) > limit
    }


def _walk(client: redis.Redis, alias_key: str, root: bytes) -> dict[bytes, _Link]:
    """Every link of root's component in the children index (checked against the map), by
    previous_user_id, breadth first: one pipelined round trip per PAGE ids of a level."""
    links: dict[bytes, _Link] = {}
    level, depth = [root], 0
    while level:
        depth += 1
        below: list[bytes] = []
        for first in range(0, len(level), PAGE):
            below += _children(client, alias_key, level[first : first + PAGE], root, links, depth)
        level = below
    return links


def _children(
    client: redis.Redis,
    alias_key: str,
    nodes: Sequence[bytes],
    root: bytes,
    links: dict[bytes, _Link],
    depth: int,
) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        prefix = b"%d:" % len(node) + node
        pipe.zrangebylex(children_key(alias_key), b"[" + prefix, b"[" + prefix + b"\xff")
    pairs = [
        (node, member[len(node) + len(b"%d:" % len(node)) :])
        for node, members in zip(nodes, pipe.execute(), strict=True)
        for member in members
    ]
    if not pairs:
        return []
    targets: Any = client.hmget(alias_key, [child for _, child in pairs])
    found = []
    for (node, child), target in zip(pairs, targets, strict=True):
        if target == node and child != root and child not in links:
            links[child] = _Link(node, depth)
            found.append(child)
    return found


def _past_cap(
    client: redis.Redis,
    alias_key: str,
    links: dict[bytes, _Link],
    cap: int,
    approved_by: str,
    gone: set[bytes],
) -> list[bytes]:
    """The links the size rule holds when the component's links are replayed in order."""
    order: list[tuple[int, int, bytes]] = []
    approved: set[bytes] = set()
    prevs = list(links)
    for first in range(0, len(prevs), PAGE):
        chunk = prevs[first : first + PAGE]
        origins: Any = client.hmget(provenance_key(alias_key), chunk)
        for prev, origin in zip(chunk, origins, strict=True):
            found = parse_provenance(origin)
            order.append((0, 0, prev) if found is None else (1, found.applied_at_ms, prev))
            if found is not None and found.consumer == approved_by:
                approved.add(prev)
    parent: dict[bytes, bytes] = {}
    size: dict[bytes, int] = {}

    def find(uid: bytes) -> bytes:
        while uid in parent:
            parent[uid] = parent.get(parent[uid], parent[uid])  # path halving
            uid = parent[uid]
        return uid

    held = []
    for _, _, prev in sorted(order):
        if prev in gone:
            continue
        top, bottom = find(links[prev].target), find(prev)
        joined = size.get(top, 1) + size.get(bottom, 1)
        if joined > cap and prev not in approved:
            held.append(prev)
            continue
        parent[bottom], size[top] = top, joined
    return held


def hold(
    client: redis.Redis,
    alias_key: str,
    tenant: str,
    findings: Sequence[Finding],
    *,
    op_id: str,
    changes_key: str,
    changes_maxlen: int,
    max_depth: int,
    tombstone_key: bytes | None,
) -> list[str]:
    """Quarantines up to PAGE findings in one script; one status each ('held', 'changed',
    'kept', 'already_held': see lua/audit.lua)."""
    keys = review_keys(alias_key, changes_key)
    args: list[Any] = [op_id, tenant, changes_maxlen, max_depth, len(findings)]
    for found in findings:
        macs = ["", ""]
        if tombstone_key and found.reason is Reason.FORGOTTEN:
            uids = (found.previous_user_id, found.user_id)
            macs = [tombstone(tombstone_key, decode_id(uid)) for uid in uids]
        args += [found.previous_user_id, found.user_id, str(found.reason), *macs]
    reply: Any = client.register_script(AUDIT_LUA)(keys=keys, args=args)
    return [decode_id(status) for status in reply]
