"""unlink and forget over Redis: one atomic script each (``lua/unlink.lua``, ``lua/forget.lua``).

forget runs its script twice: a read-only pass finds the component (so the HMACs can be
computed here, Lua has none), then the real pass checks the component is still the same and
erases it; if a link joined it meanwhile, it starts over (up to ``ATTEMPTS`` times). The
tenant's refusal log is scanned here first (it may hold up to STITCH_REFUSALS_MAXLEN
entries) and the script only reads what was added after that scan.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

from .explain import SCAN_CHUNK
from .heights import heights_key
from .ids import decode_id, encode_id
from .provenance import provenance_key, refusals_key
from .quarantine import protection_key, quarantine_key, sizes_key
from .removals import TombstoneKeyMissingError, children_key, removals_key, tombstone
from .scripts import FORGET_LUA, UNLINK_LUA

__all__ = [
    "ATTEMPTS",
    "ComponentChangedError",
    "Erasing",
    "Removal",
    "forget",
    "new_op_id",
    "unlink",
]

ATTEMPTS = 5
"""forget passes: only a component gaining links at that very moment needs a second."""


class ComponentChangedError(RuntimeError):
    """The component kept changing between forget's two passes."""


class Removal(NamedTuple):
    """What an unlink or forget did (or, in a dry run, would do)."""

    op_id: str
    tenant: str
    removed_links: int
    affected_ids: list[str]
    """unlink: the id and its subtree (their resolution changes); forget: the component in
    a dry run only (a real forget never returns erased ids)."""
    tombstones: int
    target: str | None = None
    """unlink: the removed link's target."""

    def as_json(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "tenant": self.tenant,
            "removed_links": self.removed_links,
            "affected_ids": self.affected_ids,
            "tombstones": self.tombstones,
        }


def new_op_id() -> str:
    return uuid.uuid4().hex


def unlink(
    client: redis.Redis,
    alias_key: str,
    tenant: str,
    prev: str,
    *,
    changes_key: str,
    changes_maxlen: int = 10_000_000,
    block: bool = False,
    reason: str = "",
    dry_run: bool = False,
) -> Removal:
    op_id = new_op_id()
    keys = [
        alias_key,
        heights_key(alias_key),
        provenance_key(alias_key),
        removals_key(alias_key),
        children_key(alias_key),
        changes_key,
        sizes_key(alias_key),
    ]
    args: list[Any] = [
        encode_id(prev),
        "1" if block else "0",
        op_id,
        reason,
        tenant,
        changes_maxlen,
    ]
    reply: Any = client.register_script(UNLINK_LUA)(
        keys=keys, args=[*args, "1" if dry_run else "0"]
    )
    if reply[0] == 0:
        return Removal(op_id, tenant, 0, [], 0)
    affected = [decode_id(uid) for uid in reply[2]]
    removed = 0 if dry_run else 1
    return Removal(op_id, tenant, removed, affected, 0, decode_id(reply[1]))


def forget(
    client: redis.Redis,
    alias_key: str,
    tenant: str,
    uid: str,
    *,
    tombstone_key: bytes | None,
    changes_key: str,
    changes_maxlen: int = 10_000_000,
    reason: str = "",
    dry_run: bool = False,
) -> Removal:
    if not tombstone_key and not dry_run:
        raise TombstoneKeyMissingError("forget needs STITCH_TOMBSTONE_KEY to write tombstones")
    op_id = new_op_id()
    keys = [
        alias_key,
        heights_key(alias_key),
        provenance_key(alias_key),
        refusals_key(alias_key),
        removals_key(alias_key),
        children_key(alias_key),
        changes_key,
        sizes_key(alias_key),
        quarantine_key(alias_key),
        protection_key(alias_key),
    ]
    script = client.register_script(FORGET_LUA)
    head: list[Any] = [encode_id(uid), op_id, reason, tenant, changes_maxlen]
    for _ in range(ATTEMPTS):
        found: Any = script(keys=keys, args=[*head, "1", "0", 0, 0])
        members = [uid] if found[0] == 0 else [decode_id(m) for m in found[1]]
        blocks = _blocks_naming(client, removals_key(alias_key), members)
        if found[0] == 0 and not blocks:
            return Removal(op_id, tenant, 0, [], 0)
        if dry_run:
            return Removal(op_id, tenant, len(members) - 1, members, len(members))
        assert tombstone_key is not None
        scanned_to, doomed = _log_mentions(client, refusals_key(alias_key), set(members))
        pairs = [x for m in members for x in (encode_id(m), tombstone(tombstone_key, m))]
        given = [len(members), *pairs, len(blocks), *blocks]
        done: Any = script(keys=keys, args=[*head, "0", scanned_to, *given, *doomed])
        if done[0] == 3:
            return Removal(op_id, tenant, int(done[2]), [], int(done[1]))
    raise ComponentChangedError(f"{alias_key}: the component kept changing ({ATTEMPTS} passes)")


