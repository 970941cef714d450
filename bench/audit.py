"""``python -m bench.audit``: ``audit`` of a tenant with 1M links, among them a blob of 3,000
anonymous ids identified into one user_id (cap 1000) and 1,000 links into an id now a
placeholder, on a private redis-server; then what the quarantine costs a forget.

The map is written as the link rules leave it (alias hash, children index, provenance,
heights and sizes) with pipelined writes. Prints the wall time of the listing, of
``--apply`` (and its slowest script: how long the workers wait behind one page), of a
re-run, and of a forget beside 0 to 100,000 held links in the quarantine, or 100,000
tombstones (the forget reads the blocks among them).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from resolver import Resolver
from resolver.auditing import PAGE, Finding, component_findings, hold, map_findings
from resolver.links import LinkRules
from resolver.removals import child_member

from .redis_server import RedisServer

TENANT = "big"
KEY = "alias:" + TENANT
CHANGES = "alias:changes"


def load(client: Any, links: int, blob: int, placeholders: int) -> None:
    pipe = client.pipeline(transaction=False)
    count = 0

    def link(prev: str, user: str) -> None:
        nonlocal count
        pipe.hset(KEY, prev, user)
        pipe.zadd(KEY + ":children", {child_member(user.encode(), prev.encode()): 0})
        pipe.hset(KEY + ":provenance", prev, f"{count}-0 {1_700_000_000_000 + count} bench")
        count += 1
        if count % 5000 == 0:
            pipe.execute()

    for k in range(blob):
        link(f"shopper-{k:06d}", "demo")
    for k in range(placeholders):
        link(f"tester-{k:06d}", "qa-user")
    pairs = links - count
    for k in range(pairs):
        link(f"anon-{k:09d}", f"cust-{k // 2:09d}")
    pipe.hset(KEY + ":heights", mapping={"": count, "demo": 1, "qa-user": 1})
    pipe.hset(KEY + ":sizes", mapping={"demo": blob + 1, "qa-user": placeholders + 1})
    for k in range(0, pairs, 2):
        pipe.hset(KEY + ":heights", f"cust-{k // 2:09d}", 1)
        pipe.hset(KEY + ":sizes", f"cust-{k // 2:09d}", 3)
        if k % 10000 == 0:
            pipe.execute()
    pipe.execute()


def audit(client: Any, *, apply: bool) -> tuple[int, float, float]:
    """(links found, seconds, the slowest script's seconds), as the command runs it."""
    rules = LinkRules(["qa-user"])
    started, slowest, found = time.perf_counter(), 0.0, set()

    def report(findings: list[Finding]) -> None:
        nonlocal slowest
        fresh = [f for f in findings if f.previous_user_id not in found]
        found.update(f.previous_user_id for f in fresh)
        for first in range(0, len(fresh), PAGE):
            if apply:
                one = time.perf_counter()
                hold(
                    client,
                    KEY,
                    TENANT,
                    fresh[first : first + PAGE],
                    op_id="bench",
                    changes_key=CHANGES,
                    changes_maxlen=0,
                    max_depth=16,
                    tombstone_key=None,
                )
                slowest = max(slowest, time.perf_counter() - one)

    for _, findings in map_findings(client, KEY, rules.is_placeholder, None):
        report(findings)
    for findings in component_findings(
        client, KEY, max_depth=16, default_cap=1000, approved_by="x", skip=found
    ):
        report(findings)
    return len(found), time.perf_counter() - started, slowest


def forget_with(client: Any, holds: int, tombstones: int) -> float:
    """Seconds of one forget (a component of 2 ids) beside so many holds and tombstones."""
    client.delete(KEY + ":quarantine")
    pipe = client.pipeline(transaction=False)
    for k in range(holds):
        pipe.hset(KEY + ":quarantine", f"held-{k:07d}", f"cust-x {k}-0 1700000000000 size")
        if k % 5000 == 0:
            pipe.execute()
    for k in range(tombstones):
        pipe.hset(KEY + ":removals", f"t{k:064x}", "bench")
        if k % 5000 == 0:
            pipe.execute()
    pipe.execute()
    resolver = Resolver(client, tombstone_key=b"bench", changes_key=CHANGES)
    person = f"gone-{holds}-{tombstones}"
    assert resolver.link(TENANT, person, person + "-root") == "applied"
    started = time.perf_counter()
    assert resolver.forget(TENANT, person).tombstones == 2
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit")
    parser.add_argument("--links", type=int, default=1_000_000)
    args = parser.parse_args()
    with RedisServer(cpu=None) as server:
        client = server.client()
        load(client, args.links, blob=3000, placeholders=1000)
        print(f"loaded {client.hlen(KEY):,} links")
        for label, apply in (("audit", False), ("audit --apply", True), ("re-run", False)):
            found, seconds, slowest = audit(client, apply=apply)
            extra = f", slowest script {slowest * 1000:.0f} ms" if apply else ""
            print(f"{label}: {found:,} links found in {seconds:.2f} s{extra}")
        for holds, tombstones in ((0, 0), (10_000, 0), (100_000, 0), (0, 100_000)):
            ms = forget_with(client, holds, tombstones) * 1000
            print(f"forget beside {holds:,} holds, {tombstones:,} more tombstones: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
