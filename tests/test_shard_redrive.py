"""``dead-letters redrive`` with STITCH_SHARDS=8 on a real Redis: a ``wrong_shard`` letter
goes to its tenant's shard's input stream, once, also when the command dies between adding
the copy there and deleting the letter here; letters of this shard's tenants stay here."""

from __future__ import annotations

import json

import pytest
import redis

from resolver.sharding import OVERRIDES_KEY, shard_of
from tests.helpers import event
from tests.redis_proc import RedisServer
from tests.test_sharded_worker import SHARDS, admin_cli, run_replicas, sharded, sharded_redis
from worker.cli import main
from worker.ops.shard_redrive import ShardRedrive, markers_key

__all__ = ["admin_cli", "sharded_redis"]  # fixtures used here

HASHED = shard_of("newco", SHARDS)
PLACED = (HASHED + 1) % SHARDS


def seqs(client: redis.Redis, stream: str) -> list[str]:
    return [json.loads(fields[b"event"])["seq"] for _, fields in client.xrange(stream)]


@pytest.mark.usefixtures("admin_cli")
def test_wrong_shard_letters_go_to_their_tenants_shard_once_across_a_crash(
    sharded_redis: redis.Redis,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, settings = sharded_redis, sharded(redis_server.url)
    client.hset(OVERRIDES_KEY, "newco", str(PLACED))
    on_hashed, on_placed = settings.for_shard(HASHED), settings.for_shard(PLACED)
    for n in range(5):  # a producer that did not follow the override
        body = json.dumps(event("u", seq=str(n)))
        client.xadd(on_hashed.input_stream, {"tenant": "newco", "event": body})
    client.xadd(on_hashed.input_stream, {"tenant": "bad tenant", "event": "{}"})
    run_replicas([settings])
    assert client.xlen(on_hashed.dead_stream) == 6

    def crash(*_: object) -> None:
        raise RuntimeError("killed between the copy and the XDEL")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError):
        patched.setattr(ShardRedrive, "_finish", crash)
        main(["dead-letters", "redrive", "--shard-subset", str(HASHED)])
    assert client.xlen(on_placed.input_stream) == 5  # copied, letters still here
    assert client.hlen(markers_key(on_placed)) == 5
    capsys.readouterr()

    assert main(["dead-letters", "redrive", "--shard-subset", str(HASHED)]) == 0
    out = capsys.readouterr()
    assert "finished 5 re-drives an interrupted run left" in out.err
    assert f"0 of them onto {on_placed.input_stream}" not in out.out
    assert seqs(client, on_placed.input_stream) == ["0", "1", "2", "3", "4"]
    assert not client.exists(markers_key(on_placed))
    assert [f[b"tenant"] for _, f in client.xrange(on_hashed.input_stream)][-1] == b"bad tenant"
    assert client.xlen(on_hashed.dead_stream) == 0  # the bad tenant's went back here

    assert main(["dead-letters", "redrive", "--code", "wrong_shard"]) == 0  # nothing left
    assert seqs(client, on_placed.input_stream) == ["0", "1", "2", "3", "4"]
    run_replicas([settings])
    assert seqs(client, on_placed.output_stream) == ["0", "1", "2", "3", "4"]
    assert client.xlen(on_hashed.dead_stream) == 1  # only the bad tenant, again
    assert client.xlen(on_placed.dead_stream) == 0


@pytest.mark.usefixtures("admin_cli")
def test_a_dry_run_names_the_target_shard_and_changes_nothing(
    sharded_redis: redis.Redis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client, settings = sharded_redis, sharded(redis_server.url)
    client.hset(OVERRIDES_KEY, "newco", str(PLACED))
    on_hashed, on_placed = settings.for_shard(HASHED), settings.for_shard(PLACED)
    client.xadd(on_hashed.input_stream, {"tenant": "newco", "event": json.dumps(event("u"))})
    run_replicas([settings])
    capsys.readouterr()
    assert main(["dead-letters", "redrive", "--dry-run", "--shard-subset", str(HASHED)]) == 0
    out = capsys.readouterr().out
    assert "would re-drive 1 of 1 matching dead letters" in out
    assert f"1 of them onto {on_placed.input_stream}, their tenant's shard now" in out
    assert client.xlen(on_hashed.dead_stream) == 1
    assert client.xlen(on_placed.input_stream) == 0
