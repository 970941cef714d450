"""STITCH_SHARDS=8 on one real redis-server: routing, exactly-once across shards and replicas,
the same alias maps as one shard, wrong-shard dead letters, override table changes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import structlog

from resolver.sharding import shard_of
from tests.helpers import event, identify
from tests.redis_proc import RedisServer, apply_acl_users
from worker import Metrics, Settings, Worker
from worker.connection import connect
from worker.fleet import Fleet
from worker.health import Health

SHARDS = 8
TENANTS = [f"tenant{n:02d}" for n in range(20)]


def sharded(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "shards": SHARDS,
        "consumer": "replica-1",
        "metrics_port": 0,
        "block_ms": 10,
        "claim_interval_ms": 1_000_000,
        **overrides,
    }
    return Settings.from_env({}, values)


@pytest.fixture
def sharded_redis(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    """The session's redis-server with the ACL users allowed every shard's keys (restored
    to the default names afterwards: other tests share the server)."""
    apply_acl_users(real_redis, Settings(shards=SHARDS, consumer="acl"))
    yield real_redis
    apply_acl_users(real_redis)


def workload() -> list[tuple[str, dict[str, Any]]]:
    """Per tenant: anonymous events, identifies chaining three ids, a merge, more events."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for step in range(6):
        for n, tenant in enumerate(TENANTS):
            anon, user, other = f"anon-{n}-{step}", f"user-{n}", f"dev-{n}-{step % 2}"
            entries.append((tenant, event(anon, seq=f"{tenant}-{step}-a")))
            entries.append((tenant, identify(user, anon)))
            entries.append((tenant, identify(user, other)))
            entries.append((tenant, event(other, seq=f"{tenant}-{step}-b")))
    return entries


def produce(client: redis.Redis, settings: Settings, entries: list[tuple[str, Any]]) -> None:
    """What a producer does: XADD each event to its tenant's shard's input stream."""
    for tenant, payload in entries:
        stream = settings.for_shard(shard_of(tenant, settings.shards)).input_stream
        client.xadd(stream, {"tenant": tenant, "event": json.dumps(payload)})


def run_replicas(settings: list[Settings]) -> list[Fleet]:
    """Each replica's fleet drained in its own thread, as separate pods would run."""
    log = structlog.get_logger("test")
    fleets = [Fleet.build(s, Metrics(), log, Health(s.stall_after_s)) for s in settings]
    threads = [threading.Thread(target=f.run, kwargs={"drain": True}) for f in fleets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    return fleets


def emitted(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    out = []
    for shard in range(settings.shards):
        for _, fields in client.xrange(settings.for_shard(shard).output_stream):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def alias_maps(client: redis.Redis, settings: Settings) -> dict[str, dict[bytes, bytes]]:
    maps = {}
    for tenant in TENANTS:
        own = settings.for_shard(shard_of(tenant, settings.shards))
        maps[tenant] = client.hgetall(own.alias_prefix + tenant)
    return maps


def test_two_replicas_over_eight_shards_emit_each_event_once_and_match_one_shard(
    sharded_redis: redis.Redis, redis_server: RedisServer
) -> None:
    client, entries = sharded_redis, workload()
    settings = sharded(redis_server.url)
    produce(client, settings, entries)
    fleets = run_replicas([settings, sharded(redis_server.url, consumer="replica-2")])
    out = emitted(client, settings)
    seqs = [json.loads(e["event"])["seq"] for e in out]  # entry ids repeat across streams
    assert len(seqs) == len(set(seqs)) == len(entries) // 2  # events; identifies not
    assert sum(f.summary().get("emitted", 0) for f in fleets) == len(out)
    used = {shard_of(t, SHARDS) for t in TENANTS}
    assert len(used) > 4, "20 tenants should spread over most of the 8 shards"
    resolved = {json.loads(e["event"])["seq"]: e["resolved_user_id"] for e in out}
    maps = alias_maps(client, settings)

    client.flushall()
    single = sharded(redis_server.url, shards=1)
    apply_acl_users(client)
    produce(client, single, entries)
    Worker(single, connect(single), Metrics(), structlog.get_logger("test")).run(drain=True)
    single_out = emitted(client, single)
    assert {json.loads(e["event"])["seq"]: e["resolved_user_id"] for e in single_out} == resolved
    assert alias_maps(client, single) == maps
    assert all(maps.values())
    apply_acl_users(client, Settings(shards=SHARDS, consumer="acl"))
