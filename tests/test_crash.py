"""SIGKILL mid-batch, restart, and every event still appears downstream exactly once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import running_worker
from tests.helpers import INPUT, OUTPUT, event, identify
from tests.redis_proc import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]


def fill(client: redis.Redis, n: int) -> set[bytes]:
    """n entries, a few identifies among them; returns the ids that must be emitted."""
    expected: set[bytes] = set()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        payload = (
            identify(f"real-{i}", f"anon-{i - 1}") if i % 25 == 0 else event(f"anon-{i % 300}")
        )
        pipe.xadd(INPUT, {"tenant": f"t{i % 3}", "event": json.dumps(payload)})
    for i, entry_id in enumerate(pipe.execute()):
        if i % 25:
            expected.add(entry_id)
    return expected


def wait_for_output(client: redis.Redis, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.xlen(OUTPUT) < at_least:
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.005)


def test_sigkill_mid_batch_then_restart_emits_each_event_once(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Killed at a random point three times, the restarted worker neither loses nor repeats."""
    expected = fill(real_redis, 20_000)
    settings = {"consumer": "crashy", "batch_size": 200, "block_ms": 50}
    pending_at_kill = []
    for threshold in (1_000, 6_000, 12_000):
        with running_worker(redis_server.url, log_path=tmp_path / "w.log", **settings) as proc:
            wait_for_output(real_redis, threshold)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        pending_at_kill.append(real_redis.xpending(INPUT, "stitch")["pending"])
    assert sum(pending_at_kill) > 0, "no kill landed mid-batch"
    with running_worker(
        redis_server.url, "--drain", log_path=tmp_path / "w.log", **settings
    ) as proc:
        assert proc.wait(timeout=120) == 0
    emitted = [fields[b"source_id"] for _, fields in real_redis.xrange(OUTPUT)]
    assert len(emitted) == len(set(emitted)), "an event was emitted twice"
    assert set(emitted) == expected, "an event was lost"
    assert real_redis.xpending(INPUT, "stitch")["pending"] == 0
