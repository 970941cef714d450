"""The alias resolver: batch chain resolution over Redis with a path-compressed cache.

Usable on its own by downstream consumers::

    from resolver import Resolver
    resolver = Resolver(redis.Redis(), cache_size=100_000)
    resolver.resolve_many("acme", ["anon-1", "anon-2"])

Misses of a whole call are fetched one HMGET per tenant per hop level, pipelined, so a
batch costs one round trip per level of its deepest cold chain, never one per hop per id.

Reads always go to the true end of a chain (a foreign cycle: its smallest member), so an
answer never depends on what the cache held; ``max_depth`` is the write-time rule only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from .cache import AliasCache
from .erasing import Erasing
from .explain import Explanation, explain
from .heights import heights_key
from .ids import decode_id, encode_id
from .links import LinkOutcome, LinkRules
from .provenance import provenance_key
from .quarantine import (
    DEFAULT_MAX_COMPONENT_SIZE,
    DEFAULT_MAX_LINKS_PER_ROOT_PER_HOUR,
    protection_key,
    quarantine_key,
    sizes_key,
)
from .removals import children_key, removals_key, tombstone
from .scripts import LINK_LUA
from .walk import End, walk

__all__ = ["DEFAULT_CHANGES_NAME", "DEFAULT_KEY_PREFIX", "DEFAULT_MAX_DEPTH", "Resolver"]

DEFAULT_KEY_PREFIX = "alias:"
"""The contract's key: ``alias:<tenant>``. Add a hash tag (``{lehnz}alias:``) for Cluster."""
DEFAULT_MAX_DEPTH = 16
"""The longest chain a link may create. Real chains are 1-4 links (anonymous -> real ->
merged primary, plus a rare second merge); 16 leaves 4x that for id migrations and refuses a
client that mints a new id per page view after 16 of them, so a cold read costs at most 17
round trips (library) or hops (commit script)."""
DEFAULT_CHANGES_NAME = "changes"
DEFAULT_CHANGES_MAXLEN = 10_000_000
"""The change feed's approximate MAXLEN, as the worker's STITCH_CHANGES_MAXLEN default."""
LIBRARY_CONSUMER = "resolver"
"""What provenance names as the applier of a link made through :meth:`Resolver.link`."""
"""The change feed is ``<key prefix>changes`` unless named otherwise."""

Wanted = dict[str, set[str]]


