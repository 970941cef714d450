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

    def link(self, tenant: str, prev: str, user: str, source: str = "") -> str:
        """Apply identify(prev -> user) in stream order; returns (and counts) the outcome."""
        links = self.links.setdefault(tenant, {})
        if self.is_placeholder(prev) or self.is_placeholder(user):
            outcome = "placeholder"
        elif prev == user or links.get(prev) == user:
            outcome = "noop"
        elif prev in links:
            outcome = "conflict"
        elif self.resolve(tenant, user) == prev:
            outcome = "cycle"
        elif self.height(tenant, prev) + len(self.path(tenant, user)) > self.cap:
            outcome = "too_deep"  # prev's deepest id would be height + 1 + depth(user) deep
        else:
            links[prev] = user
            outcome = "applied"
            self.sources[tenant, prev] = source
        self.outcomes[outcome] += 1
        if outcome not in ("applied", "noop"):
            self.refused.setdefault(tenant, []).append((source, outcome, prev, user))
        return outcome

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
