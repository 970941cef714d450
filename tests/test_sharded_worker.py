"""STITCH_SHARDS=8 on one real redis-server: routing, exactly-once across shards and replicas,
the same alias maps as one shard, wrong-shard dead letters, override table changes."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from resolver.sharding import OVERRIDES_KEY, route, shard_of
from tests.conftest import running_worker
from tests.helpers import event, identify
from tests.redis_proc import RedisServer, apply_acl_users
from worker import Metrics, Settings, Worker
from worker.cli import main
from worker.connection import connect
from worker.fleet import Fleet

SHARDS = 8
TENANTS = [f"tenant{n:02d}" for n in range(20)]


def sharded(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "shards": SHARDS,
        "consumer": "replica-1",
        "metrics_port": 0,
        "block_ms": 10,
        "claim_interval_ms": 1_000_000,
        **overrides,
    }
    return Settings.from_env({}, values)


@pytest.fixture
def sharded_redis(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    """The session's redis-server with the ACL users allowed every shard's keys (restored
    to the default names afterwards: other tests share the server)."""
    apply_acl_users(real_redis, Settings(shards=SHARDS, consumer="acl"))
    yield real_redis
    apply_acl_users(real_redis)


def workload(steps: int = 6) -> list[tuple[str, dict[str, Any]]]:
    """Per tenant and step: anonymous events, identifies chaining three ids, a merge, more
    events."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for step in range(steps):
        for n, tenant in enumerate(TENANTS):
            anon, user, other = f"anon-{n}-{step}", f"user-{n}", f"dev-{n}-{step % 2}"
            entries.append((tenant, event(anon, seq=f"{tenant}-{step}-a")))
            entries.append((tenant, identify(user, anon)))
            entries.append((tenant, identify(user, other)))
            entries.append((tenant, event(other, seq=f"{tenant}-{step}-b")))
    return entries


def produce(client: redis.Redis, settings: Settings, entries: list[tuple[str, Any]]) -> None:
    """What a producer does: XADD each event to its tenant's shard's input stream."""
    for tenant, payload in entries:
        stream = settings.for_shard(shard_of(tenant, settings.shards)).input_stream
        client.xadd(stream, {"tenant": tenant, "event": json.dumps(payload)})


