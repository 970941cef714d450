"""Turn one batch of parsed entries into a commit plan, resolving in stream order.

Stream order for one replica: an identify applies to every later event, including later
events of the same batch. The planner predicts each link's outcome from the cache (whose
hops are immutable facts) plus an overlay of the batch's own earlier links, and lists every
root it relied on; the commit script re-checks those roots and predictions atomically and
refuses the whole batch if any is stale, so a cache can never emit a stale resolution.
"""

from __future__ import annotations

from typing import Any

from resolver import AliasCache, End, Resolver, walk
from resolver.links import LinkOutcome, LinkRules

from .schema import Entry, Kind

__all__ = ["Plan", "Planner"]

EMIT, DEAD, ACK = b"e", b"d", b"a"


class Plan:
    """Everything one commit needs, plus what to learn once it succeeds."""

    __slots__ = (
        "alias_keys",
        "cycles",
        "entries",
        "links",
        "local_outcomes",
        "overlay",
        "resolutions",
        "roots",
        "tenants",
        "unknown",
        "verify",
    )

    def __init__(self) -> None:
        self.tenants: dict[str, int] = {}
        self.alias_keys: list[str] = []
        self.roots: dict[str, set[str]] = {}
        """Per tenant, the ids the batch resolved to as roots: the commit re-checks them."""
        self.verify: list[Any] = []
        self.links: list[Any] = []
        self.entries: list[Any] = []
        """(entry id, action, a, b) per entry, as commit.lua reads them."""
        self.local_outcomes: list[LinkOutcome] = []
        self.resolutions = 0
        self.cycles = 0
        self.overlay: dict[str, dict[str, str]] = {}
        """Links this batch assumes apply, in stream order, before they are committed."""
        self.unknown: dict[str, set[str]] = {}
        """Ids the cache could not finish: fetch them and plan again."""

    def key_index(self, tenant: str, key_prefix: str) -> int:
        index = self.tenants.get(tenant)
        if index is None:
            self.alias_keys.append(key_prefix + tenant)
            index = self.tenants[tenant] = 3 + len(self.alias_keys)
        return index

    def seal(self, key_prefix: str) -> Plan:
        """Flatten the roots to check into the script's (key index, id) pairs."""
        for tenant, roots in self.roots.items():
            index = self.key_index(tenant, key_prefix)
            for root in roots:
                self.verify.extend((index, root))
        return self

    @property
    def n_verify(self) -> int:
        return len(self.verify) // 2

    @property
    def n_links(self) -> int:
        return len(self.links) // 4

    @property
    def n_entries(self) -> int:
        return len(self.entries) // 4

    def applied_links(self) -> list[tuple[str, str, str]]:
        """(tenant, prev, user) of the links this plan predicts will apply."""
        by_index = {index: tenant for tenant, index in self.tenants.items()}
        links = self.links
        return [
            (by_index[links[i]], links[i + 1], links[i + 2])
            for i in range(0, len(links), 4)
            if links[i + 3] == b"1"
        ]