class Resolver(Erasing):
    """Resolves ids to the end of their alias chain; safe against foreign cycles."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        cache: AliasCache | None = None,
        cache_size: int = 100_000,
        max_depth: int = DEFAULT_MAX_DEPTH,
        rules: LinkRules | None = None,
        tombstone_key: bytes | None = None,
        changes_key: str | None = None,
        changes_maxlen: int = DEFAULT_CHANGES_MAXLEN,
        max_component_size: int = DEFAULT_MAX_COMPONENT_SIZE,
        max_links_per_root_per_hour: int = DEFAULT_MAX_LINKS_PER_ROOT_PER_HOUR,
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.cache = cache if cache is not None else AliasCache(cache_size)
        self.max_depth = max_depth
        self.max_component_size = max_component_size
        """The size cap for tenants without their own (a held link: ``quarantined``)."""
        self.max_links_per_root_per_hour = max_links_per_root_per_hour
        """The rate rule's limit for tenants without their own (0: off)."""
        self.rules = rules if rules is not None else LinkRules()
        self.tombstone_key = tombstone_key
        """STITCH_TOMBSTONE_KEY: needed by forget, and by link once a tenant has tombstones."""
        self.changes_key = changes_key or key_prefix + DEFAULT_CHANGES_NAME
        self.changes_maxlen = changes_maxlen
        self.round_trips = 0
        self._link_script = client.register_script(LINK_LUA)

    def key(self, tenant: str) -> str:
        return self.key_prefix + tenant

    def heights_key(self, tenant: str) -> str:
        return heights_key(self.key(tenant))

    def fetch(self, wanted: Wanted, *, refresh: bool = False) -> None:
        """Learn the links of ``wanted`` ids and follow them to roots.

        With ``refresh`` every id met is read from Redis once in this call, so roots the
        cache already held are re-verified; without it only unknown ids are read. No id is
        read twice in one call, so this ends on any map, cycles included.
        """
        seen: Wanted = {}
        rounds = 0
        while wanted:
            order = [(tenant, list(ids)) for tenant, ids in wanted.items()]
            pipe = self.client.pipeline(transaction=False)
            for tenant, ids in order:
                pipe.hmget(self.key(tenant), [encode_id(uid) for uid in ids])
            replies = pipe.execute()
            rounds += 1
            wanted = {}
            for (tenant, ids), values in zip(order, replies, strict=True):
                seen.setdefault(tenant, set()).update(ids)
                self._learn(tenant, ids, values, wanted, seen[tenant], refresh)
        self.round_trips += rounds

    def _learn(
        self,
        tenant: str,
        ids: list[str],
        values: list[Any],
        wanted: Wanted,
        seen: set[str],
        refresh: bool,
    ) -> None:
        cache = self.cache
        for uid, value in zip(ids, values, strict=True):
            if value is None:
                cache.put(tenant, uid, uid)
                continue
            target = decode_id(value)
            cache.put(tenant, uid, target)
            if target not in seen and (refresh or cache.get(tenant, target) is None):
                wanted.setdefault(tenant, set()).add(target)

    def resolve_many(self, tenant: str, ids: Sequence[str]) -> list[str]:
        """Resolve ``ids`` of one tenant, re-verifying cached roots against Redis."""
        ends = {self._walk(tenant, uid)[0] for uid in ids}
        self.fetch({tenant: ends}, refresh=True)
        return [self._resolve_local(tenant, uid) for uid in ids]

    def resolve(self, tenant: str, uid: str) -> str:
        return self.resolve_many(tenant, [uid])[0]

    def _walk(self, tenant: str, uid: str) -> tuple[str, End, int, bool]:
        return walk(self.cache, tenant, uid)

    def _resolve_local(self, tenant: str, uid: str) -> str:
        end, how, hops, _ = self._walk(tenant, uid)
        if how is not End.CYCLE and hops > 1:
            self.cache.put(tenant, uid, end)
        return end

    def chain(self, tenant: str, uid: str) -> list[str]:
        """The whole path from ``uid`` to its root, read from Redis (uncached, for humans);
        on a foreign cycle it ends at the first id seen twice."""
        path = [uid]
        seen = {uid}
        key = self.key(tenant)
        while True:
            value = self.client.hget(key, encode_id(path[-1]))
            if value is None:
                break
            target = decode_id(value)
            path.append(target)
            if target in seen:
                break
            seen.add(target)
        return path

    def explain(self, tenant: str, uid: str) -> Explanation:
        """``uid``'s chain to its root, read from Redis, each hop with its provenance, and the
        refused identifies naming ``uid`` (a scan of the tenant's bounded refusal log, which
        needs XRANGE: stitch-admin's rights). ``.as_json()`` gives README's JSON shape."""
        return explain(self.client, self.key(tenant), tenant, uid)

    def link(
        self, tenant: str, previous_user_id: str, user_id: str, *, source_id: str | None = None
    ) -> LinkOutcome:
        """Apply one link atomically under the forest rules (placeholders refused here), with
        its provenance and its change-feed entry; ``source_id`` names what asked for it (by
        default a fresh ``link:<uuid>`` operation id)."""
        if self.rules.is_placeholder(previous_user_id) or self.rules.is_placeholder(user_id):
            return LinkOutcome.PLACEHOLDER
        if previous_user_id == user_id:
            return LinkOutcome.NOOP
        key, mac = self.key(tenant), self.tombstone_key
        macs = (
            ["", ""] if mac is None else [tombstone(mac, previous_user_id), tombstone(mac, user_id)]
        )
        source = source_id or f"link:{uuid.uuid4().hex}"
        args: list[Any] = [self.max_depth, previous_user_id, user_id, *macs]
        args += [source, LIBRARY_CONSUMER, self.changes_maxlen, tenant, self.max_component_size]
        args.append(self.max_links_per_root_per_hour)
        keys = _link_keys(key, self.heights_key(tenant), self.changes_key)
        reply = self._link_script(keys=keys, args=args)
        outcome = LinkOutcome(decode_id(reply[0]))
        if outcome is LinkOutcome.APPLIED:
            self.cache.put(tenant, previous_user_id, user_id)
        return outcome

    def drop_cache(self, tenants: Iterable[str] | None = None) -> None:
        """Drop cached paths (all, or of some tenants): call after links were removed by
        another process (this one's unlink and forget call it themselves)."""
        if tenants is None:
            self.cache.clear()
            return
        for tenant in tenants:
            self.cache.forget_tenant(tenant)


def _link_keys(key: str, heights: str, changes: str) -> list[str]:
    """link.lua's KEYS."""
    return [
        *(key, heights, removals_key(key), children_key(key), provenance_key(key), changes),
        *(sizes_key(key), quarantine_key(key), protection_key(key)),
    ]
