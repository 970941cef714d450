"""Correcting and erasing identities (issue 11): unlink, block and forget through the command
line as ``stitch-admin``, the change feed's entries, heights that stay upper bounds, warm
replicas that never serve a removed link, and replays that re-create nothing."""

from __future__ import annotations

import itertools
import json

import redis

from resolver.feed import ChangeOp, read_changes
from resolver.heights import LINKS_FIELD
from tests.helpers import add, drain, event, identify, make_worker, metric, resolved_by_source
from tests.redis_proc import RedisServer
from tests.test_cli import cli

KEY = "test-tombstone-key"
CHAIN = [("anon-1", "cust-1"), ("cust-1", "cust-9"), ("anon-2", "cust-1"), ("x", "y")]


def seed(client: redis.Redis, tenant: str = "acme") -> list[str]:
    """CHAIN's identifies (anon-1 -> cust-1 -> cust-9 <- ... ; x -> y); returns their ids."""
    return [add(client, tenant, identify(user, prev)) for prev, user in CHAIN]


def admin(server: RedisServer, *args: str, **env: str) -> tuple[int, str, str]:
    done = cli(*args, env={"STITCH_REDIS_URL": server.admin_url, **env})
    return done.returncode, done.stdout, done.stderr


def links(client: redis.Redis, tenant: str = "acme") -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(f"alias:{tenant}").items()}