class Planner:
    """Resolves a batch and builds its :class:`Plan`; owns no I/O but the resolver's fetch."""

    __slots__ = (
        "cache",
        "cache_hits",
        "cache_misses",
        "cycles",
        "depths",
        "forward_identify",
        "key_prefix",
        "max_depth",
        "resolver",
        "rules",
    )

    def __init__(self, resolver: Resolver, rules: LinkRules, *, forward_identify: bool) -> None:
        self.resolver = resolver
        self.cache: AliasCache = resolver.cache
        self.key_prefix = resolver.key_prefix
        self.max_depth = resolver.max_depth
        self.rules = rules
        self.forward_identify = forward_identify
        self.cache_hits = 0
        self.cache_misses = 0
        self.cycles = 0
        self.depths: list[int] = []

    def plan(self, entries: list[Entry], after: Plan | None = None) -> Plan:
        """Plan from the cache after fetching the ids it has never seen, in one round trip.

        A warm batch is planned in one pass with no I/O. Chains the first fetch could not
        finish are fetched and the batch planned again: one round trip per hop level of
        the deepest cold chain. ``after`` is a plan whose commit is still in flight: its
        links are assumed, as they will be applied first.
        """
        cold = self._fetch_unseen(entries)
        plan = self._plan_once(entries, cold, after)
        for _ in range(self.max_depth):
            if not plan.unknown:
                break
            self.resolver.fetch(plan.unknown)
            plan = self._plan_once(entries, cold, after)
        self.cache_misses += len(cold)
        self.cache_hits += max(0, plan.resolutions - len(cold))
        self.cycles += plan.cycles
        return plan.seal(self.key_prefix)

    def _fetch_unseen(self, entries: list[Entry]) -> set[tuple[str, str]]:
        get = self.cache.get
        wanted: dict[str, set[str]] = {}
        for entry in entries:
            kind = entry.kind
            if kind is Kind.EVENT or kind is Kind.IDENTIFY:
                if get(entry.tenant, entry.user_id) is None:
                    wanted.setdefault(entry.tenant, set()).add(entry.user_id)
                if kind is Kind.IDENTIFY and get(entry.tenant, entry.previous_user_id) is None:
                    wanted.setdefault(entry.tenant, set()).add(entry.previous_user_id)
        if wanted:
            self.resolver.fetch(wanted)
        return {(tenant, uid) for tenant, ids in wanted.items() for uid in ids}

    def _plan_once(
        self, entries: list[Entry], cold: set[tuple[str, str]], after: Plan | None
    ) -> Plan:
        plan = Plan()
        if after is not None:
            plan.overlay = {tenant: dict(links) for tenant, links in after.overlay.items()}
        out = plan.entries
        resolve = self._resolve
        for entry in entries:
            kind = entry.kind
            if kind is Kind.EVENT:
                out.extend((entry.id, EMIT, resolve(plan, entry.tenant, entry.user_id, cold), b""))
            elif kind is Kind.IDENTIFY:
                self._identify(plan, entry, cold)
            elif kind is Kind.INVALID:
                out.extend((entry.id, DEAD, entry.error, entry.error_code))
            else:
                out.extend((entry.id, ACK, b"", b""))
        return plan

    def _resolve(self, plan: Plan, tenant: str, uid: str, cold: set[tuple[str, str]]) -> str:
        plan.resolutions += 1
        if not plan.overlay and self.cache.get(tenant, uid) == uid:
            end, how, hops, used_overlay = uid, End.ROOT, 0, False  # the common case: a root
        else:
            end, how, hops, used_overlay = walk(
                self.cache, tenant, uid, self.max_depth, plan.overlay.get(tenant)
            )
        if how is End.ROOT:
            roots = plan.roots.get(tenant)
            if roots is None:
                roots = plan.roots[tenant] = set()
            roots.add(end)
            if hops > 1 and not used_overlay:
                self.cache.put(tenant, uid, end)
            if cold and (tenant, uid) in cold:
                self.depths.append(hops)
        elif how is End.UNKNOWN:
            plan.unknown.setdefault(tenant, set()).add(end)
        else:
            plan.cycles += 1
        return end

    def _identify(self, plan: Plan, entry: Entry, cold: set[tuple[str, str]]) -> None:
        tenant, prev, user = entry.tenant, entry.previous_user_id, entry.user_id
        is_placeholder = self.rules.is_placeholder
        if is_placeholder(prev) or is_placeholder(user):
            plan.local_outcomes.append(LinkOutcome.PLACEHOLDER)
        elif prev == user:
            plan.local_outcomes.append(LinkOutcome.NOOP)
        else:
            prev_end = self._resolve(plan, tenant, prev, cold)
            user_end = self._resolve(plan, tenant, user, cold)
            applies = prev_end == prev and user_end != prev
            if applies:
                plan.overlay.setdefault(tenant, {})[prev] = user
            plan.links.extend(
                (plan.key_index(tenant, self.key_prefix), prev, user, b"1" if applies else b"0")
            )
        if self.forward_identify:
            root = self._resolve(plan, tenant, user, cold)
            plan.entries.extend((entry.id, EMIT, root, b""))
        else:
            plan.entries.extend((entry.id, ACK, b"", b""))
