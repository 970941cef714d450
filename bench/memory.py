"""Section D: RSS of a process that pushes distinct ids through a bounded AliasCache.

Runs in a fresh interpreter (``python -m bench.memory --cap N --ids M``) so the baseline is
clean. Ids are 36-char UUID strings decoded by msgspec from JSON, as the worker's parser
gets them: fresh ``str`` objects, one per arrival. 95 % are stored as roots (id -> id,
one string), 5 % as links to another fresh id (id -> real id, two strings), as the
worker's fetch/commit path stores them. Prints one JSON result line.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from resolver import AliasCache

__all__ = ["main", "rss_bytes", "run"]

CHUNK = 10_000
TENANTS = ("acme", "globex", "initech", "umbrella")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    return _status("VmRSS")


def _chunk(rng: random.Random, n: int) -> bytes:
    """A JSON array of ``n`` fresh UUID strings (what events carry as user_id)."""
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    return msgspec.json.encode(ids)


def run(cap: int, total: int, every: int) -> dict[str, Any]:
    rng = random.Random(5)
    decode = msgspec.json.Decoder(list[str]).decode
    cache = AliasCache(cap)
    _chunk(rng, CHUNK)  # warm up allocator paths the loop uses
    gc.collect()
    baseline = rss_bytes()
    samples: list[tuple[int, int, int]] = []
    seen = 0
    while seen < total:
        ids = decode(_chunk(rng, CHUNK))
        links = decode(_chunk(rng, CHUNK // 20))
        for i, uid in enumerate(ids):
            tenant = TENANTS[i & 3]
            if i % 20 == 0:
                cache.put(tenant, uid, links[i // 20])
            else:
                cache.put(tenant, uid, uid)
        seen += len(ids)
        if seen % every == 0:
            samples.append((seen, rss_bytes(), len(cache)))
    return {"cap": cap, "baseline": baseline, "samples": samples, "peak": _status("VmHWM")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.memory")
    parser.add_argument("--cap", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.every % CHUNK:
        parser.error(f"--every must be a multiple of {CHUNK}")
    print(json.dumps(run(args.cap, args.ids, args.every)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
