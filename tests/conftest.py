"""Shared fixtures: fakeredis for fast unit tests, a real redis-server for everything else."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from tests.redis_proc import RedisServer, free_port
from worker.acl import WORKER_USER

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (skipped locally, required under CI=true)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A flushed real Redis client (RESP2, bytes). Workers run as ``stitch-worker``; the
    test fails if Redis refused that user anything meanwhile (ACL LOG)."""
    client = redis_server.client()
    client.flushall()
    client.acl_log_reset()
    yield client
    refused = [e for e in client.acl_log() if e["username"] == WORKER_USER]
    assert not refused, f"Redis refused stitch-worker: {refused}"


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.redis_server)])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """The contract tests' Redis: fakeredis (the fast tier) and a real redis-server, each."""
    if request.param == "fakeredis":
        return fakeredis.FakeRedis(protocol=2)
    real: redis.Redis = request.getfixturevalue("real_redis")
    return real


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever starts a redis-server is marked so, however it reaches the fixture."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis_server)


@pytest.fixture
def fake_redis() -> redis.Redis:
    """A fakeredis client with Lua support, for fast unit tests."""
    return fakeredis.FakeRedis(protocol=2)


def worker_env(url: str, **settings: object) -> dict[str, str]:
    """Environment for a worker subprocess: ``STITCH_*`` from keyword settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    env.update(
        {
            "STITCH_REDIS_URL": url,
            "STITCH_METRICS_PORT": "0",
            "STITCH_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"STITCH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def running_worker(
    url: str, *args: str, log_path: Path | None = None, **settings: object
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``python -m worker run`` subprocess that is always stopped on exit."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", *args],
        env=worker_env(url, **settings),
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if log_path:
            log.close()  # type: ignore[union-attr]


__all__ = ["free_port", "running_worker", "worker_env"]
