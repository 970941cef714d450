"""Turn one batch of parsed entries into a commit plan, resolving in stream order.

Stream order for one replica: an identify applies to every later event, including later
events of the same batch. The planner predicts each link's outcome from the cache (whose
hops are immutable facts) plus an overlay of the batch's own earlier links, and lists every
root it relied on; the commit script re-checks those roots and predictions atomically and
refuses the whole batch if any is stale, so a cache can never emit a stale resolution.
"""

from __future__ import annotations

from typing import Any

from resolver import UNRESOLVED, AliasCache, End, Resolver, walk
from resolver.heights import heights_key
from resolver.links import LinkOutcome, LinkRules

from .parser import Entry, Kind

__all__ = ["Plan", "Planner"]

EMIT, RESOLVE, DEAD, ACK = b"e", b"r", b"d", b"a"
LINK, LINK_EMIT = b"l", b"L"
APPLIES, REFUSED, UNKNOWN = b"1", b"0", b"?"


class Plan:
    """Everything one commit needs, plus what to learn once it succeeds."""

    __slots__ = (
        "alias_keys",
        "deferred",
        "entries",
        "link_entries",
        "links",
        "local_entries",
        "local_outcomes",
        "n_entries",
        "overlay",
        "own_links",
        "packed",
        "resolutions",
        "roots",
        "tenants",
        "verify",
    )

    def __init__(self) -> None:
        self.tenants: dict[str, int] = {}
        self.alias_keys: list[str] = []
        self.roots: dict[str, set[str]] = {}
        """Per tenant, the ids the batch resolved to as roots: the commit re-checks them."""
        self.verify: list[Any] = []
        self.entries: list[Any] = []
        """Per entry (id, action, args...) as commit.lua reads them."""
        self.n_entries = 0
        self.links: list[tuple[str, str, str]] = []
        """(tenant, prev, user) of every identify sent to the script, in order."""
        self.local_outcomes: list[LinkOutcome] = []
        self.local_entries: list[int] = []
        """Index (in plan order) of the identify each local outcome belongs to."""
        self.link_entries: list[int] = []
        """Index (in plan order) of the identify each link belongs to."""
        self.resolutions = 0
        self.deferred = 0
        """Ids the cache could not resolve: the commit script resolves them."""
        self.overlay: dict[str, dict[str, str]] = {}
        """Links this batch assumes apply, in stream order, before they are committed."""
        self.own_links: dict[str, dict[str, str]] = {}
        """The part of ``overlay`` this batch's own identifies add."""
        self.packed = b""
        """The commit command, packed once the plan is complete (see Committer.pack)."""

    def key_index(self, tenant: str, key_prefix: str) -> int:
        """KEYS index of the tenant's alias hash; its heights hash comes right after it."""
        index = self.tenants.get(tenant)
        if index is None:
            alias_key = key_prefix + tenant
            self.alias_keys.extend((alias_key, heights_key(alias_key)))
            index = self.tenants[tenant] = 2 + len(self.alias_keys)
        return index

    def seal(self, key_prefix: str) -> Plan:
        """Flatten the roots to check into the script's (key index, count, ids...) groups."""
        for tenant, roots in self.roots.items():
            self.verify.extend((self.key_index(tenant, key_prefix), len(roots), *roots))
        return self

    def assume(self, tenant: str, prev: str, target: str) -> None:
        self.overlay.setdefault(tenant, {})[prev] = target
        self.own_links.setdefault(tenant, {})[prev] = target

    @property
    def n_verify(self) -> int:
        return len(self.roots)

    def tenant_of(self) -> dict[int, str]:
        return {index: tenant for tenant, index in self.tenants.items()}