def test_unlink_removes_one_link_lists_its_subtree_and_writes_the_feed(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """unlink cust-1 changes cust-1, anon-1 and anon-2 (its subtree), removes that link with
    its provenance and index entry, appends one `unlink` feed entry with the reason; heights
    keep accounting for every link and bound cust-1's new tree; a second unlink is a no-op."""
    seed(real_redis)
    drain(real_redis)
    code, out, err = admin(
        redis_server, "unlink", "--tenant", "acme", "cust-1", "--reason", "QA", "--json"
    )
    assert code == 0, err
    done = json.loads(out)
    assert done["removed_links"] == 1 and done["tombstones"] == 0
    assert sorted(done["affected_ids"]) == ["anon-1", "anon-2", "cust-1"]
    assert links(real_redis) == {"anon-1": "cust-1", "anon-2": "cust-1", "x": "y"}
    assert not real_redis.hexists("alias:acme:provenance", "cust-1")
    assert real_redis.zcard("alias:acme:children") == 3
    heights = real_redis.hgetall("alias:acme:heights")
    assert int(heights[b"cust-1"]) >= 1  # its true height: never below it
    assert int(heights[LINKS_FIELD.encode()]) == real_redis.hlen("alias:acme")
    unlinks = [c for c in read_changes(real_redis, "alias:changes") if c.op is ChangeOp.UNLINK]
    assert [(c.previous_user_id, c.user_id, c.root, c.source_id) for c in unlinks] == [
        ("cust-1", "cust-9", "cust-1", done["op_id"])
    ]
    again = admin(redis_server, "unlink", "--tenant", "acme", "cust-1", "--json")
    assert again[0] == 0 and json.loads(again[1])["removed_links"] == 0
    unknown = admin(redis_server, "unlink", "--tenant", "nobody", "cust-1")
    assert unknown[0] == 0 and "nothing to do" in unknown[1]


def test_dry_run_lists_and_changes_nothing(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Dry runs print what the real operation then changes, and write nothing."""
    seed(real_redis)
    drain(real_redis)
    before = links(real_redis)
    code, out, _ = admin(redis_server, "unlink", "--tenant", "acme", "cust-1", "--dry-run")
    assert code == 0 and "would remove cust-1 -> cust-9" in out
    assert sorted(out.split()[-3:]) == ["anon-1", "anon-2", "cust-1"]
    code, out, _ = admin(
        redis_server, "forget", "--tenant", "acme", "anon-2", "--dry-run", "--json"
    )
    assert code == 0
    assert sorted(json.loads(out)["affected_ids"]) == ["anon-1", "anon-2", "cust-1", "cust-9"]
    assert links(real_redis) == before
    assert real_redis.xlen("alias:changes") == len(CHAIN)  # the links only


def test_replay_after_block_and_forget_recreates_no_link(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """After unlink --block and forget, replaying the original identifies links nothing:
    outcomes blocked and forgotten; later events of an erased id are dropped and counted."""
    seed(real_redis)
    drain(real_redis, tombstone_key=KEY)
    assert admin(redis_server, "unlink", "--tenant", "acme", "x", "--block")[0] == 0
    code, out, err = admin(
        redis_server, "forget", "--tenant", "acme", "anon-1", "--json", STITCH_TOMBSTONE_KEY=KEY
    )
    assert code == 0, err
    done = json.loads(out)
    assert done["removed_links"] == 3 and done["tombstones"] == 4
    assert "affected_ids" not in done and "anon" not in out and "cust" not in out
    assert links(real_redis) == {}
    assert real_redis.hlen("alias:acme:provenance") == 0
    assert real_redis.zcard("alias:acme:children") == 0
    raw = b"".join(k + v for k, v in real_redis.hgetall("alias:acme:removals").items())
    assert b"anon-1" not in raw and b"cust-9" not in raw
    seed(real_redis)
    add(real_redis, "acme", event("cust-9"))
    add(real_redis, "acme", event("y"))
    worker = drain(real_redis, tombstone_key=KEY)
    assert links(real_redis) == {}
    assert worker.totals["identify:forgotten"] == 3
    assert worker.totals["identify:blocked"] == 1
    assert metric(worker, "stitch_forgotten_events_total") == 1
    assert list(resolved_by_source(real_redis).values()) == ["y"]


def test_forget_needs_the_tombstone_key(real_redis: redis.Redis, redis_server: RedisServer) -> None:
    """forget without STITCH_TOMBSTONE_KEY exits 2 naming it and writes nothing; a worker
    without it refuses a tenant that has tombstones (exit 2), leaving its entries pending."""
    seed(real_redis)
    drain(real_redis)
    code, _, err = admin(redis_server, "forget", "--tenant", "acme", "anon-1")
    assert code == 2 and "STITCH_TOMBSTONE_KEY" in err
    assert len(links(real_redis)) == 4
    assert admin(redis_server, "forget", "--tenant", "acme", "x", STITCH_TOMBSTONE_KEY=KEY)[0] == 0
    add(real_redis, "acme", event("anon-1"))
    done = cli(
        "run", "--drain", env={"STITCH_REDIS_URL": redis_server.url, "STITCH_METRICS_PORT": "0"}
    )
    assert done.returncode == 2 and "STITCH_TOMBSTONE_KEY" in done.stderr


def test_pass_mode_emits_forgotten_events_resolved_to_themselves(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """STITCH_FORGOTTEN_EVENTS=pass: an erased id's event is emitted with resolved_user_id =
    user_id."""
    seed(real_redis)
    drain(real_redis)
    assert (
        admin(redis_server, "forget", "--tenant", "acme", "anon-1", STITCH_TOMBSTONE_KEY=KEY)[0]
        == 0
    )
    source = add(real_redis, "acme", event("anon-1"))
    drain(real_redis, tombstone_key=KEY, forgotten_events="pass")
    assert resolved_by_source(real_redis)[source] == "anon-1"


def test_warm_replicas_never_serve_a_removed_link(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Three replicas (each its own group, so each reads everything) warm their caches on
    chains of depth 1-5; after unlink and forget return, every event they read resolves
    without the removed links: 0 stale, however warm the cache."""
    chains = {d: [f"c{d}-{k}" for k in range(d + 1)] for d in range(1, 6)}
    for ids in chains.values():
        for prev, user in itertools.pairwise(ids):
            add(real_redis, "acme", identify(user, prev))
    for ids in chains.values():
        for uid in ids:
            add(real_redis, "acme", event(uid))
    replicas = [make_worker(real_redis, group=f"g{k}", tombstone_key=KEY) for k in range(3)]
    for replica in replicas:
        replica.run(drain=True)
        assert len(replica.cache) > 0
    cut = real_redis.xadd("events", {"tenant": "acme", "event": json.dumps(event("marker"))})
    # unlink the middle of each chain of depth >= 2; forget the whole depth-1 chain
    for d in range(2, 6):
        assert admin(redis_server, "unlink", "--tenant", "acme", chains[d][1])[0] == 0
    assert (
        admin(redis_server, "forget", "--tenant", "acme", "c1-0", STITCH_TOMBSTONE_KEY=KEY)[0] == 0
    )
    expected: dict[str, str | None] = {"c1-0": None, "c1-1": None}
    for d in range(2, 6):
        ids = chains[d]
        expected |= {ids[0]: ids[1], ids[1]: ids[1]} | {uid: ids[-1] for uid in ids[2:]}
    sources = {add(real_redis, "acme", event(uid)): uid for uid in expected}
    for replica in replicas:
        replica.run(drain=True)
    stale = 0
    emitted = 0
    for _, fields in real_redis.xrange("events:enriched", "(" + cut.decode(), "+"):
        source = fields[b"source_id"].decode()
        if source not in sources:
            continue
        emitted += 1
        want = expected[sources[source]]
        stale += want is None or fields[b"resolved_user_id"].decode() != want
    assert (stale, emitted) == (0, 3 * (len(expected) - 2))
