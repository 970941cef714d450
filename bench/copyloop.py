"""A pipelined copy loop with redis-py: the floor any stream worker has to beat.

Per batch: XREADGROUP COUNT=batch (redis-py's standard reply parsing), add one field to
each entry without decoding its event, then one pipeline with every XADD and one XACK.
No resolution, no exactly-once. Run as a subprocess:
``python -m bench.copyloop --url URL --batch 500``; prints one JSON result line.
With ``--follow`` it is the latency baseline instead: it creates the group, blocks for new
entries until SIGTERM and stamps each copy with ``source_id`` like the worker does.
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


def run(
    client: redis.Redis,
    *,
    stream: str,
    group: str,
    consumer: str,
    output: str,
    batch: int,
    limit: int | None = None,
    follow_block_ms: int | None = None,
) -> dict[str, Any]:
    handled = 0
    started: float | None = None
    ended = 0.0
    block = follow_block_ms or 200
    while limit is None or handled < limit:
        reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=batch, block=block)
        if not reply:
            if follow_block_ms:
                continue
            break
        if started is None:
            started = time.perf_counter()
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        ids = []
        for entry_id, fields in entries:
            fields[b"copied_by"] = b"copyloop"
            if follow_block_ms:
                fields[b"source_id"] = entry_id
            pipe.xadd(output, fields)
            ids.append(entry_id)
        pipe.xack(stream, group, *ids)
        pipe.execute()
        handled += len(entries)
        ended = time.perf_counter()
    seconds = ended - started if started is not None else 0.0
    return {"events": handled, "emitted": handled, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.copyloop")
    parser.add_argument("--url", required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--stream", default="events")
    parser.add_argument("--group", default="stitch")
    parser.add_argument("--consumer", default="copyloop-1")
    parser.add_argument("--output", default="events:enriched")
    parser.add_argument(
        "--follow",
        type=int,
        default=None,
        metavar="BLOCK_MS",
        help="latency baseline: create the group and block for entries",
    )
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.url, protocol=2)
    if args.follow:
        try:
            client.xgroup_create(args.stream, args.group, "0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    result = run(
        client,
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        output=args.output,
        batch=args.batch,
        limit=args.limit,
        follow_block_ms=args.follow,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
