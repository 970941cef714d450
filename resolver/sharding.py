"""Which shard a tenant lives on, and every shard's key names (README: Scaling past one Redis).

With ``shards`` N > 1, shard s keeps its input, output and dead-letter streams, its change
feed and the alias hashes of its tenants under one Redis Cluster hash tag, ``{<tag>}``, so
every script a commit or an operator command runs touches one slot. Pure functions only:
no Redis here but the override table's name and parsing.
"""

from __future__ import annotations

import binascii
import functools
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_KEYS",
    "MAX_SHARDS",
    "MOVED_PREFIX",
    "MOVING_PREFIX",
    "OVERRIDES_KEY",
    "Route",
    "ShardKeys",
    "key_slot",
    "parse_overrides",
    "parse_subset",
    "route",
    "shard_keys",
    "shard_of",
    "shard_tag",
    "workers_view",
]

CLUSTER_SLOTS = 16_384
MAX_SHARDS = 1_024
"""Each shard's tag must find a slot in its 1/N-th of the slot range: 16 slots at least."""
OVERRIDES_KEY = "stitch:shards"
"""The override table: a hash, tenant -> shard number, read by ``route`` and the worker."""
MOVING_PREFIX = "moving:"
"""``moving:<tenant>`` -> the shard a tenant is being moved to (``lehnz-stitch move-tenant``):
the workers take it for the tenant's shard at once (:func:`workers_view`), producers keep
writing to the old one (the field is no tenant: ``route`` never looks it up)."""
MOVED_PREFIX = "moved:"
"""``moved:<tenant>`` -> the shard a move copied the tenant's keys from, until they are
deleted there: a move run again after a crash knows where it stood."""
CHANGES_NAME = "changes"
_MAX_CANDIDATES = 1_000_000


def key_slot(name: str) -> int:
    """Redis Cluster's slot of a key without a hash tag: CRC16 (XMODEM) mod 16384."""
    return binascii.crc_hqx(name.encode(), 0) % CLUSTER_SLOTS


@functools.cache
def shard_tag(shard: int, shards: int) -> str:
    """The hash tag (without braces) of shard ``shard`` of ``shards``: the first of
    ``s<shard>.0``, ``s<shard>.1``, ... whose slot lies in the shard's part of the slot range,
    ``[shard * 16384 // shards, (shard + 1) * 16384 // shards)``, so the N tags spread evenly
    over a cluster's nodes. Stable: the sequence and the range never change."""
    _check_shard(shard, shards)
    low, high = shard * CLUSTER_SLOTS // shards, (shard + 1) * CLUSTER_SLOTS // shards
    for n in range(_MAX_CANDIDATES):
        candidate = f"s{shard}.{n}"
        if low <= key_slot(candidate) < high:
            return candidate
    raise AssertionError(f"no tag found for shard {shard} of {shards}")  # pragma: no cover


def shard_of(tenant: str, shards: int, overrides: Mapping[str, int] | None = None) -> int:
    """The tenant's shard: its entry in the override table, else CRC-32 (zlib) of its UTF-8
    name mod ``shards``. Stable across versions; always 0 with one shard."""
    if shards == 1:
        return 0
    if overrides:
        placed = overrides.get(tenant)
        if placed is not None:
            return placed
    return zlib.crc32(tenant.encode()) % shards


