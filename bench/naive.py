"""The worker a user might write first: redis-py, one command (one round trip) per step.

Per entry: XREADGROUP COUNT 1, json.loads, one HGET per hop of the chain (until an id
has no link), HSET for an identify, XADD of the enriched entry, XACK. Run as a
subprocess: ``python -m bench.naive --url URL --limit N``; prints one JSON result line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis

__all__ = ["main", "run"]

MAX_HOPS = 32


def run(
    client: redis.Redis,
    *,
    stream: str,
    group: str,
    consumer: str,
    output: str,
    alias_prefix: str,
    limit: int,
) -> dict[str, Any]:
    handled = emitted = hgets = 0
    started: float | None = None
    ended = 0.0
    while handled < limit:
        reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=1, block=200)
        if not reply:
            break
        if started is None:
            started = time.perf_counter()
        entry_id, fields = reply[0][1][0]
        event = json.loads(fields["event"])
        key = alias_prefix + fields["tenant"]
        user_id = event["user_id"]
        if event.get("event_family") == "system" and event.get("event_name") == "identify":
            client.hset(key, event["previous_user_id"], user_id)
        else:
            node = user_id
            for _ in range(MAX_HOPS):
                hgets += 1
                target = client.hget(key, node)
                if target is None or target == node:
                    break
                node = target
            client.xadd(output, {**fields, "resolved_user_id": node, "source_id": entry_id})
            emitted += 1
        client.xack(stream, group, entry_id)
        handled += 1
        ended = time.perf_counter()
    seconds = ended - started if started is not None else 0.0
    return {"events": handled, "emitted": emitted, "hgets": hgets, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.naive")
    parser.add_argument("--url", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--stream", default="events")
    parser.add_argument("--group", default="stitch")
    parser.add_argument("--consumer", default="naive-1")
    parser.add_argument("--output", default="events:enriched")
    parser.add_argument("--alias-prefix", default="alias:")
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.url, decode_responses=True)
    result = run(
        client,
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        output=args.output,
        alias_prefix=args.alias_prefix,
        limit=args.limit,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
