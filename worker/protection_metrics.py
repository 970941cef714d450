"""Merge protection's gauges, read at scrape time: links held per reason and the largest
component, for each tenant this worker has committed a batch of.

Cheap by construction: the scripts that write, approve or reject a hold keep its reason's
tally, and every link that makes a component larger than any before writes ``largest``,
all in the tenant's protection hash (resolver/quarantine.py); a scrape reads them with one
HMGET per tenant, pipelined, and never scans the quarantine or the sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from resolver.quarantine import HELD_REASONS, LARGEST_FIELD, protection_key

__all__ = ["ProtectionCollector", "TenantProtection", "read_protection"]


class TenantProtection(NamedTuple):
    tenant: str
    held: dict[str, int]
    """reason -> links held for it now (forget drops holds without lowering the tally: an
    upper bound until the next approve or reject of that reason)."""
    largest: int
    """The largest component a link has made (unlink and forget never lower it)."""


def read_protection(
    client: redis.Redis, alias_prefix: str, tenants: Iterable[str]
) -> list[TenantProtection]:
    """One HMGET per tenant, in one round trip."""
    names = sorted(tenants)
    pipe = client.pipeline(transaction=False)
    fields = [LARGEST_FIELD, *(f"held:{reason}" for reason in HELD_REASONS)]
    for tenant in names:
        pipe.hmget(protection_key(alias_prefix + tenant), fields)
    replies: list[Any] = pipe.execute()
    return [
        TenantProtection(
            tenant,
            {reason: int(n or 0) for reason, n in zip(HELD_REASONS, reply[1:], strict=True)},
            int(reply[0] or 0),
        )
        for tenant, reply in zip(names, replies, strict=True)
    ]


class ProtectionCollector(Collector):
    """stitch_quarantine_links{tenant,reason} and stitch_largest_component{tenant}."""

    def __init__(self) -> None:
        self.readers: dict[str, Callable[[], list[TenantProtection]]] = {}
        """One per shard's worker (shards hold disjoint tenants)."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """What collect() yields, without asking Redis: registering does no I/O."""
        return self._families([])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        tenants: list[TenantProtection] = []
        for read in list(self.readers.values()):
            try:
                tenants += read()
            except Exception:  # a scrape must not fail because Redis (or a shard) is down
                continue
        return self._families(tenants)

    @staticmethod
    def _families(tenants: list[TenantProtection]) -> Iterable[GaugeMetricFamily]:
        held = GaugeMetricFamily(
            "stitch_quarantine_links",
            "Links held in the tenant's quarantine, by reason (size cap, rate rule).",
            labels=["tenant", "reason"],
        )
        largest = GaugeMetricFamily(
            "stitch_largest_component",
            "Ids in the tenant's largest component a link has made (an upper bound after "
            "unlink or forget).",
            labels=["tenant"],
        )
        for t in tenants:
            for reason, count in t.held.items():
                held.add_metric([t.tenant, reason], count)
            largest.add_metric([t.tenant], t.largest)
        yield held
        yield largest