def run_replicas(settings: list[Settings]) -> list[Fleet]:
    """Each replica's fleet drained in its own thread, as separate pods would run."""
    log = structlog.get_logger("test")
    fleets = [Fleet.build(s, Metrics(), log) for s in settings]
    threads = [threading.Thread(target=f.run, kwargs={"drain": True}) for f in fleets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    return fleets


def emitted(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    out = []
    for shard in range(settings.shards):
        for _, fields in client.xrange(settings.for_shard(shard).output_stream):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def alias_maps(client: redis.Redis, settings: Settings) -> dict[str, dict[bytes, bytes]]:
    maps = {}
    for tenant in TENANTS:
        own = settings.for_shard(shard_of(tenant, settings.shards))
        maps[tenant] = client.hgetall(own.alias_prefix + tenant)
    return maps


def test_two_replicas_over_eight_shards_emit_each_event_once_and_match_one_shard(
    sharded_redis: redis.Redis, redis_server: RedisServer
) -> None:
    client, entries = sharded_redis, workload()
    settings = sharded(redis_server.url)
    produce(client, settings, entries)
    fleets = run_replicas([settings, sharded(redis_server.url, consumer="replica-2")])
    out = emitted(client, settings)
    seqs = [json.loads(e["event"])["seq"] for e in out]  # entry ids repeat across streams
    assert len(seqs) == len(set(seqs)) == len(entries) // 2  # events; identifies not
    assert sum(f.summary().get("emitted", 0) for f in fleets) == len(out)
    used = {shard_of(t, SHARDS) for t in TENANTS}
    assert len(used) > 4, "20 tenants should spread over most of the 8 shards"
    resolved = {json.loads(e["event"])["seq"]: e["resolved_user_id"] for e in out}
    maps = alias_maps(client, settings)

    client.flushall()
    single = sharded(redis_server.url, shards=1)
    apply_acl_users(client)
    produce(client, single, entries)
    Worker(single, connect(single), Metrics(), structlog.get_logger("test")).run(drain=True)
    single_out = emitted(client, single)
    assert {json.loads(e["event"])["seq"]: e["resolved_user_id"] for e in single_out} == resolved
    assert alias_maps(client, single) == maps
    assert all(maps.values())
    apply_acl_users(client, Settings(shards=SHARDS, consumer="acl"))


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Fleet]:
    """A fleet serving until the block ends, re-reading the override table every 50 ms."""
    fleet = Fleet.build(settings, Metrics(), structlog.get_logger("test"))
    fleet.refresh_s = 0.05
    thread = threading.Thread(target=fleet.run)
    thread.start()
    try:
        yield fleet
    finally:
        fleet.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def test_a_tenant_on_the_wrong_shard_is_dead_lettered_and_an_override_change_is_followed(
    sharded_redis: redis.Redis, redis_server: RedisServer
) -> None:
    client, settings = sharded_redis, sharded(redis_server.url)
    hashed = shard_of("newco", SHARDS)
    placed = (hashed + 1) % SHARDS
    client.hset(OVERRIDES_KEY, "newco", str(placed))
    on_hashed, on_placed = settings.for_shard(hashed), settings.for_shard(placed)
    body = json.dumps(event("u1", seq="1"))
    with running(settings) as fleet:
        client.xadd(on_placed.input_stream, {"tenant": "newco", "event": body})
        client.xadd(on_hashed.input_stream, {"tenant": "newco", "event": body})
        eventually(lambda: client.xlen(on_placed.output_stream) == 1)
        eventually(lambda: client.xlen(on_hashed.dead_stream) == 1)
        dead = client.xrange(on_hashed.dead_stream)[0][1]
        assert dead[b"error_code"] == b"wrong_shard"
        assert dead[b"error"].decode() == (
            f"wrong_shard: tenant 'newco' belongs to shard {placed}: write its events to "
            f"{on_placed.input_stream}"
        )
        client.hdel(OVERRIDES_KEY, "newco")  # back to its hashed shard
        eventually(lambda: fleet.overrides.table == {})
        time.sleep(0.1)  # a turn of each worker: the tenant checks are dropped
        client.xadd(on_hashed.input_stream, {"tenant": "newco", "event": body})
        eventually(lambda: client.xlen(on_hashed.output_stream) == 1)
        assert fleet.summary()["dead:wrong_shard"] == 1


@pytest.fixture
def admin_cli(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``main()`` in-process as stitch-admin with STITCH_SHARDS=8; main() points structlog
    at the captured stderr, so its defaults come back afterwards."""
    monkeypatch.setenv("STITCH_REDIS_URL", redis_server.admin_url)
    monkeypatch.setenv("STITCH_SHARDS", str(SHARDS))
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("admin_cli")
def test_the_route_command_prints_each_tenants_shard_and_keys_and_places_new_tenants(
    sharded_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["route", "--tenant", "acme", "--tenant", "globex", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {t: route(t, SHARDS).as_dict() for t in ("acme", "globex")}
    assert printed["acme"]["alias_key"] == "alias:{s6.11}:acme"

    assert main(["route", "set", "--tenant", "acme", "--shard", "1"]) == 0
    assert sharded_redis.hgetall(OVERRIDES_KEY) == {b"acme": b"1"}
    assert capsys.readouterr().out == "tenant 'acme': shard 6 -> 1\n"
    assert main(["route", "--tenant", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["acme"]["input_stream"] == "events:{s1.3}"

    on_one = Settings(consumer="c", shards=SHARDS).for_shard(1)
    sharded_redis.xadd(on_one.input_stream, {"tenant": "acme", "event": "{}"})
    assert main(["route", "set", "--tenant", "acme", "--shard", "2"]) == 2
    assert "has entries waiting on events:{s1.3} on shard 1" in capsys.readouterr().err
    sharded_redis.delete(on_one.input_stream)
    sharded_redis.hset(on_one.alias_prefix + "acme", "a", "b")
    assert main(["route", "set", "--tenant", "acme", "--shard", "2"]) == 2
    err = capsys.readouterr().err
    assert "has an alias hash (alias:{s1.3}:acme) on shard 1" in err
    assert "Moving one tenant" in err
    assert sharded_redis.hgetall(OVERRIDES_KEY) == {b"acme": b"1"}
    assert main(["route", "set", "--tenant", "acme", "--shard", "8"]) == 2


def test_tenant_commands_and_status_find_a_sharded_tenant(
    sharded_redis: redis.Redis,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
    admin_cli: None,
) -> None:
    settings = sharded(redis_server.url)
    produce(sharded_redis, settings, [("acme", identify("user", "anon")), ("acme", event("anon"))])
    sharded_redis.xadd(settings.for_shard(0).input_stream, {"tenant": "acme", "event": "{}"})
    run_replicas([settings])
    capsys.readouterr()  # the workers' logs
    assert main(["resolve", "--tenant", "acme", "anon"]) == 0
    assert capsys.readouterr().out == "anon\tuser\n"
    assert main(["dead-letters", "list", "--json"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["error_code"] for line in out.out.splitlines()] == ["wrong_shard"]
    assert out.err.count("== shard ") == SHARDS
    assert main(["status", "--json"]) == 0
    readings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [reading["shard"] for reading in readings] == list(range(SHARDS))
    assert main(["status", "--watch", "1"]) == 2
    assert "status --watch reads one shard" in capsys.readouterr().err


def test_the_daemon_runs_every_shard_and_one_sigterm_stops_them_all(
    sharded_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = sharded(redis_server.url)
    entries = workload()[:80]
    produce(sharded_redis, settings, entries)
    log = tmp_path / "worker.log"
    with running_worker(redis_server.url, log_path=log, shards=SHARDS, block_ms=100) as proc:
        eventually(lambda: len(emitted(sharded_redis, settings)) == len(entries) // 2, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stopped = sorted(line["shard"] for line in lines if line["event"] == "stopped")
    assert stopped == list(range(SHARDS))
