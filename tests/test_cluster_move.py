"""``move-tenant`` on a Redis Cluster of 3 primaries and 3 replicas, with two worker replicas
(subprocesses, the default 10 s table refresh) and a producer running: the tenant moves to a
shard on another primary; every event once, its map that of a one-Redis run, nothing left
of it on the old shard."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from resolver.sharding import OVERRIDES_KEY, route
from tests.redis_proc import ADMIN_PASSWORD
from tests.test_cluster_worker import SHARDED, finish, reference, replicas, seqs, started_cluster
from tests.test_move_tenant import entries, produce
from tests.test_sharded_worker import SHARDS, TENANTS
from worker.acl import ADMIN_USER
from worker.cli import main
from worker.ops.moving import tenant_keys

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]
__all__ = ["reference"]  # the fixture used here

TENANT, OTHER = TENANTS[0], TENANTS[1]


def test_a_tenant_moves_to_another_primary_while_replicas_run(
    reference: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = started_cluster("redis-server")
    try:
        source = route(TENANT, SHARDS).shard
        owner = cluster.owner(SHARDED.for_shard(source).input_stream)
        target = next(
            s
            for s in range(SHARDS)
            if cluster.owner(SHARDED.for_shard(s).input_stream).port != owner.port
        )
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes[:2])
        monkeypatch.setenv(
            "STITCH_REDIS_URL", f"redis+cluster://{ADMIN_USER}:{quote(ADMIN_PASSWORD)}@{seeds}"
        )
        monkeypatch.setenv("STITCH_SHARDS", str(SHARDS))
        todo = entries(150, TENANT, OTHER)  # past 128 links: a hashtable, not a listpack
        before, during, after = todo[:200], todo[200:400], todo[400:]
        producer = cluster.producer()
        produce(producer, SHARDED, before)
        with replicas(cluster, tmp_path) as workers:
            thread = threading.Thread(
                target=produce, args=(cluster.producer(), SHARDED, during, 0.01)
            )
            thread.start()
            move = ["move-tenant", "--tenant", TENANT, "--to", str(target), "--settle", "12"]
            assert main(move) == 0
            thread.join(60)
            produce(producer, SHARDED, after)
            events = [p["seq"] for _, p in todo if "seq" in p]
            out = finish(producer, workers, len(events))
        assert seqs(out) == dict.fromkeys(events, 1)
        assert producer.hgetall(OVERRIDES_KEY) == {TENANT.encode(): str(target).encode()}
        old = cluster.owner(SHARDED.for_shard(source).input_stream).client()
        assert tenant_keys(old, SHARDED.for_shard(source).alias_prefix + TENANT) == []
        moved = producer.hgetall(SHARDED.for_shard(target).alias_prefix + TENANT)
        _, maps = reference(todo)
        assert moved == maps[TENANT] and len(moved) == 150
        assert not cluster.worker_refusals()
    finally:
        cluster.stop()