def _blocks_naming(client: redis.Redis, rkey: str, members: list[str]) -> list[bytes]:
    """The block fields (``b<len(prev)>:<prev><user>``) naming a member: HSCAN of the
    removals hash, filtered by Redis to the blocks (the tombstones are read past)."""
    named = {encode_id(m) for m in members}
    found = []
    for field, _ in client.hscan_iter(rkey, match="b*", count=SCAN_CHUNK):
        size, _, ids = field[1:].partition(b":")
        if size.isdigit() and (ids[: int(size)] in named or ids[int(size) :] in named):
            found.append(field)
    return found


def _log_mentions(client: redis.Redis, log: str, members: set[str]) -> tuple[str, list[bytes]]:
    """(the last entry id read, the ids of entries naming a member) of a refusal log."""
    start, last, doomed = "-", "0", []
    while True:
        page: Any = client.xrange(log, start, "+", count=SCAN_CHUNK)
        for entry_id, fields in page:
            named = (fields.get(b"previous_user_id"), fields.get(b"user_id"))
            if any(v is not None and decode_id(v) in members for v in named):
                doomed.append(entry_id)
        if len(page) < SCAN_CHUNK:
            if page:
                last = decode_id(page[-1][0])
            return last, doomed
        last = decode_id(page[-1][0])
        start = "(" + last


class Erasing:
    """``Resolver.unlink`` and ``Resolver.forget`` (a mixin: the resolver stays readable)."""

    __slots__ = ()
    client: redis.Redis
    tombstone_key: bytes | None
    changes_key: str

    def key(self, tenant: str) -> str:
        raise NotImplementedError

    def drop_cache(self, tenants: Iterable[str] | None = None) -> None:
        raise NotImplementedError

    def unlink(
        self,
        tenant: str,
        previous_user_id: str,
        *,
        block: bool = False,
        reason: str = "",
        dry_run: bool = False,
    ) -> Removal:
        """Remove ``previous_user_id``'s outgoing link in one atomic script (see
        lua/unlink.lua); ``block`` refuses that link forever (outcome ``blocked``). A worker
        whose cache held it drops that tenant's cache before its next commit."""
        done = unlink(
            self.client,
            self.key(tenant),
            tenant,
            previous_user_id,
            changes_key=self.changes_key,
            block=block,
            reason=reason,
            dry_run=dry_run,
        )
        if done.removed_links:
            self.drop_cache([tenant])
        return done

    def forget(self, tenant: str, uid: str, *, reason: str = "", dry_run: bool = False) -> Removal:
        """GDPR erasure of the person ``uid`` belongs to (``lehnz-stitch forget``): its whole
        component leaves the map, the provenance and the refusal log; tombstones (HMACs
        with ``tombstone_key``) keep its ids from being linked again (see lua/forget.lua)."""
        done = forget(
            self.client,
            self.key(tenant),
            tenant,
            uid,
            tombstone_key=self.tombstone_key,
            changes_key=self.changes_key,
            reason=reason,
            dry_run=dry_run,
        )
        if done.tombstones and not dry_run:
            self.drop_cache([tenant])
        return done
