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

F_RESOLVED = b"resolved_user_id"
F_SOURCE = b"source_id"
F_ERROR = b"error"
F_ERROR_CODE = b"error_code"
EMIT, DEAD, ACK = b"e", b"d", b"a"


class Plan:
    """Everything one commit needs, plus what to learn once it succeeds."""

    __slots__ = (
        "alias_keys",
        "cycles",
        "entries",
        "links",
        "local_outcomes",
        "n_emit",
        "n_entries",
        "overlay",
        "resolutions",
        "tenants",
        "unknown",
        "verified",
        "verify",
    )

    def __init__(self) -> None:
        self.tenants: dict[str, int] = {}
        self.alias_keys: list[str] = []
        self.verify: list[Any] = []
        self.links: list[Any] = []
        self.entries: list[Any] = []
        self.local_outcomes: list[LinkOutcome] = []
        self.n_emit = 0
        self.n_entries = 0
        self.resolutions = 0
        self.cycles = 0
        self.overlay: dict[str, dict[str, str]] = {}
        """Links this batch assumes apply, in stream order, before they are committed."""
        self.verified: set[tuple[str, str]] = set()
        self.unknown: dict[str, set[str]] = {}
        """Ids the cache could not finish: fetch them and plan again."""

    def ack_only(self, entry_id: bytes) -> None:
        self.entries.extend((entry_id, ACK, 0))
        self.n_entries += 1

    def key_index(self, tenant: str, key_prefix: str) -> int:
        index = self.tenants.get(tenant)
        if index is None:
            self.alias_keys.append(key_prefix + tenant)
            index = self.tenants[tenant] = 3 + len(self.alias_keys)
        return index

    @property
    def n_verify(self) -> int:
        return len(self.verify) // 2

    @property
    def n_links(self) -> int:
        return len(self.links) // 4

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

    def plan(self, entries: list[Entry]) -> Plan:
        """Plan optimistically from the cache; fetch what it lacked and re-plan until complete.

        A warm batch is planned in one pass with no I/O; a cold one costs one pipelined
        round trip per hop level of its deepest unknown chain.
        """
        cold: set[tuple[str, str]] = set()
        plan = self._plan_once(entries, cold)
        for _ in range(self.max_depth):
            if not plan.unknown:
                break
            self.resolver.fetch(plan.unknown)
            plan = self._plan_once(entries, cold)
        self.cache_misses += len(cold)
        self.cache_hits += plan.resolutions - len(cold)
        self.cycles += plan.cycles
        return plan

    def _plan_once(self, entries: list[Entry], cold: set[tuple[str, str]]) -> Plan:
        plan = Plan()
        for entry in entries:
            kind = entry.kind
            if kind is Kind.EVENT:
                self._emit(plan, entry, self._resolve(plan, entry.tenant, entry.user_id, cold))
            elif kind is Kind.IDENTIFY:
                self._identify(plan, entry, cold)
            elif kind is Kind.INVALID:
                self._dead(plan, entry)
            else:
                plan.ack_only(entry.id)
        return plan

    def _resolve(self, plan: Plan, tenant: str, uid: str, cold: set[tuple[str, str]]) -> str:
        end, how, hops, used_overlay = walk(
            self.cache, tenant, uid, self.max_depth, plan.overlay.get(tenant)
        )
        plan.resolutions += 1
        if how is End.ROOT:
            if (tenant, end) not in plan.verified:
                plan.verified.add((tenant, end))
                plan.verify.extend((plan.key_index(tenant, self.key_prefix), end))
            if hops > 1 and not used_overlay:
                self.cache.put(tenant, uid, end)
            if cold and (tenant, uid) in cold:
                self.depths.append(hops)
        elif how is End.UNKNOWN:
            plan.unknown.setdefault(tenant, set()).add(end)
            cold.add((tenant, uid))
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
            self._emit(plan, entry, self._resolve(plan, tenant, user, cold))
        else:
            plan.ack_only(entry.id)

    @staticmethod
    def _emit(plan: Plan, entry: Entry, root: str) -> None:
        fields = entry.fields or []
        plan.entries.extend(
            (entry.id, EMIT, len(fields) + 4, *fields, F_RESOLVED, root, F_SOURCE, entry.id)
        )
        plan.n_emit += 1
        plan.n_entries += 1

    @staticmethod
    def _dead(plan: Plan, entry: Entry) -> None:
        fields = entry.fields or []
        plan.entries.extend(
            (
                entry.id,
                DEAD,
                len(fields) + 6,
                *fields,
                F_ERROR,
                entry.error,
                F_ERROR_CODE,
                entry.error_code,
                F_SOURCE,
                entry.id,
            )
        )
        plan.n_entries += 1
