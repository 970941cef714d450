"""The one reference model of the alias forest, for every property, chaos and fault test.

Plain Python, no cleverness: the first link of an id stands, a link that would close a cycle
or make a chain longer than the cap is refused, placeholders are refused (with the worker's
own PlaceholderRule), and resolution walks to the true end of a chain (a cycle written by
someone else resolves to its smallest member). It re-states the rules independently of
the worker's resolver and Lua, so that a bug there cannot hide behind the same bug here; only
the placeholder list (data, not logic) is shared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from resolver import DEFAULT_MAX_DEPTH, PlaceholderRule

__all__ = ["AliasModel"]


@dataclass
class AliasModel:
    links: dict[str, dict[str, str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    is_placeholder: PlaceholderRule = field(default_factory=PlaceholderRule)
    cap: int = DEFAULT_MAX_DEPTH
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    """(tenant, previous_user_id) -> the entry id of the identify that linked it."""
    refused: dict[str, list[tuple[str, str, str, str]]] = field(default_factory=dict)
    """Per tenant, (source_id, outcome, previous_user_id, user_id) of refusals, in order."""
    blocked: set[tuple[str, str, str]] = field(default_factory=set)
    """(tenant, previous_user_id, user_id) unlinked with block: never linked again."""
    erased: set[tuple[str, str]] = field(default_factory=set)
    """(tenant, id) of forgotten ids (the tombstones)."""
    size_cap: int = 1000
    """No link may grow a component (root and every id resolving to it) past this many ids."""
    held: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)
    """(tenant, previous_user_id) -> (user_id, source_id, reason) of the first held link of
    an id."""
    rate_limit: int = 0
    """No root may take more than this many links (0: any number). Every link of a test
    falls in one hour: the count is all the root's links so far."""
    rate_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(tenant, root) -> links into the root while it was one."""

    def link(self, tenant: str, prev: str, user: str, source: str = "") -> str:
        """Apply identify(prev -> user) in stream order; returns (and counts) the outcome."""
        links = self.links.setdefault(tenant, {})
        if self.is_placeholder(prev) or self.is_placeholder(user):
            outcome = "placeholder"
        elif prev == user:
            outcome = "noop"
        elif (tenant, prev) in self.erased or (tenant, user) in self.erased:
            outcome = "forgotten"
        elif (tenant, prev, user) in self.blocked:
            outcome = "blocked"
        elif links.get(prev) == user:
            outcome = "noop"
        elif prev in links:
            outcome = "conflict"
        elif self.resolve(tenant, user) == prev:
            outcome = "cycle"
        elif self.height(tenant, prev) + len(self.path(tenant, user)) > self.cap:
            outcome = "too_deep"  # prev's deepest id would be height + 1 + depth(user) deep
        elif self.size(tenant, prev) + self.size(tenant, user) > self.size_cap:
            outcome = "quarantined"
            self.held.setdefault((tenant, prev), (user, source, "size"))
        elif self.rate_limit and self.rate_counts[tenant, self.resolve(tenant, user)] >= (
            self.rate_limit
        ):
            outcome = "quarantined"
            self.held.setdefault((tenant, prev), (user, source, "rate"))
        else:
            self.rate_counts[tenant, self.resolve(tenant, user)] += 1
            links[prev] = user
            outcome = "applied"
            self.sources[tenant, prev] = source
        self.outcomes[outcome] += 1
        if outcome not in ("applied", "noop", "forgotten", "quarantined"):
            self.refused.setdefault(tenant, []).append((source, outcome, prev, user))
        return outcome

    def subtree(self, tenant: str, uid: str) -> set[str]:
        """uid and every id whose chain passes through it."""
        return {
            start for start in self.links.get(tenant, {}) if uid in self.path(tenant, start)
        } | {uid}

    def unlink(self, tenant: str, prev: str, block: bool = False) -> set[str]:
        """Remove prev's link; returns the ids whose resolution changed (none: no link)."""
        links = self.links.get(tenant, {})
        if prev not in links:
            return set()
        before = {uid: self.resolve(tenant, uid) for uid in self.subtree(tenant, prev)}
        target = links.pop(prev)
        self.sources.pop((tenant, prev), None)
        if block:
            self.blocked.add((tenant, prev, target))
        return {uid for uid, root in before.items() if self.resolve(tenant, uid) != root}

    def component(self, tenant: str, uid: str) -> set[str]:
        """Every id that resolves where uid does, uid included (uid alone: no link)."""
        links = self.links.get(tenant, {})
        root = self.resolve(tenant, uid)
        ids = set(links) | set(links.values()) | {uid}
        return {other for other in ids if self.resolve(tenant, other) == root}

    def size(self, tenant: str, uid: str) -> int:
        """How many ids uid's component holds."""
        return len(self.component(tenant, uid))

    def sizes(self, tenant: str) -> dict[str, int]:
        """root -> component size, for roots with incoming links (the sizes hash's fields)."""
        links = self.links.get(tenant, {})
        return {root: self.size(tenant, root) for root in {self.resolve(tenant, u) for u in links}}

    def forget(self, tenant: str, uid: str) -> set[str]:
        """Erase uid's component (links, sources, refusals, holds and blocks naming it);
        returns it, or the empty set when uid has no link, hold or block either way."""
        members = self.component(tenant, uid)
        blocks = {b for b in self.blocked if b[0] == tenant and members & {b[1], b[2]}}
        holds = {
            key
            for key, (user, _, _) in self.held.items()
            if key[0] == tenant and (key[1] in members or user in members)
        }
        if len(members) == 1 and not blocks and not holds:
            return set()
        self.blocked -= blocks
        for key in holds:
            del self.held[key]
        links = self.links.get(tenant, {})
        for member in members:
            links.pop(member, None)
            self.sources.pop((tenant, member), None)
            self.erased.add((tenant, member))
        self.refused[tenant] = [
            r for r in self.refused.get(tenant, []) if r[2] not in members and r[3] not in members
        ]
        return members

    def path(self, tenant: str, uid: str) -> list[str]:
        """uid and every id after it, up to the end or the first id seen twice."""
        links, path, seen = self.links.get(tenant, {}), [uid], {uid}
        while path[-1] in links and links[path[-1]] not in seen:
            path.append(links[path[-1]])
            seen.add(path[-1])
        return path

    def resolve(self, tenant: str, uid: str) -> str:
        links, path = self.links.get(tenant, {}), self.path(tenant, uid)
        if path[-1] not in links:
            return path[-1]
        loop_start = path.index(links[path[-1]])
        return min(path[loop_start:])

    def height(self, tenant: str, root: str) -> int:
        """The longest chain that ends at ``root``."""
        return max(
            (p.index(root) for uid in self.links.get(tenant, {})
             if root in (p := self.path(tenant, uid))),
            default=0,
        )  # fmt: skip

    def snapshot(self, tenant: str) -> dict[str, str]:
        return dict(self.links.get(tenant, {}))
