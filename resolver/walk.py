"""Chain walking over the cache, cycle-safe and deterministic.

Pure functions over an :class:`AliasCache` plus an optional overlay of links that are
assumed but not yet committed; no I/O here, so the hot path stays cheap and testable.
"""

from __future__ import annotations

from enum import IntEnum

from .cache import AliasCache

__all__ = ["UNRESOLVED", "End", "cycle_representative", "walk"]

UNRESOLVED = "\x00unresolved"
"""Overlay value for an id whose next hop is decided elsewhere (by a commit script)."""


class End(IntEnum):
    """How a walk ended."""

    ROOT = 0
    """At an id the cache says had no outgoing link: verify before trusting."""
    UNKNOWN = 1
    """At an id the cache knows nothing about: fetch it."""
    CYCLE = 2
    """The chain loops (or exceeds the depth cap): the answer is deterministic but degenerate."""


def walk(
    cache: AliasCache,
    tenant: str,
    uid: str,
    max_depth: int,
    overlay: dict[str, str] | None = None,
) -> tuple[str, End, int, bool]:
    """Follow ``uid`` through ``overlay`` then ``cache``; return (end, how, hops, used_overlay)."""
    node = uid
    used_overlay = False
    for hops in range(max_depth + 1):
        nxt = None
        if overlay is not None:
            nxt = overlay.get(node)
            if nxt is not None:
                if nxt is UNRESOLVED:
                    return node, End.UNKNOWN, hops, True
                used_overlay = True
        if nxt is None:
            nxt = cache.get(tenant, node)
            if nxt is None:
                return node, End.UNKNOWN, hops, used_overlay
        if nxt == node:
            return node, End.ROOT, hops, used_overlay
        node = nxt
    end = cycle_representative(cache, tenant, uid, max_depth, overlay)
    return end, End.CYCLE, max_depth, used_overlay


def cycle_representative(
    cache: AliasCache,
    tenant: str,
    uid: str,
    max_depth: int,
    overlay: dict[str, str] | None = None,
) -> str:
    """The smallest id on the loop reached from ``uid`` (or the node at the depth cap).

    Whichever member of a foreign cycle a caller starts from, it gets the same answer.
    """
    seen: dict[str, int] = {}
    path: list[str] = []
    node: str | None = uid
    while node is not None and node not in seen and len(path) <= max_depth * 2:
        seen[node] = len(path)
        path.append(node)
        nxt = overlay.get(node) if overlay is not None else None
        node = nxt if nxt is not None else cache.get(tenant, node)
    if node is not None and node in seen:
        return min(path[seen[node] :])
    return path[min(max_depth, len(path) - 1)]
