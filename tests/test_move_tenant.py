"""``move-tenant`` with STITCH_SHARDS=8 on a real Redis while workers and a producer run:
the tenant's events before, during and after the move are each emitted once, its alias map
ends on the target shard equal to a one-shard run's and nothing of it is left on the old
shard; a move killed after any step finishes when run again."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
import structlog

from resolver.sharding import MOVED_PREFIX, MOVING_PREFIX, OVERRIDES_KEY, parse_overrides, route
from tests.helpers import event, identify
from tests.redis_proc import RedisServer, apply_acl_users
from tests.test_sharded_worker import (
    SHARDS,
    admin_cli,
    eventually,
    run_replicas,
    running,
    sharded,
    sharded_redis,
)
from worker import Metrics, Worker
from worker.cli import main
from worker.connection import connect
from worker.ops import moving
from worker.ops.moving import TenantMove, tenant_keys

__all__ = ["admin_cli", "sharded_redis"]  # fixtures used here

TENANT, OTHER = "bigco", "acme"
SOURCE = route(TENANT, SHARDS).shard
TARGET = (SOURCE + 3) % SHARDS


def entries(
    count: int, tenant: str = TENANT, other: str = OTHER
) -> list[tuple[str, dict[str, Any]]]:
    """Per step: an anonymous event, the identify that links it, an event of the user; and
    an event of another tenant. Links never compete, so the map is the same in any order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n in range(count):
        out.append((tenant, event(f"anon-{n}", seq=f"b{n}a")))
        out.append((tenant, identify(f"user-{n % 7}", f"anon-{n}")))
        out.append((tenant, event(f"anon-{n}", seq=f"b{n}b")))
        out.append((other, event(f"x-{n}", seq=f"o{n}")))
    return out


def produce(client: Any, base: Any, todo: list[tuple[str, Any]], pause_s: float = 0) -> None:
    """A producer re-reading the table before each entry (as one would every 10 s)."""
    for tenant, payload in todo:
        table = parse_overrides(client.hgetall(OVERRIDES_KEY), SHARDS)
        stream = route(tenant, base.shards, table, base).keys.input_stream
        client.xadd(stream, {"tenant": tenant, "event": json.dumps(payload)})
        time.sleep(pause_s)


def emitted_seqs(client: redis.Redis, base: Any) -> list[str]:
    return [
        json.loads(fields[b"event"])["seq"]
        for shard in range(SHARDS)
        for _, fields in client.xrange(base.for_shard(shard).output_stream)
    ]


def one_shard_map(client: redis.Redis, url: str, todo: list[tuple[str, Any]]) -> dict[Any, Any]:
    client.flushall()
    apply_acl_users(client)
    single = sharded(url, shards=1)
    produce(client, single, todo)
    Worker(single, connect(single), Metrics(), structlog.get_logger("test")).run(drain=True)
    return client.hgetall(single.alias_prefix + TENANT)


class CrashError(Exception):
    """The move killed right after a step's writes."""


def crash_after(step: str) -> Any:
    said = TenantMove.say

    def say(self: TenantMove, line: str) -> None:
        said(self, line)
        if line.startswith(step):
            raise CrashError(line)

    return say


@pytest.mark.usefixtures("admin_cli")
@pytest.mark.parametrize("crash", [None, "1/7", "3/7", "5/7", "6/7"])
def test_a_tenant_moves_while_workers_run_every_event_once_the_same_map(
    sharded_redis: redis.Redis,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    crash: str | None,
) -> None:
    client, base = sharded_redis, sharded(redis_server.url)
    todo = entries(150)
    before, during, after = todo[:200], todo[200:400], todo[400:]
    produce(client, base, before)
    move = ["move-tenant", "--tenant", TENANT, "--to", str(TARGET), "--settle", "0.3"]
    with running(base):
        producer = threading.Thread(target=produce, args=(client, base, during))
        producer.start()
        if crash is not None:
            with monkeypatch.context() as patched, pytest.raises(CrashError):
                patched.setattr(TenantMove, "say", crash_after(crash))
                main(move)
        assert main(move) == 0
        producer.join(60)
        produce(client, base, after)
        events = [p["seq"] for _, p in todo if "seq" in p]
        eventually(lambda: len(emitted_seqs(client, base)) >= len(events), 60)
    assert sorted(emitted_seqs(client, base)) == sorted(events)  # each exactly once
    err = capsys.readouterr().err
    assert "7/7 done" in err
    table = client.hgetall(OVERRIDES_KEY)
    assert table == {TENANT.encode(): str(TARGET).encode()}
    old, new = base.for_shard(SOURCE), base.for_shard(TARGET)
    assert tenant_keys(client, old.alias_prefix + TENANT) == []
    assert client.xlen(old.dead_stream) == client.xlen(new.dead_stream) == 0
    moved_map = client.hgetall(new.alias_prefix + TENANT)
    assert moved_map == one_shard_map(client, redis_server.url, todo)
    assert len(moved_map) == 150


@pytest.mark.usefixtures("admin_cli")
def test_a_move_refuses_a_target_with_data_and_a_dry_run_changes_nothing(
    sharded_redis: redis.Redis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client, base = sharded_redis, sharded(redis_server.url)
    produce(client, base, entries(3))
    run_replicas([base])
    capsys.readouterr()
    keys = tenant_keys(client, base.for_shard(SOURCE).alias_prefix + TENANT)
    assert len(keys) > 3  # the map, its heights, sizes, provenance, ...
    assert main(["move-tenant", "--tenant", TENANT, "--to", str(TARGET), "--dry-run"]) == 0
    assert (
        f"from shard {SOURCE} to shard {TARGET}: {len(keys)} keys, 0 wrong_shard dead letters"
        in capsys.readouterr().err
    )
    assert client.hgetall(OVERRIDES_KEY) == {}
    client.hset(base.for_shard(TARGET).alias_prefix + TENANT, "a", "b")
    assert main(["move-tenant", "--tenant", TENANT, "--to", str(TARGET)]) == 2
    assert "already holds keys of 'bigco'" in capsys.readouterr().err
    assert client.hgetall(OVERRIDES_KEY) == {}
    client.hset(OVERRIDES_KEY, MOVING_PREFIX + TENANT, str(TARGET))
    assert main(["resolve", "--tenant", TENANT, "anon-1"]) == 2
    assert "is being moved to shard" in capsys.readouterr().err
    assert main(["move-tenant", "--tenant", TENANT, "--to", str(SOURCE)]) == 2
    assert "finish that move first" in capsys.readouterr().err
    client.hdel(OVERRIDES_KEY, MOVING_PREFIX + TENANT)  # switched, old keys not yet deleted
    client.hset(OVERRIDES_KEY, mapping={TENANT: TARGET, MOVED_PREFIX + TENANT: SOURCE})
    assert main(["move-tenant", "--tenant", TENANT, "--to", str(SOURCE)]) == 2
    assert f"being moved to shard {TARGET}: finish that move first" in capsys.readouterr().err
    assert moving.SETTLE_S == 30.0
