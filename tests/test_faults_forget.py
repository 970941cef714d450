"""kill -9 during a forget: all or nothing. The only write is the last script (one atomic
step on the server), so a forget killed anywhere, or a Redis killed under it and restarted
from its append-only file, leaves the component either whole or erased whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from resolver.removals import child_member
from tests.conftest import ROOT
from tests.redis_proc import RedisServer, apply_acl_users

KEY = "alias:acme"
FAN = 150  # a component of 150 * 150 + 1 ids: a forget takes a few hundred ms here


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    apply_acl_users(server.client())
    yield server
    server.stop()


def load(client: redis.Redis) -> int:
    """One person: a root, FAN ids under it, FAN - 1 under each (as the link rules index them)."""
    pipe = client.pipeline(transaction=False)
    for a in range(FAN):
        mid = f"mid-{a}"
        pipe.hset(KEY, mid, "root")
        pipe.zadd(KEY + ":children", {child_member(b"root", mid.encode()): 0})
        for b in range(FAN - 1):
            anon = f"anon-{a}-{b}"
            pipe.hset(KEY, anon, mid)
            pipe.zadd(KEY + ":children", {child_member(mid.encode(), anon.encode()): 0})
    pipe.hset(KEY + ":heights", mapping={"": FAN * FAN, "root": 2})
    pipe.execute()
    return FAN * FAN


def state(client: redis.Redis) -> tuple[int, int, int]:
    """(links, children index entries, tombstones)."""
    tombs = int(client.hget(KEY + ":removals", "#") or 0)
    return client.hlen(KEY), client.zcard(KEY + ":children"), tombs


def forget_process(server: RedisServer) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    env |= {"STITCH_REDIS_URL": server.admin_url, "STITCH_TOMBSTONE_KEY": "k"}
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "forget", "--tenant", "acme", "anon-3-4"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_forget_killed_anywhere_is_all_or_nothing(aof_server: RedisServer) -> None:
    """SIGKILL the forget command at growing delays: each time the map holds the component
    whole (no tombstone) or nothing of it (every id tombstoned); never a part."""
    client = aof_server.client()
    links = load(client)
    outcomes = set()
    for delay in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0):
        proc = forget_process(aof_server)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = state(client)
        assert now in ((links, links, 0), (0, 0, links + 1)), (delay, now)
        outcomes.add(now[2] > 0)
        if now[2]:
            break
    assert True in outcomes  # given time, it finishes: a whole erasure, never a part


@pytest.mark.slow
def test_redis_killed_under_a_forget_restarts_whole_or_erased(aof_server: RedisServer) -> None:
    """SIGKILL redis-server while forget runs, restart it from its append-only file: the
    component is whole or erased whole."""
    client = aof_server.client()
    links = load(client)
    proc = forget_process(aof_server)
    time.sleep(0.5)
    aof_server.kill()
    proc.wait()
    aof_server.start()
    assert state(aof_server.client()) in ((links, links, 0), (0, 0, links + 1))