class Planner:
    """Resolves a batch from the cache and builds its :class:`Plan`; does no I/O.

    What the cache cannot answer (ids never seen, links whose outcome depends on them) is
    left to the commit script, which resolves it atomically with the emit and reports what
    it read so the cache learns it: every batch costs exactly one round trip.
    """

    __slots__ = ("cache", "forward_identify", "key_prefix", "resolver", "rules", "too_deep")

    def __init__(self, resolver: Resolver, rules: LinkRules, *, forward_identify: bool) -> None:
        self.resolver = resolver
        self.cache: AliasCache = resolver.cache
        self.too_deep: AliasCache = resolver.too_deep
        self.key_prefix = resolver.key_prefix
        self.rules = rules
        self.forward_identify = forward_identify

    def learn_stale(self, plan: Plan, links: list[int], too_deep: list[int]) -> None:
        """After a stale verdict: remember links refused as too deep (the cache was right,
        only heights it cannot see were not), forget the tenants of the others."""
        deep = set(too_deep)
        self.resolver.forget({plan.links[n][0] for n in links if n not in deep})
        for n in deep:
            tenant, prev, user = plan.links[n]
            self.too_deep.put(tenant, prev, user)

    def plan(self, entries: list[Entry], after: Plan | None = None) -> Plan:
        """``after`` is a plan whose commit runs first: its own links are assumed.

        Only its own: whatever ``after`` assumed in turn has landed in the cache by then.
        """
        plan = Plan()
        if after is not None:
            plan.overlay = {tenant: dict(links) for tenant, links in after.own_links.items()}
        for position, entry in enumerate(entries):
            kind = entry.kind
            if kind is Kind.EVENT:
                self._event(plan, entry)
            elif kind is Kind.IDENTIFY:
                self._identify(plan, entry, position)
            elif kind is Kind.INVALID:
                fields = entry.fields or ()
                plan.entries.extend(
                    (entry.id, DEAD, len(fields), *fields, entry.error, entry.error_code)
                )
            else:
                plan.entries.extend((entry.id, ACK, 0))
        plan.n_entries = len(entries)
        return plan.seal(self.key_prefix)

    def _event(self, plan: Plan, entry: Entry) -> None:
        root = self._resolve(plan, entry.tenant, entry.user_id)
        index = plan.key_index(entry.tenant, self.key_prefix)
        fields = entry.fields or ()
        if root is None:
            plan.entries.extend((entry.id, RESOLVE, len(fields), *fields, index, entry.user_id))
            return
        plan.entries.extend((entry.id, EMIT, len(fields), *fields, root, index))

    def _resolve(self, plan: Plan, tenant: str, uid: str) -> str | None:
        """The root from the cache (recorded for verification), or None to defer."""
        plan.resolutions += 1
        overlay = plan.overlay.get(tenant)
        if (overlay is None or uid not in overlay) and self.cache.get(tenant, uid) == uid:
            end, how, hops, used_overlay = uid, End.ROOT, 0, False  # the common case
        else:
            end, how, hops, used_overlay = walk(self.cache, tenant, uid, overlay)
        if how is not End.ROOT:
            plan.deferred += 1
            return None
        roots = plan.roots.get(tenant)
        if roots is None:
            roots = plan.roots[tenant] = set()
        roots.add(end)
        if hops > 1 and not used_overlay:
            self.cache.put(tenant, uid, end)
        return end

    def _identify(self, plan: Plan, entry: Entry, position: int) -> None:
        tenant, prev, user = entry.tenant, entry.previous_user_id, entry.user_id
        is_placeholder = self.rules.is_placeholder
        placeholder = is_placeholder(prev) or is_placeholder(user)
        if placeholder or prev == user:
            outcome = LinkOutcome.PLACEHOLDER if placeholder else LinkOutcome.NOOP
            plan.local_outcomes.append(outcome)
            plan.local_entries.append(position)
            if self.forward_identify:
                index = plan.key_index(tenant, self.key_prefix)
                fields = entry.fields or ()
                plan.entries.extend((entry.id, RESOLVE, len(fields), *fields, index, user))
            else:
                plan.entries.extend((entry.id, ACK, 0))
            return
        prev_end = self._resolve(plan, tenant, prev)
        user_end = self._resolve(plan, tenant, user) if prev_end in (prev, None) else None
        if prev_end is not None and prev_end != prev:
            expect = REFUSED  # prev already links elsewhere: noop or conflict
        elif prev_end is None or user_end is None:
            expect = UNKNOWN
            plan.assume(tenant, prev, UNRESOLVED)
        elif user_end == prev:
            expect = REFUSED  # would close a cycle
        elif self.too_deep.get(tenant, prev) == user:
            expect = REFUSED  # refused as too deep before: heights only grow, so it still is
        else:
            expect = APPLIES
            plan.assume(tenant, prev, user)
        index = plan.key_index(tenant, self.key_prefix)
        if self.forward_identify:
            fields = entry.fields or ()
            plan.entries.extend(
                (entry.id, LINK_EMIT, len(fields), *fields, index, prev, user, expect)
            )
        else:
            plan.entries.extend((entry.id, LINK, 0, index, prev, user, expect))
        plan.links.append((tenant, prev, user))
        plan.link_entries.append(position)
