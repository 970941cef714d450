"""A batch the commit script refuses is split until the entry at fault is dead-lettered.

The fault is injected with a test-only variant of commit.lua that refuses, before any write,
every batch carrying the value ``POISON``: a stand-in for whatever Redis may refuse that the
parser did not foresee.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis

from tests.fault_tools import wait_for
from tests.helpers import DEAD, INPUT, OUTPUT, add, event, identify, make_worker, metric, output
from worker.scripts import COMMIT_LUA, CommitCommand
from worker.split import entries_at_fault
from worker.worker import Worker

pytestmark = pytest.mark.redis_server

POISONED_LUA = (
    """
for k = 1, #ARGV do
  if ARGV[k] == 'POISON' then return redis.error_reply('ERR refused by the test') end
end
"""
    + COMMIT_LUA
)


def _poisoned_worker(client: redis.Redis, **settings: object) -> Worker:
    worker = make_worker(client, **settings)
    worker.planner.command = CommitCommand(worker.settings, POISONED_LUA)
    return worker


def _poison(client: redis.Redis, user: str) -> str:
    fields = {"tenant": "acme", "event": json.dumps(event(user)), "marker": "POISON"}
    return client.xadd(INPUT, fields).decode()  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [1, 2, 7, 500])
def test_refused_entry_is_dead_lettered_and_neighbours_keep_order(
    real_redis: redis.Redis, batch_size: int
) -> None:
    """Through the pipelined loop: only the poisoned entry is dead-lettered (without its
    payload), the identify before it still applies to the event after it, and the order holds."""
    ids = [add(real_redis, "acme", identify("real-1", "anon-1"))]
    ids += [add(real_redis, "acme", event(f"u{k}")) for k in range(3)]
    bad = _poison(real_redis, "u-bad")
    ids += [add(real_redis, "acme", event("anon-1")), add(real_redis, "acme", event("u9"))]
    worker = _poisoned_worker(real_redis, batch_size=batch_size, forward_identify=True)
    worker.run(drain=True)
    [(_, dead)] = real_redis.xrange(DEAD)
    assert dead[b"error_code"] == b"commit_failed"
    assert dead[b"error"] == b"commit_failed: redis refused the commit: refused by the test"
    assert dead[b"source_id"].decode() == bad
    assert b"marker" not in dead and b"event" not in dead
    assert [e["source_id"] for e in output(real_redis)] == ids
    assert output(real_redis)[-2]["resolved_user_id"] == "real-1"
    assert real_redis.xpending(INPUT, "stitch")["pending"] == 0
    assert worker.totals["dead:commit_failed"] == 1
    assert metric(worker, "stitch_dead_letters_total", reason="commit_failed") == 1


def test_refused_entries_in_a_synchronous_batch(real_redis: redis.Redis) -> None:
    """Through process() (recovery and reclaim use it): two poisoned entries, two dead letters."""
    good = [add(real_redis, "acme", event(f"u{k}")) for k in range(5)]
    bad = [_poison(real_redis, "b1"), _poison(real_redis, "b2")]
    worker = _poisoned_worker(real_redis)
    worker.reconnection.connect()
    raw = worker.stream.read(100, None)
    worker.recovery.process(raw)
    assert [e["source_id"] for e in output(real_redis)] == good
    assert [f[b"source_id"].decode() for _, f in real_redis.xrange(DEAD)] == bad


def test_redis_state_errors_are_not_split(real_redis: redis.Redis) -> None:
    """A key of the wrong type is the operator's, not an entry's: nothing is dead-lettered,
    the entries stay pending, and the worker waits (not ready) until the key is fixed."""
    add(real_redis, "acme", event("u1"))
    real_redis.set("events:enriched", "not a stream")
    worker = make_worker(real_redis)
    thread = threading.Thread(target=worker.run, kwargs={"drain": True}, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: (metric(worker, "stitch_redis_errors_total", kind="wrongtype") or 0) >= 2,
            30,
            "the worker to meet WRONGTYPE twice",
        )
        assert not worker.health.ready
        assert real_redis.xlen(DEAD) == 0
        assert real_redis.xpending(INPUT, "stitch")["pending"] == 1
        real_redis.delete("events:enriched")
        thread.join(30)
        assert not thread.is_alive()
    finally:
        worker.request_stop()
        thread.join(30)
    assert real_redis.xlen(OUTPUT) == 1 and real_redis.xlen(DEAD) == 0


@pytest.mark.parametrize(
    ("error", "split"),
    [
        (redis.ResponseError("entry 1-0 has 5000 field values"), True),
        (redis.ResponseError("user_script:1: too many results to unpack"), True),
        (redis.ResponseError("WRONGTYPE Operation against a key"), False),
        (redis.ResponseError("NOGROUP No such key"), False),
        (redis.ResponseError("BUSY Redis is busy running a script"), False),
        (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"), False),
        (redis.exceptions.OutOfMemoryError("command not allowed"), False),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), False),
        (redis.exceptions.NoScriptError("No matching script."), False),
    ],
)
def test_which_errors_are_split(error: redis.ResponseError, split: bool) -> None:
    """Errors about the batch are split; errors about Redis's state are not."""
    assert entries_at_fault(error) is split