class KeyNames(Protocol):
    """The unsharded names: the worker's Settings, or :data:`DEFAULT_KEYS`."""

    @property
    def input_stream(self) -> str: ...
    @property
    def output_stream(self) -> str: ...
    @property
    def dead_stream(self) -> str: ...
    @property
    def alias_prefix(self) -> str: ...
    @property
    def changes_stream(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """One shard's key names; a tenant's alias hash is ``alias_prefix + tenant``."""

    input_stream: str
    output_stream: str
    dead_stream: str
    alias_prefix: str
    changes_stream: str
    """Empty: ``alias_prefix + "changes"`` (what :func:`shard_keys` always fills in)."""

    def alias_key(self, tenant: str) -> str:
        return self.alias_prefix + tenant


DEFAULT_KEYS = ShardKeys("events", "events:enriched", "events:dead", "alias:", "")
"""The worker's default names (its STITCH_* settings unset)."""


def shard_keys(base: KeyNames, shard: int, shards: int) -> ShardKeys:
    """Shard ``shard``'s names: ``base``'s with one shard; else each stream gets
    ``:{tag}`` appended, the alias prefix becomes ``<prefix>{tag}:`` and the change feed,
    when under the prefix, moves under the new one (``alias:{tag}:changes``)."""
    _check_shard(shard, shards)
    feed = base.changes_stream or base.alias_prefix + CHANGES_NAME
    if shards == 1:
        return ShardKeys(
            base.input_stream, base.output_stream, base.dead_stream, base.alias_prefix, feed
        )
    names = (base.input_stream, base.output_stream, base.dead_stream, base.alias_prefix, feed)
    braced = [name for name in names if "{" in name or "}" in name]
    if braced:
        raise ValueError(f"{braced[0]!r} holds a brace: it would choose its own hash tag")
    tag = "{" + shard_tag(shard, shards) + "}"
    prefix = base.alias_prefix + tag + ":"
    if feed.startswith(base.alias_prefix):
        feed = prefix + feed.removeprefix(base.alias_prefix)
    else:
        feed = f"{feed}:{tag}"
    return ShardKeys(
        f"{base.input_stream}:{tag}",
        f"{base.output_stream}:{tag}",
        f"{base.dead_stream}:{tag}",
        prefix,
        feed,
    )


@dataclass(frozen=True, slots=True)
class Route:
    """Where a tenant's events go and where its alias hash is (``lehnz-stitch route``)."""

    tenant: str
    shard: int
    keys: ShardKeys

    @property
    def alias_key(self) -> str:
        return self.keys.alias_key(self.tenant)

    def as_dict(self) -> dict[str, object]:
        return {
            "shard": self.shard,
            "input_stream": self.keys.input_stream,
            "output_stream": self.keys.output_stream,
            "dead_stream": self.keys.dead_stream,
            "alias_key": self.alias_key,
        }


def route(
    tenant: str,
    shards: int,
    overrides: Mapping[str, int] | None = None,
    base: KeyNames = DEFAULT_KEYS,
) -> Route:
    """The tenant's shard and keys. A producer XADDs to ``route(...).keys.input_stream``; a
    read-time resolver reads the tenant through ``Resolver(client,
    key_prefix=route(...).keys.alias_prefix)`` (one Resolver per shard serves all of its
    tenants)."""
    shard = shard_of(tenant, shards, overrides)
    return Route(tenant, shard, shard_keys(base, shard, shards))


def parse_overrides(
    table: Mapping[bytes, bytes] | Mapping[str, str], shards: int
) -> dict[str, int]:
    """The override table as read by HGETALL; ValueError naming the first bad entry (a
    shard that is not a number below ``shards``)."""
    parsed: dict[str, int] = {}
    for raw_tenant, raw_shard in table.items():
        tenant = raw_tenant.decode() if isinstance(raw_tenant, bytes) else raw_tenant
        text = raw_shard.decode() if isinstance(raw_shard, bytes) else raw_shard
        if not text.isdigit() or int(text) >= shards:
            raise ValueError(
                f"{OVERRIDES_KEY}: tenant {tenant!r} is placed on shard {text!r}, "
                f"not one of 0..{shards - 1}"
            )
        parsed[tenant] = int(text)
    return parsed


def workers_view(overrides: Mapping[str, int]) -> dict[str, int]:
    """The table as the workers read it: a tenant being moved is its target shard's."""
    view = {t: s for t, s in overrides.items() if not t.startswith((MOVING_PREFIX, MOVED_PREFIX))}
    for field, shard in overrides.items():
        if field.startswith(MOVING_PREFIX):
            view[field.removeprefix(MOVING_PREFIX)] = shard
    return view


def parse_subset(text: str, shards: int) -> tuple[int, ...]:
    """``0,2-5`` -> (0, 2, 3, 4, 5); empty: every shard. ValueError naming the bad part."""
    if not text.strip():
        return tuple(range(shards))
    chosen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{part!r} is not a shard number or a range like 2-5")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last >= shards:
            raise ValueError(f"{part!r} is not within 0..{shards - 1} (shards: {shards})")
        chosen.update(range(first, last + 1))
    return tuple(sorted(chosen))


def _check_shard(shard: int, shards: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_SHARDS}, got {shards}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be 0..{shards - 1}, got {shard}")
