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
    """The chain loops (a cycle someone else wrote): the answer is its smallest member."""


FAST_HOPS = 64
"""Hops walked before the walk starts watching for loops. Chains the link rules write are at
most ``STITCH_MAX_CHAIN_DEPTH`` links (and compressed in the cache), so only foreign data pays."""


def walk(
    cache: AliasCache,
    tenant: str,
    uid: str,
    overlay: dict[str, str] | None = None,
) -> tuple[str, End, int, bool]:
    """Follow ``uid`` through ``overlay`` then ``cache`` to the true end of what they hold;
    return (end, how, hops, used_overlay).

    There is no depth cap: every hop the cache holds is a fact (``id -> a node on its
    chain``), so walking to the end gives the same answer however much of the chain was
    compressed, and only a real cycle stops a walk early.
    """
    node = uid
    used_overlay = False
    hops = 0
    seen: set[str] | None = None
    while True:
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
        hops += 1
        if hops > FAST_HOPS:
            if seen is None:
                seen = set()
            elif nxt in seen:
                end = cycle_representative(cache, tenant, nxt, overlay)
                return end, End.CYCLE, hops, used_overlay
            seen.add(nxt)
        node = nxt


def cycle_representative(
    cache: AliasCache,
    tenant: str,
    member: str,
    overlay: dict[str, str] | None = None,
) -> str:
    """The smallest id on the loop through ``member``: whichever member of a foreign cycle a
    caller starts from, it gets the same answer."""
    loop = [member]
    node = _next(cache, tenant, member, overlay)
    while node is not None and node != member:
        loop.append(node)
        node = _next(cache, tenant, node, overlay)
    return min(loop)


def _next(cache: AliasCache, tenant: str, node: str, overlay: dict[str, str] | None) -> str | None:
    nxt = overlay.get(node) if overlay is not None else None
    return nxt if nxt is not None else cache.get(tenant, node)
