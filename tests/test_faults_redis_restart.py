"""Redis SIGKILLed and restarted (AOF, appendfsync always) under a running worker process."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import running_worker
from tests.fault_tools import (
    add_many,
    alias_map,
    group_state,
    log_lines,
    output_sources,
    stop_gracefully,
    stopped_summary,
    wait_for,
    wait_group_done,
)
from tests.helpers import DEAD, INPUT, OUTPUT, event, identify
from tests.redis_proc import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

KILLS = 3
BURST = 4000


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


def test_worker_survives_redis_sigkill_and_restart(aof_server: RedisServer, tmp_path: Path) -> None:
    """A worker whose Redis is SIGKILLed mid-backlog and restarted on the same port stays up,
    reconnects, and finishes: every event emitted exactly once, links kept, a clean exit 0."""
    rng = random.Random(3)
    client = aof_server.client()
    log = tmp_path / "worker.log"
    expected: list[str] = []
    in_flight = 0
    with running_worker(
        aof_server.url,
        log_path=log,
        consumer="survivor",
        batch_size=20,
        block_ms=200,
        reconnect_give_up_s=120,
        claim_idle_ms=2000,
        claim_interval_ms=500,
        shutdown_timeout_s=10,
    ) as proc:
        add_many(client, [("acme", identify("real-1", "anon-1"))])
        wait_for(lambda: alias_map(client, "acme"), 30, "the link to be stored")
        for _ in range(KILLS):
            emitted_before = client.xlen(OUTPUT)
            expected += add_many(client, [("acme", event(f"anon-{i % 50}")) for i in range(BURST)])
            wait_for(
                lambda n=emitted_before, cl=client: cl.xlen(OUTPUT) >= n + 200,
                30,
                "the worker to get going on the burst",
                interval=0.005,
            )
            in_flight += client.xlen(OUTPUT) < len(expected)
            aof_server.kill()
            time.sleep(rng.uniform(0.5, 1.5))
            assert proc.poll() is None, "the worker exited while Redis was down"
            client.close()
            aof_server.start()
            client = aof_server.client()
            assert client.xlen(INPUT) == len(expected) + 1  # every acknowledged XADD survived
        expected += add_many(client, [("acme", event(f"anon-{i % 50}")) for i in range(1000)])
        wait_group_done(client, 60)
        assert proc.poll() is None
        assert stop_gracefully(proc, 15) == 0

    assert in_flight >= 1, "Redis was never killed with a backlog in flight"
    counts = output_sources(client)
    assert not {i: n for i, n in counts.items() if n != 1}, "events emitted more than once"
    assert set(counts) == set(expected)
    assert client.xlen(DEAD) == 0
    assert alias_map(client, "acme") == {"anon-1": "real-1"}
    resolved = {f[b"resolved_user_id"].decode() for _, f in client.xrange(OUTPUT)}
    assert "anon-1" not in resolved and "real-1" in resolved
    assert group_state(client)["pending"] == 0
    summary = stopped_summary(log)
    assert summary["reconnects"] == KILLS
    assert sum(1 for line in log_lines(log) if line.get("event") == "redis reconnected") == KILLS
    client.close()


def test_worker_drops_cached_links_when_redis_comes_back_empty(tmp_path: Path) -> None:
    """When Redis restarts without its data (no AOF), the worker resolves from what Redis holds
    now: an alias link it had cached before the outage is not used for any event after it."""
    server = RedisServer(appendonly=False).start()
    try:
        client = server.client()
        with running_worker(
            server.url,
            log_path=tmp_path / "worker.log",
            consumer="w",
            block_ms=2000,
            reconnect_give_up_s=60,
        ) as proc:
            add_many(client, [("acme", identify("real-1", "anon-1")), ("acme", event("anon-1"))])
            wait_for(lambda: client.xlen(OUTPUT) == 1, 30, "the first event")
            assert client.xrange(OUTPUT)[0][1][b"resolved_user_id"] == b"real-1"  # cache warm
            server.kill()
            time.sleep(1.0)
            assert proc.poll() is None
            client.close()
            server.start()  # empty: the link, the streams and the group are gone
            client = server.client()
            [after] = add_many(client, [("acme", event("anon-1"))])
            wait_for(
                lambda: client.exists(OUTPUT) and client.xlen(OUTPUT) == 1,
                30,
                "the event after the restart",
            )
            assert alias_map(client, "acme") == {}
            [(_, fields)] = client.xrange(OUTPUT)
            assert fields[b"source_id"].decode() == after
            assert fields[b"resolved_user_id"] == b"anon-1"
            assert stop_gracefully(proc, 15) == 0
        client.close()
    finally:
        server.stop()
