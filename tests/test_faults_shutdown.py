"""Graceful shutdown of a worker process in the middle of a large backlog."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.conftest import running_worker
from tests.fault_tools import (
    add_many,
    consumers,
    log_lines,
    output_sources,
    stop_gracefully,
    stopped_summary,
    wait_for,
)
from tests.helpers import DEAD, OUTPUT, drain, event
from tests.redis_proc import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

BACKLOG = 30_000
SHUTDOWN_TIMEOUT = 5.0


def test_sigterm_under_load_finishes_the_batch_and_exits_zero(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """SIGTERM while batches are in flight: the worker commits the batch in hand, leaves nothing
    pending, exits 0 well within STITCH_SHUTDOWN_TIMEOUT_S, and a second worker then drains the
    rest so that every event is emitted exactly once."""
    c = real_redis
    ids = add_many(c, [("acme", event(f"u{i % 500}")) for i in range(BACKLOG)])
    log = tmp_path / "first.log"
    with running_worker(
        redis_server.url,
        log_path=log,
        consumer="first",
        batch_size=500,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT,
    ) as proc:
        wait_for(
            lambda: c.exists(OUTPUT) and c.xlen(OUTPUT) > 0, 30, "the first batches", interval=0.002
        )
        started = time.monotonic()
        code = stop_gracefully(proc, SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - started
    assert code == 0
    assert took < SHUTDOWN_TIMEOUT, f"exit took {took:.1f}s"
    assert not any(
        line.get("event") == "shutdown timed out; uncommitted entries stay pending"
        for line in log_lines(log)
    )
    assert consumers(c)["first"] == 0  # the batch in hand was committed, not abandoned
    emitted_first = c.xlen(OUTPUT)
    assert 0 < emitted_first < BACKLOG, "the worker was not stopped mid-backlog"
    assert stopped_summary(log)["emitted"] == emitted_first

    second = drain(c, consumer="second", batch_size=500)

    assert second.totals["emitted"] == BACKLOG - emitted_first
    counts = output_sources(c)
    assert not {i: n for i, n in counts.items() if n != 1}, "events emitted more than once"
    assert set(counts) == set(ids)
    assert c.xlen(DEAD) == 0


def test_sigterm_during_redis_outage_exits_zero_promptly(tmp_path: Path) -> None:
    """SIGTERM while Redis is down (nothing in hand can be committed) stops the worker at once
    with exit 0; it does not spin on reconnects until the shutdown timer kills it with 1."""
    server = RedisServer().start()
    log = tmp_path / "worker.log"
    try:
        client = server.client()
        with running_worker(
            server.url,
            log_path=log,
            consumer="w",
            block_ms=200,
            reconnect_give_up_s=120,
            shutdown_timeout_s=SHUTDOWN_TIMEOUT,
        ) as proc:
            add_many(client, [("acme", event("u1"))])
            wait_for(
                lambda: client.exists(OUTPUT) and client.xlen(OUTPUT) == 1, 30, "the worker to run"
            )
            client.close()
            server.kill()
            wait_for(
                lambda: any(
                    line.get("event") == "redis unavailable, reconnecting"
                    for line in log_lines(log)
                ),
                10,
                "the outage to be noticed",
            )
            started = time.monotonic()
            code = stop_gracefully(proc, SHUTDOWN_TIMEOUT + 10)
            took = time.monotonic() - started
        assert (code, took < SHUTDOWN_TIMEOUT / 2) == (0, True), (code, round(took, 2))
        assert stopped_summary(log)["emitted"] == 1
    finally:
        server.stop()
