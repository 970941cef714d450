"""Why an id resolves as it does: its chain with each link's provenance, and the identifies
that named it and were refused (``Resolver.explain``, ``lehnz-stitch explain``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import redis

from .ids import decode_id, encode_id
from .provenance import Provenance, parse_provenance, provenance_key, refusals_key
from .quarantine import Held, held_link

__all__ = ["SCAN_CHUNK", "Explanation", "Hop", "Refusal", "explain"]

SCAN_CHUNK = 1000
"""Refusal-log entries per XRANGE; the log is bounded (STITCH_REFUSALS_MAXLEN)."""


class Hop(NamedTuple):
    from_id: str
    to_id: str
    provenance: Provenance | None
    """None for a link written by another program (or by hand)."""

    def as_json(self) -> dict[str, Any]:
        p = self.provenance
        return {
            "from": self.from_id,
            "to": self.to_id,
            "source_id": p.source_id if p else None,
            "applied_at_ms": p.applied_at_ms if p else None,
        }


class Refusal(NamedTuple):
    source_id: str
    outcome: str
    previous_user_id: str
    user_id: str

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class Explanation(NamedTuple):
    tenant: str
    id: str
    root: str
    hops: list[Hop]
    refused: list[Refusal]
    """Oldest first, as far back as the tenant's refusal log reaches."""
    held: Held | None = None
    """The link from this id that merge protection holds in the quarantine, if any."""

    def as_json(self) -> dict[str, Any]:
        """Exactly the keys README.md documents."""
        return {
            "tenant": self.tenant,
            "id": self.id,
            "root": self.root,
            "hops": [hop.as_json() for hop in self.hops],
            "refused": [refusal.as_json() for refusal in self.refused],
            "held": self.held.as_json() if self.held else None,
        }


def explain(client: redis.Redis, alias_key: str, tenant: str, uid: str) -> Explanation:
    path = _path(client, alias_key, uid)
    if len(path) > 1 and path[-1] in path[:-1]:  # a foreign cycle: resolves to its smallest id
        root = min(path[path.index(path[-1]) :], key=encode_id)
    else:
        root = path[-1]
    froms = path[:-1]
    records = []
    if froms:
        records = client.hmget(provenance_key(alias_key), [encode_id(u) for u in froms])
    hops = [
        Hop(a, b, parse_provenance(record))
        for a, b, record in zip(froms, path[1:], records, strict=True)
    ]
    refused = _refusals(client, refusals_key(alias_key), uid)
    return Explanation(tenant, uid, root, hops, refused, held_link(client, alias_key, uid))


def _path(client: redis.Redis, alias_key: str, uid: str) -> list[str]:
    """uid and every id after it, up to the end or the first id seen twice."""
    path, seen = [uid], {uid}
    while True:
        value = client.hget(alias_key, encode_id(path[-1]))
        if value is None:
            break
        path.append(decode_id(value))
        if path[-1] in seen:
            break
        seen.add(path[-1])
    return path


def _refusals(client: redis.Redis, log: str, uid: str) -> list[Refusal]:
    """Every refusal naming ``uid`` on either side: a scan of the bounded log."""
    wanted = encode_id(uid)
    found: list[Refusal] = []
    start = "-"
    while True:
        batch: Any = client.xrange(log, start, "+", count=SCAN_CHUNK)
        for _, fields in batch:
            prev, user = fields.get(b"previous_user_id"), fields.get(b"user_id")
            if wanted in (prev, user):
                found.append(
                    Refusal(
                        decode_id(fields.get(b"source_id", b"")),
                        decode_id(fields.get(b"outcome", b"")),
                        decode_id(prev or b""),
                        decode_id(user or b""),
                    )
                )
        if len(batch) < SCAN_CHUNK:
            return found
        start = "(" + decode_id(batch[-1][0])
