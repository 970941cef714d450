"""Removing links: unlink (optionally blocking the link for good) and forget (GDPR erasure).

Beside each alias map:

- ``<alias key>:removals`` (hash): under ``""`` (never an id) the tenant's **generation**,
  bumped by every unlink and forget; under ``"#"`` how many tombstones it holds; a field
  ``b<len(prev)>:<prev><user>`` per blocked link; ``t<hmac>`` per tombstone. The commit
  script reads the first two per tenant per batch: a worker whose cache was built under an
  older generation drops that tenant's cache and plans again, so no replica serves a removed
  link once the operation has returned. Tenants that never had a removal (generation 0)
  pay nothing else; for the others the link rules consult blocks and tombstones.
- ``<alias key>:children`` (sorted set, scores 0): one member ``<len(user)>:<user><prev>``
  per link, so ``ZRANGEBYLEX`` lists an id's children: unlink lists the subtree that
  changes, forget finds the whole component, without reading the map.

Tombstones are ``HMAC-SHA256(STITCH_TOMBSTONE_KEY, id)`` in hex, computed here (Lua has
no HMAC): the erased ids themselves are stored nowhere.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = [
    "CHILDREN_SUFFIX",
    "REMOVALS_SUFFIX",
    "TombstoneKeyMissingError",
    "block_field",
    "child_member",
    "children_key",
    "removals_key",
    "tombstone",
    "tombstones",
]

REMOVALS_SUFFIX = ":removals"
CHILDREN_SUFFIX = ":children"
GENERATION_FIELD = ""
TOMBSTONES_FIELD = "#"
"""Neither is a block (``b...``) or tombstone (``t...``) field."""


class TombstoneKeyMissingError(RuntimeError):
    """A tenant has tombstones (or a forget was asked for) and no STITCH_TOMBSTONE_KEY is set."""


def removals_key(alias_key: str) -> str:
    return alias_key + REMOVALS_SUFFIX


def children_key(alias_key: str) -> str:
    return alias_key + CHILDREN_SUFFIX


def child_member(user: bytes, prev: bytes) -> bytes:
    """As link_rules.lua's child_member: lengths in bytes."""
    return b"%d:" % len(user) + user + prev


def block_field(prev: bytes, user: bytes) -> bytes:
    return b"b%d:" % len(prev) + prev + user


def tombstone(key: bytes, uid: str) -> str:
    """The keyed hash an erased id is remembered by."""
    return hmac.new(key, uid.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def tombstones(key: bytes, ids: Iterable[str]) -> list[str]:
    return [tombstone(key, uid) for uid in ids]
