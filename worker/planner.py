"""Turn one batch of parsed entries into a commit plan, resolving in stream order.

Stream order for one replica: an identify applies to every later event, including later
events of the same batch. The planner predicts each link's outcome from the cache (whose
hops are facts while the tenant's generation holds: only unlink and forget remove links, and
they bump it; see generations.py) plus an overlay of the batch's own earlier links, and lists
every root it relied on; the commit script re-checks those roots and predictions atomically and
refuses the whole batch if any is stale, so a cache can never emit a stale resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resolver import UNRESOLVED, AliasCache, End, walk
from resolver.heights import heights_key
from resolver.links import LinkOutcome, LinkRules
from resolver.provenance import provenance_key, refusals_key
from resolver.quarantine import protection_key, quarantine_key, sizes_key
from resolver.removals import children_key, removals_key

from .generations import NEVER_REMOVED, Generations
from .parser import Entry, Kind
from .scripts import CommitCommand

if TYPE_CHECKING:
    from .committer import Committed, Stale

__all__ = ["Plan", "Planner"]

EMIT, RESOLVE, DEAD, ACK = b"e", b"r", b"d", b"a"
EMIT_GUARDED, RESOLVE_GUARDED = b"E", b"R"
LINK, LINK_EMIT = b"l", b"L"
PLACEHOLDER, PLACEHOLDER_EMIT = b"p", b"P"
APPLIES, REFUSED, UNKNOWN = b"1", b"0", b"?"
REFUSAL_MEMORY = 10_000  # links refused for good that the planner remembers


@dataclass(frozen=True, slots=True)
class Plan:
    """One batch's commit, packed and ready to send, and what to learn once it succeeds."""

    packed: bytes
    """The EVALSHA command (see scripts.CommitCommand)."""
    tenants: tuple[str, ...]
    """The tenant of each alias key the commit names: tenant n (1-based) is ``tenants[n - 1]``."""
    links: tuple[tuple[str, str, str], ...]
    """(tenant, prev, user) of every identify sent to the script, in order."""
    link_entries: tuple[int, ...]
    """Position in the batch of the identify each link belongs to."""
    local_outcomes: tuple[tuple[int, LinkOutcome], ...]
    """(position, outcome) of identifies decided here, never sent as links."""
    own_links: Mapping[str, Mapping[str, str]]
    """Links this batch's identifies assume apply: the next plan assumes them too."""
    resolutions: int
    deferred: int
    """Ids the cache could not resolve: the commit script resolves them."""


class _Draft:
    """The planner's scratch while it builds one :class:`Plan`."""

    __slots__ = (
        "alias_keys",
        "deferred",
        "entries",
        "link_entries",
        "links",
        "local_outcomes",
        "overlay",
        "own_links",
        "resolutions",
        "roots",
        "tenants",
    )

    def __init__(self, overlay: dict[str, dict[str, str]]) -> None:
        self.tenants: dict[str, int] = {}
        self.alias_keys: list[str] = []
        self.roots: dict[str, set[str]] = {}
        """Per tenant, the ids the batch resolved to as roots: the commit re-checks them."""
        self.entries: list[Any] = []
        """Per entry (id, action, args...) as commit.lua reads them."""
        self.links: list[tuple[str, str, str]] = []
        self.link_entries: list[int] = []
        self.local_outcomes: list[tuple[int, LinkOutcome]] = []
        self.resolutions = 0
        self.deferred = 0
        self.overlay = overlay
        """Links this batch assumes apply, in stream order, before they are committed."""
        self.own_links: dict[str, dict[str, str]] = {}

    def tenant_number(self, tenant: str, key_prefix: str) -> int:
        """The tenant's ordinal in the commit: its alias hash, heights hash, provenance hash
        refusal log, removals hash, children index, sizes hash, quarantine and protection hash
        are the KEYS_PER_TENANT keys at
        KEYS[FIXED_KEYS + KEYS_PER_TENANT * (n - 1) + 1..]."""
        number = self.tenants.get(tenant)
        if number is None:
            alias_key = key_prefix + tenant
            self.alias_keys.extend(
                (
                    alias_key,
                    heights_key(alias_key),
                    provenance_key(alias_key),
                    refusals_key(alias_key),
                    removals_key(alias_key),
                    children_key(alias_key),
                    sizes_key(alias_key),
                    quarantine_key(alias_key),
                    protection_key(alias_key),
                )
            )
            number = self.tenants[tenant] = len(self.tenants) + 1
        return number

    def assume(self, tenant: str, prev: str, target: str) -> None:
        self.overlay.setdefault(tenant, {})[prev] = target
        self.own_links.setdefault(tenant, {})[prev] = target

    def seal(
        self,
        command: CommitCommand,
        key_prefix: str,
        n_entries: int,
        generations: Mapping[str, str],
    ) -> Plan:
        verify: list[Any] = []
        for tenant, roots in self.roots.items():
            verify.extend((self.tenant_number(tenant, key_prefix), len(roots), *roots))
        gens = [generations.get(tenant, NEVER_REMOVED) for tenant in self.tenants]
        packed = command.pack(
            self.alias_keys, len(self.roots), n_entries, gens, verify, self.entries
        )
        return Plan(
            packed,
            tuple(self.tenants),
            tuple(self.links),
            tuple(self.link_entries),
            tuple(self.local_outcomes),
            self.own_links,
            self.resolutions,
            self.deferred,
        )


