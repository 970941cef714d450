"""``python -m bench.forget``: forget of a 10,000-id component in a tenant with 1M links, and
an unlink in the same map, on a private redis-server (issue 11's target: forget <= 1 s).

The map is written the way the link rules leave it (alias hash, children index, heights and
their link count) with pipelined HSET/ZADD, not one script per link, so the set-up takes
seconds. The component: a root, 100 ids linked to it, 99 more under each of those (depth 2).
Also prints what the children index costs in memory per link (MEMORY USAGE).
"""

from __future__ import annotations

import argparse
import time

from resolver import Resolver
from resolver.removals import child_member

from .redis_server import RedisServer

TENANT = "big"
KEY = "alias:" + TENANT


def load(client: object, links: int, fan: int) -> str:
    """``links`` links: others in pairs (anon -> cust), and one component of fan*fan ids."""
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    root, count = "person-root", 0

    def link(prev: str, user: str) -> None:
        nonlocal count
        pipe.hset(KEY, prev, user)
        pipe.zadd(KEY + ":children", {child_member(user.encode(), prev.encode()): 0})
        count += 1
        if count % 5000 == 0:
            pipe.execute()

    for a in range(fan):
        mid = f"person-mid-{a}"
        link(mid, root)
        for b in range(fan - 1):
            link(f"person-anon-{a}-{b}", mid)
    for k in range(links - count):
        link(f"anon-{k:09d}", f"cust-{k // 2:09d}")
    pipe.hset(KEY + ":heights", mapping={"": count, root: 2})
    pipe.execute()
    return root


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forget")
    parser.add_argument("--links", type=int, default=1_000_000)
    parser.add_argument("--fan", type=int, default=100, help="component of fan*fan ids")
    args = parser.parse_args()
    with RedisServer(cpu=None) as server:
        client = server.client()
        started = time.perf_counter()
        load(client, args.links, args.fan)
        print(f"loaded {client.hlen(KEY):,} links in {time.perf_counter() - started:.1f} s")
        alias_bytes = client.memory_usage(KEY, samples=0) or 0
        index_bytes = client.memory_usage(KEY + ":children", samples=0) or 0
        per_link = index_bytes / client.hlen(KEY)
        print(f"memory: alias map {alias_bytes / 2**20:.0f} MiB, children index "
              f"{index_bytes / 2**20:.0f} MiB ({per_link:.0f} B per link)")  # fmt: skip
        resolver = Resolver(client, tombstone_key=b"bench-key")
        client.slowlog_reset()  # MEMORY USAGE above reads the whole map
        started = time.perf_counter()
        done = resolver.forget(TENANT, "person-anon-1-5")
        elapsed = time.perf_counter() - started
        print(f"forget of a {done.tombstones:,}-id component in a map of {args.links:,} links: "
              f"{elapsed:.3f} s (target <= 1 s)")  # fmt: skip
        started = time.perf_counter()
        done = resolver.unlink(TENANT, "anon-000000002")
        print(f"unlink of a link in the same map: {time.perf_counter() - started:.3f} s "
              f"({len(done.affected_ids)} ids changed)")  # fmt: skip
        slowest = max(client.slowlog_get(128), key=lambda e: e["duration"], default=None)
        if slowest:
            print(f"longest single command or script: {slowest['duration'] / 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
