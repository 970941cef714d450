"""Redis Sentinel: one primary, one replica, three sentinels (real processes on loopback);
the primary is SIGKILLed mid-backlog and the worker carries on on the promoted replica."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.conftest import running_worker
from tests.fault_tools import (
    add_many,
    alias_map,
    assert_running,
    group_state,
    log_lines,
    output_sources,
    stop_gracefully,
    wait_for,
    wait_group_done,
)
from tests.helpers import DEAD, OUTPUT, event, identify
from tests.redis_proc import WORKER_PASSWORD, RedisServer, free_port
from tests.test_operating import get, sample
from worker.acl import WORKER_USER

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

SERVICE = "stitch-primary"
BACKLOG = 4000


class Sentinel:
    """One ``redis-server --sentinel`` watching ``primary_port``."""

    def __init__(self, binary: str, directory: Path, primary_port: int) -> None:
        self.port = free_port()
        self.conf = directory / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.proc = subprocess.Popen(
            [binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, protocol=2, decode_responses=True)

    def knows_all(self) -> bool:
        try:
            replicas = self.client.execute_command("SENTINEL", "REPLICAS", SERVICE)
            others = self.client.execute_command("SENTINEL", "SENTINELS", SERVICE)
        except redis.RedisError:
            return False
        return len(replicas) == 1 and len(others) == 2

    def primary_port(self) -> int:
        _, port = self.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.client.close()


@pytest.fixture
def cluster() -> Iterator[tuple[RedisServer, RedisServer, list[Sentinel]]]:
    primary = RedisServer().start()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    sentinels = [Sentinel(primary.binary, primary.dir, primary.port) for _ in range(3)]
    try:
        wait_for(lambda: all(s.knows_all() for s in sentinels), 30, "sentinels to meet")
        yield primary, replica, sentinels
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        replica.stop()
        primary.stop()


def test_failover_loses_no_acknowledged_commit(
    cluster: tuple[RedisServer, RedisServer, list[Sentinel]], tmp_path: Path
) -> None:
    """SIGKILL the primary mid-backlog with STITCH_WAIT_REPLICAS=1: every commit before it was
    acknowledged by the replica (none counted short), the worker follows the sentinels to the
    promoted replica, loads its scripts again, recovers its pending entries and finishes:
    every event exactly once on the new primary, every link kept."""
    primary, replica, sentinels = cluster
    client, log, port = primary.client(), tmp_path / "worker.log", free_port()
    rows = []
    for i in range(BACKLOG // 2):
        rows += [("acme", identify(f"real-{i}", f"anon-{i}")), ("acme", event(f"anon-{i}"))]
    expected = add_many(client, rows)[1::2]
    assert client.execute_command("WAIT", 1, 10_000) == 1  # the replica has every input
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    url = f"redis+sentinel://{WORKER_USER}:{quote(WORKER_PASSWORD, safe='')}@{hosts}/{SERVICE}"
    base = f"http://127.0.0.1:{port}"
    with running_worker(
        url,
        log_path=log,
        consumer="w",
        batch_size=20,
        block_ms=100,
        metrics_port=port,
        metrics_addr="127.0.0.1",
        wait_replicas=1,
        wait_timeout_ms=50,  # the promoted replica has no replica of its own: 50 ms a batch
        reconnect_give_up_s=60,
        shutdown_timeout_s=10,
    ) as proc:
        wait_for(lambda: client.xlen(OUTPUT) >= 300, 60, "the drain to start", interval=0.001)
        primary.kill()
        metrics = get(base + "/metrics")[1]
        assert sample(metrics, "stitch_commits_under_replicated_total") == 0
        wait_for(lambda: sentinels[0].primary_port() == replica.port, 60, "the failover")
        promoted = replica.client()
        assert promoted.xlen(OUTPUT) < len(expected), "the kill came after the drain"
        wait_group_done(promoted, 120)
        assert_running(proc, log)
        assert stop_gracefully(proc, 15) == 0
    counts = output_sources(promoted)
    assert not {i: n for i, n in counts.items() if n != 1}, "events emitted more than once"
    assert set(counts) == set(expected)
    assert promoted.xlen(DEAD) == 0
    assert group_state(promoted)["pending"] == 0
    assert alias_map(promoted, "acme") == {f"anon-{i}": f"real-{i}" for i in range(BACKLOG // 2)}
    assert [ln["event"] for ln in log_lines(log) if ln["event"] == "redis reconnected"]
    client.close()
    promoted.close()