class Planner:
    """Resolves a batch from the cache and builds its :class:`Plan`; does no I/O.

    What the cache cannot answer (ids never seen, links whose outcome depends on them) is
    left to the commit script, which resolves it atomically with the emit and reports what
    it read so the cache learns it (:meth:`learn`): every batch costs one round trip.
    """

    __slots__ = ("cache", "command", "forward_identify", "generations", "key_prefix", "rules",
                 "too_deep")  # fmt: skip

    def __init__(
        self,
        cache: AliasCache,
        rules: LinkRules,
        command: CommitCommand,
        *,
        key_prefix: str,
        forward_identify: bool,
        tombstone_key: bytes | None = None,
    ) -> None:
        self.cache = cache
        self.generations = Generations(tombstone_key)  # what each tenant's cache was built under
        self.too_deep = AliasCache(REFUSAL_MEMORY)
        """Links refused for good (too deep, held), by _refusal_key (a batch may refuse several
        targets of one prev): the next plan predicts them instead of going stale again."""
        self.rules = rules
        self.command = command
        self.key_prefix = key_prefix
        self.forward_identify = forward_identify

    def plan(self, entries: list[Entry], after: Plan | None = None) -> Plan:
        """``after`` is a plan whose commit runs first: its own links are assumed.

        Only its own: whatever ``after`` assumed in turn has landed in the cache by then.
        """
        overlay = {} if after is None else {t: dict(v) for t, v in after.own_links.items()}
        draft = _Draft(overlay)
        for position, entry in enumerate(entries):
            kind = entry.kind
            if kind is Kind.EVENT:
                self._event(draft, entry)
            elif kind is Kind.IDENTIFY:
                self._identify(draft, entry, position)
            elif kind is Kind.INVALID:
                fields = entry.fields or ()
                draft.entries.extend(
                    (entry.id, DEAD, len(fields), *fields, entry.error, entry.error_code)
                )
            else:
                draft.entries.extend((entry.id, ACK, 0))
        return draft.seal(self.command, self.key_prefix, len(entries), self.generations.current)

    def learn(self, plan: Plan, result: Committed) -> None:
        """After ``plan`` committed: cache what its script read and the links it applied."""
        cache, tenants = self.cache, plan.tenants
        for number, uid, target in result.learned:
            cache.put(tenants[number - 1], uid, target if target is not None else uid)
        for (tenant, prev, user), outcome in zip(plan.links, result.outcomes, strict=True):
            if outcome is LinkOutcome.APPLIED:
                cache.put(tenant, prev, user)

    def learn_stale(self, plan: Plan, stale: Stale) -> None:
        """After a stale verdict: adopt the current generations (dropping those tenants'
        caches), remember final refusals (too deep, blocked, forgotten: the cache was right,
        only what it cannot see was not), forget the tenants of the other links."""
        for number, generation, has_tombstones in stale.generations:
            tenant = plan.tenants[number - 1]
            self.generations.adopt(tenant, generation, has_tombstones)
            self.forget([tenant])
            self.too_deep.forget_tenant(tenant)  # an unlink can make a chain shorter
        deep = set(stale.too_deep)
        self.forget({plan.links[n][0] for n in stale.links if n not in deep})
        for n in deep:
            tenant, prev, user = plan.links[n]
            self.too_deep.put(tenant, _refusal_key(prev, user), user)

    def forget(self, tenants: Iterable[str] | None = None) -> None:
        """Drop cached paths (of some tenants, or all): what Redis holds may have changed."""
        if tenants is None:
            self.cache.clear()
            return
        for tenant in tenants:
            self.cache.forget_tenant(tenant)

    def _event(self, draft: _Draft, entry: Entry) -> None:
        root = self._resolve(draft, entry.tenant, uid := entry.user_id)
        index = draft.tenant_number(entry.tenant, self.key_prefix)
        fields = entry.fields or ()
        if entry.tenant in self.generations.tombstoned:  # the script drops or passes them
            _guarded_event(draft, entry, root, index, self.generations.mac(entry.tenant, uid))
            return
        if root is None:
            draft.entries.extend((entry.id, RESOLVE, len(fields), *fields, index, entry.user_id))
            return
        draft.entries.extend((entry.id, EMIT, len(fields), *fields, root, index))

    def _resolve(self, draft: _Draft, tenant: str, uid: str) -> str | None:
        """The root from the cache (recorded for verification), or None to defer."""
        draft.resolutions += 1
        overlay = draft.overlay.get(tenant)
        if (overlay is None or uid not in overlay) and self.cache.get(tenant, uid) == uid:
            end, how, hops, used_overlay = uid, End.ROOT, 0, False  # the common case
        else:
            end, how, hops, used_overlay = walk(self.cache, tenant, uid, overlay)
        if how is not End.ROOT:
            draft.deferred += 1
            return None
        roots = draft.roots.get(tenant)
        if roots is None:
            roots = draft.roots[tenant] = set()
        roots.add(end)
        if hops > 1 and not used_overlay:
            self.cache.put(tenant, uid, end)
        return end

    def _identify(self, draft: _Draft, entry: Entry, position: int) -> None:
        tenant, prev, user = entry.tenant, entry.previous_user_id, entry.user_id
        is_placeholder = self.rules.is_placeholder
        placeholder = is_placeholder(prev) or is_placeholder(user)
        if placeholder:  # refused here, logged by the commit with the entry's ack
            draft.local_outcomes.append((position, LinkOutcome.PLACEHOLDER))
            index = draft.tenant_number(tenant, self.key_prefix)
            if self.forward_identify:
                fields = entry.fields or ()
                draft.entries.extend(
                    (entry.id, PLACEHOLDER_EMIT, len(fields), *fields, index, prev, user)
                )
            else:
                draft.entries.extend((entry.id, PLACEHOLDER, 0, index, prev, user))
            return
        if prev == user:
            draft.local_outcomes.append((position, LinkOutcome.NOOP))
            if self.forward_identify:
                index = draft.tenant_number(tenant, self.key_prefix)
                fields = entry.fields or ()
                draft.entries.extend((entry.id, RESOLVE, len(fields), *fields, index, user))
            else:
                draft.entries.extend((entry.id, ACK, 0))
            return
        prev_end = self._resolve(draft, tenant, prev)
        user_end = self._resolve(draft, tenant, user) if prev_end in (prev, None) else None
        if prev_end is not None and prev_end != prev:
            expect = REFUSED  # prev already links elsewhere: noop or conflict
        elif prev_end is None or user_end is None:
            expect = UNKNOWN
            draft.assume(tenant, prev, UNRESOLVED)
        elif user_end == prev:
            expect = REFUSED  # would close a cycle
        elif self.too_deep.get(tenant, _refusal_key(prev, user)) is not None:
            expect = REFUSED  # refused for good before (too deep, held: see learn_stale)
        else:
            expect = APPLIES
            draft.assume(tenant, prev, user)
        index = draft.tenant_number(tenant, self.key_prefix)
        macs = (self.generations.mac(tenant, prev), self.generations.mac(tenant, user))
        if self.forward_identify:
            fields = entry.fields or ()
            draft.entries.extend(
                (entry.id, LINK_EMIT, len(fields), *fields, index, prev, user, expect, *macs)
            )
        else:
            draft.entries.extend((entry.id, LINK, 0, index, prev, user, expect, *macs))
        draft.links.append((tenant, prev, user))
        draft.link_entries.append(position)


def _refusal_key(prev: str, user: str) -> str:
    return f"{len(prev)}:{prev}{user}"


def _guarded_event(draft: _Draft, entry: Entry, root: str | None, index: int, mac: str) -> None:
    """An event of a tenant with tombstones: its user_id's HMAC goes along (see commit.lua)."""
    fields = entry.fields or ()
    if root is None:
        draft.entries.extend(
            (entry.id, RESOLVE_GUARDED, len(fields), *fields, index, entry.user_id, mac)
        )
    else:
        draft.entries.extend(
            (entry.id, EMIT_GUARDED, len(fields), *fields, root, index, entry.user_id, mac)
        )
