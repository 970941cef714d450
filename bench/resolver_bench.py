"""Section C: what resolution costs, warm (per id, no I/O) and cold (round trips per batch).

Runs in the orchestrator process (pinned to the worker CPU while it runs) against the
bench's own Redis, under its own key prefix. Cold rows: ``Resolver.resolve_many`` (one
pipelined HMGET per hop level), a naive HGET-per-hop loop, and the worker's own batch path
(``Recovery.process``: parse, plan, commit), whose round trips are counted at the socket
(writes to Redis) and whose alias reads are counted by Redis (HGET/HMGET calls, including
those inside scripts).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from resolver import AliasCache, LinkRules, Resolver, walk
from worker import Metrics, Settings, Worker
from worker.parser import Entry, Parser
from worker.planner import Planner
from worker.scripts import CommitCommand

from .datagen import generate
from .redis_server import CPU_WORKER

__all__ = ["ColdResult", "WarmResult", "cold_batch", "run_resolver_bench", "warm_costs"]

PREFIX = "rb:alias:"
MAX_DEPTH = 32


@dataclass
class WarmResult:
    name: str
    us_per_id: float
    note: str = ""


@dataclass
class ColdResult:
    name: str
    ids: int
    tenants: int
    depths: str
    round_trips: int
    commands: int
    wall_ms: float
    note: str = ""


@dataclass
class ResolverBench:
    warm: list[WarmResult] = field(default_factory=list)
    cold: list[ColdResult] = field(default_factory=list)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _per_item_us(fn: Callable[[], int], min_s: float = 0.3) -> float:
    """Microseconds per item of ``fn`` (which returns how many items it handled); best of 3."""
    best = float("inf")
    for _ in range(3):
        items, started = 0, time.perf_counter()
        while True:
            items += fn()
            elapsed = time.perf_counter() - started
            if elapsed >= min_s / 3:
                break
        best = min(best, elapsed / items * 1e6)
    return best


def _warm_cache(rng: random.Random, n_ids: int) -> tuple[AliasCache, list[str]]:
    """A cache as the worker leaves it: every id known, linked ids path-compressed to roots."""
    cache = AliasCache(max(2 * n_ids, 4))
    ids: list[str] = []
    while len(ids) < n_ids:
        depth = rng.choices((0, 1, 2, 3, 4), (90, 5, 2.5, 1.5, 1))[0]
        chain = [_uuid(rng) for _ in range(depth + 1)]
        root = chain[-1]
        for uid in chain:
            cache.put("acme", uid, root)
        ids.extend(chain)
    rng.shuffle(ids)
    return cache, ids[:n_ids]


def _raw_entries(n: int, seed: int) -> list[tuple[bytes, list[bytes]]]:
    base = 1_700_000_000_000
    out = []
    for i, fields in enumerate(generate(n, seed=seed).entries):
        flat: list[bytes] = []
        for key, value in fields.items():
            flat += [key, value]
        out.append((f"{base + i}-0".encode(), flat))
    return out


def warm_costs(client: redis.Redis, rng: random.Random) -> list[WarmResult]:
    results: list[WarmResult] = []
    cache, ids = _warm_cache(rng, 100_000)

    def get_all() -> int:
        get = cache.get
        for uid in ids:
            get("acme", uid)
        return len(ids)

    def walk_all() -> int:
        for uid in ids:
            walk(cache, "acme", uid)
        return len(ids)

    results.append(WarmResult("AliasCache.get", _per_item_us(get_all), "one dict hit"))
    results.append(
        WarmResult(
            "resolver.walk (warm, 1 hop to root)",
            _per_item_us(walk_all),
            "100k ids, 10% linked, path-compressed",
        )
    )

    resolver = Resolver(client, key_prefix=PREFIX, cache=cache, max_depth=MAX_DEPTH)
    batch = ids[:500]
    resolver.resolve_many("acme", batch)

    def resolve_batch() -> int:
        resolver.resolve_many("acme", batch)
        return len(batch)

    results.append(
        WarmResult(
            "Resolver.resolve_many (warm, 500 ids)",
            _per_item_us(resolve_batch),
            "incl. its 1 HMGET round trip re-verifying roots",
        )
    )

    raw = _raw_entries(500, seed=4242)
    parser = Parser(64 * 1024)
    planner = Planner(
        AliasCache(1_000_000),
        LinkRules(),
        CommitCommand(Settings()),
        key_prefix=PREFIX,
        max_depth=32,
        forward_identify=False,
    )

    def parse_batch() -> int:
        for eid, fields in raw:
            parser.parse(eid, fields)
        return len(raw)

    entries: list[Entry] = [parser.parse(eid, fields) for eid, fields in raw]
    for entry in entries:  # warm: every id known as a root, as after earlier batches
        for uid in (entry.user_id, entry.previous_user_id):
            if uid:
                planner.cache.put(entry.tenant, uid, uid)

    def plan_batch() -> int:
        planner.plan(entries)
        return len(entries)

    results.append(
        WarmResult(
            "worker Parser.parse",
            _per_item_us(parse_batch),
            "msgspec decode of 4 fields of a ~300 B event",
        )
    )
    results.append(
        WarmResult(
            "worker Planner.plan (warm)",
            _per_item_us(plan_batch),
            "500-entry batch, no I/O: walk + verify list + emit args + pack",
        )
    )
    return results


def _write_chains(
    client: redis.Redis, rng: random.Random, tenant: str, n: int
) -> tuple[list[str], dict[str, str], list[int]]:
    """``n`` start ids with chains of depth 1..8 (round robin) in ``PREFIX + tenant``."""
    starts, roots, depths = [], {}, []
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        depth = 1 + i % 8
        chain = [_uuid(rng) for _ in range(depth + 1)]
        for a, b in itertools.pairwise(chain):
            pipe.hset(PREFIX + tenant, a, b)
        starts.append(chain[0])
        roots[chain[0]] = chain[-1]
        depths.append(depth)
    pipe.execute()
    return starts, roots, depths


def _commands(client: redis.Redis) -> int:
    """HGET + HMGET calls so far (alias reads, also those made inside scripts)."""
    info: Any = client.info("commandstats")
    return sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hget", "hmget"))


def cold_batch(client: redis.Redis, rng: random.Random, repeats: int = 5) -> list[ColdResult]:
    results: list[ColdResult] = []
    starts, roots, depths = _write_chains(client, rng, "cold", 500)
    depth_text = f"1-8 (mean {statistics.mean(depths):.1f})"

    walls, trips, commands = [], 0, 0
    for _ in range(repeats):
        resolver = Resolver(client, key_prefix=PREFIX, cache_size=1_000_000, max_depth=MAX_DEPTH)
        before = _commands(client)
        started = time.perf_counter()
        got = resolver.resolve_many("cold", starts)
        walls.append((time.perf_counter() - started) * 1000)
        commands = _commands(client) - before
        trips = resolver.round_trips
        if got != [roots[s] for s in starts]:
            raise AssertionError("Resolver.resolve_many returned wrong roots")
    results.append(
        ColdResult(
            "Resolver.resolve_many, cold cache",
            len(starts),
            1,
            depth_text,
            trips,
            commands,
            statistics.median(walls),
            "pipelined HMGET per hop level",
        )
    )

    walls = []
    for _ in range(repeats):
        before = _commands(client)
        started = time.perf_counter()
        key = PREFIX + "cold"
        for uid in starts:
            node = uid
            while True:
                target: Any = client.hget(key, node)
                if target is None:
                    break
                node = target.decode()
        walls.append((time.perf_counter() - started) * 1000)
        commands = _commands(client) - before
    results.append(
        ColdResult(
            "naive HGET per hop (same batch)",
            len(starts),
            1,
            depth_text,
            commands,
            commands,
            statistics.median(walls),
            "one round trip per hop + 1 per id",
        )
    )

    # the worker itself: one cold batch of 500 events over 4 tenants through Recovery.process
    tenants = ("t1", "t2", "t3", "t4")
    per_tenant = {t: _write_chains(client, rng, t, 125) for t in tenants}
    expected = {
        (t, start): root
        for t, (_, roots_t, _) in per_tenant.items()
        for start, root in roots_t.items()
    }
    walls, trips, commands = [], 0, 0
    note = "parse + plan + commit, as the worker runs a batch"
    try:
        for _ in range(repeats):
            trips, commands, wall = _worker_cold_batch(client, per_tenant, expected)
            walls.append(wall)
    except Exception as exc:  # the worker is edited concurrently: report, don't abort C
        note = f"FAILED: {type(exc).__name__}: {exc}"[:200]
    results.append(
        ColdResult(
            "worker Recovery.process, cold cache",
            len(expected),
            len(tenants),
            depth_text,
            trips,
            commands,
            statistics.median(walls) if walls else float("nan"),
            note,
        )
    )
    return results


class _CountingConnection(redis.Connection):
    """Counts writes to Redis: one per round trip (a pipeline writes once)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _QuietLog:
    """A structlog stand-in that drops everything (the report owns stdout)."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def ignore(*args: Any, **kwargs: Any) -> _QuietLog:
            return self

        return ignore


def _worker_cold_batch(
    client: redis.Redis, per_tenant: dict[str, Any], expected: dict[tuple[str, str], str]
) -> tuple[int, int, float]:
    """(round trips, Redis commands, wall ms) of Worker.process on 500 cold events."""
    stream, output = "rb:events", "rb:out"
    client.delete(stream, output, "rb:dead")
    pipe = client.pipeline(transaction=False)
    for tenant, (starts, _, _) in per_tenant.items():
        for uid in starts:
            body = (
                b'{"event_family":"web","event_name":"page_view","user_id":"'
                + uid.encode()
                + b'","properties":{"page":"/"}}'
            )
            pipe.xadd(stream, {"tenant": tenant, "event": body})
    pipe.execute()
    port = client.connection_pool.connection_kwargs["port"]
    counted = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=_CountingConnection, host="127.0.0.1", port=port, protocol=2
        )
    )
    settings = Settings.from_env(
        {},
        {
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "input_stream": stream,
            "output_stream": output,
            "dead_stream": "rb:dead",
            "alias_prefix": PREFIX,
            "group": "rb",
            "consumer": "rb-1",
            "metrics_port": 0,
            "batch_size": 1000,
            "block_ms": 10,
        },
    )
    worker = Worker(settings, counted, Metrics(), _QuietLog())
    worker.startup()
    raw = worker.stream.read(1000, None)
    before = _commands(client)
    _CountingConnection.sends = 0
    started = time.perf_counter()
    worker.recovery.process(raw)
    wall = (time.perf_counter() - started) * 1000
    trips = _CountingConnection.sends
    commands = _commands(client) - before
    got: Any = client.xrange(output)
    resolved = {
        (f[b"tenant"].decode(), json.loads(f[b"event"])["user_id"]): f[b"resolved_user_id"].decode()
        for _, f in got
    }
    if resolved != expected:
        raise AssertionError(
            f"Worker.process resolved {len(resolved)} of {len(expected)} cold chains correctly"
        )
    client.xgroup_destroy(stream, "rb")
    client.delete(stream, output, "rb:dead")
    counted.close()
    return trips, commands, wall


def run_resolver_bench(client: redis.Redis, seed: int = 99) -> ResolverBench:
    rng = random.Random(seed)
    affinity = os.sched_getaffinity(0)
    if CPU_WORKER in affinity and len(affinity) > 1:
        os.sched_setaffinity(0, {CPU_WORKER})
    try:
        bench = ResolverBench(warm=warm_costs(client, rng), cold=cold_batch(client, rng))
    finally:
        os.sched_setaffinity(0, affinity)
        client.delete(*client.scan_iter(match=PREFIX + "*"))
    return bench
