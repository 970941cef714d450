"""Merge protection: component sizes, the size cap and the quarantine of held links.

Beside each alias map (see ``lua/link_rules.lua``):

- ``<alias key>:sizes`` (hash): for every root with incoming links, how many ids its
  component holds (root included), kept atomically with every link, unlink, forget and
  approve at a cost proportional to chain depth; under ``""`` (never an id) the tenant's own
  cap, set with ``quarantine set-limit``.
- ``<alias key>:quarantine`` (hash): ``previous_user_id -> "user_id source_id ms reason"``
  for every held link (the first hold of an id stands). ``user_id`` may hold spaces; the
  other three never do, so the value splits from the right.
- ``<alias key>:protection`` (hash): the tenant's own rate limit (``max_links_per_hour``),
  the largest component a link made (``largest``), the held links per reason
  (``held:<reason>``), all kept by the scripts that write, approve or reject holds so the
  metrics read them with one HMGET; and the rate rule's window per root (``>`` + root).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import redis

from .heights import SIZES_SUFFIX, heights_key, sizes_key
from .ids import decode_id, encode_id
from .provenance import provenance_key
from .removals import GENERATION_FIELD, children_key, removals_key, tombstone
from .scripts import QUARANTINE_LUA

__all__ = [
    "CAP_FIELD",
    "DEFAULT_MAX_COMPONENT_SIZE",
    "DEFAULT_MAX_LINKS_PER_ROOT_PER_HOUR",
    "HELD_REASONS",
    "LARGEST_FIELD",
    "PROTECTION_SUFFIX",
    "QUARANTINE_SUFFIX",
    "SIZES_SUFFIX",
    "Decision",
    "Held",
    "decide",
    "held_link",
    "held_links",
    "protection_key",
    "quarantine_key",
    "rate_limit",
    "review_keys",
    "set_limit",
    "size_cap",
    "sizes_key",
]

QUARANTINE_SUFFIX = ":quarantine"
CAP_FIELD = ""
DEFAULT_MAX_COMPONENT_SIZE = 1000
PROTECTION_SUFFIX = ":protection"
RATE_LIMIT_FIELD = "max_links_per_hour"
"""The tenant's own STITCH_MAX_LINKS_PER_ROOT_PER_HOUR, in its protection hash."""
DEFAULT_MAX_LINKS_PER_ROOT_PER_HOUR = 100
LARGEST_FIELD = "largest"
"""The largest component a link has made, in the protection hash (for the metrics)."""
HELD_REASONS = (
    "size",
    "rate",
    "audit:placeholder",
    "audit:blocked",
    "audit:forgotten",
    "audit:too_deep",
    "audit:size",
)
"""Why a link is held (the link rules: size, rate; ``audit --apply``: audit:<rule>); each
has its tally ``held:<reason>``."""


def quarantine_key(alias_key: str) -> str:
    return alias_key + QUARANTINE_SUFFIX


def protection_key(alias_key: str) -> str:
    return alias_key + PROTECTION_SUFFIX


class Held(NamedTuple):
    previous_user_id: str
    user_id: str
    source_id: str
    held_at_ms: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


def _parse(prev: bytes, value: bytes) -> Held:
    user, source, at, reason = decode_id(value).rsplit(" ", 3)
    return Held(decode_id(prev), user, source, int(at), reason)


def held_links(client: redis.Redis, alias_key: str) -> list[Held]:
    """Every held link of a tenant, oldest first."""
    raw: Any = client.hgetall(quarantine_key(alias_key))
    return sorted((_parse(k, v) for k, v in raw.items()), key=lambda h: h.held_at_ms)


def held_link(client: redis.Redis, alias_key: str, prev: str) -> Held | None:
    raw: Any = client.hget(quarantine_key(alias_key), encode_id(prev))
    return None if raw is None else _parse(encode_id(prev), raw)


def size_cap(client: redis.Redis, alias_key: str, default: int) -> int:
    raw: Any = client.hget(sizes_key(alias_key), CAP_FIELD)
    return default if raw is None else int(raw)


def rate_limit(client: redis.Redis, alias_key: str, default: int) -> int:
    raw: Any = client.hget(protection_key(alias_key), RATE_LIMIT_FIELD)
    return default if raw is None else int(raw)


def set_limit(
    client: redis.Redis,
    alias_key: str,
    limit: int | None = None,
    *,
    links_per_hour: int | None = None,
) -> None:
    """A tenant's own cap and/or rate limit (0: no rate rule); bumps the generation so every
    worker forgets the holds it predicts."""
    pipe = client.pipeline(transaction=False)  # the limits first, then the generation
    if limit is not None:
        pipe.hset(sizes_key(alias_key), CAP_FIELD, limit)
    if links_per_hour is not None:
        pipe.hset(protection_key(alias_key), RATE_LIMIT_FIELD, links_per_hour)
    pipe.hincrby(removals_key(alias_key), GENERATION_FIELD, 1)
    pipe.execute()


def review_keys(alias_key: str, changes_key: str) -> list[str]:
    """The KEYS of the scripts that hold or apply links on review (quarantine.lua, audit.lua)."""
    return [
        alias_key,
        heights_key(alias_key),
        provenance_key(alias_key),
        removals_key(alias_key),
        children_key(alias_key),
        sizes_key(alias_key),
        quarantine_key(alias_key),
        changes_key,
        protection_key(alias_key),
    ]


class Decision(NamedTuple):
    outcome: str
    """approve: 'applied' | 'noop' | the rule that refuses it now; reject: 'rejected';
    'missing': nothing is held for that id."""
    user_id: str | None
    root: str | None


def decide(
    client: redis.Redis,
    alias_key: str,
    tenant: str,
    prev: str,
    mode: str,
    *,
    op_id: str,
    consumer: str,
    changes_key: str,
    changes_maxlen: int,
    max_depth: int,
    tombstone_key: bytes | None,
    is_placeholder: Callable[[str], bool] | None = None,
) -> Decision:
    """approve, reject or reject-block the link held for ``prev`` (lua/quarantine.lua).
    ``is_placeholder``: the client-side rule approve re-checks too (an audit may have held a
    link into an id that became a placeholder)."""
    raw: Any = client.hget(quarantine_key(alias_key), encode_id(prev))
    if raw is None:
        return Decision("missing", None, None)
    user = _parse(encode_id(prev), raw).user_id
    if mode == "approve" and is_placeholder and (is_placeholder(prev) or is_placeholder(user)):
        return Decision("placeholder", user, prev)
    macs = ["", ""]
    if tombstone_key:
        macs = [tombstone(tombstone_key, prev), tombstone(tombstone_key, user)]
    keys = review_keys(alias_key, changes_key)
    args: list[Any] = [mode, encode_id(prev), max_depth, op_id, tenant, consumer, changes_maxlen]
    args.extend(macs)
    reply: Any = client.register_script(QUARANTINE_LUA)(keys=keys, args=[*args, encode_id(user)])
    if len(reply) == 1:
        return Decision("missing", None, None)
    return Decision(decode_id(reply[0]), decode_id(reply[1]), decode_id(reply[2]))
