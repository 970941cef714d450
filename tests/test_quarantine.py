"""Merge protection (issue 12): a shared user_id cannot swallow thousands of shoppers. Links
past the size cap are held in the tenant's quarantine, every event still emitted; operators
list, approve (re-checking every other rule) and reject them as ``stitch-admin``."""

from __future__ import annotations

import json

import redis

from resolver.feed import ChangeOp, read_changes
from tests.helpers import (
    DEAD,
    INPUT,
    OUTPUT,
    add,
    drain,
    event,
    identify,
    make_worker,
    metric,
    output,
)
from tests.redis_proc import RedisServer
from tests.test_removals import KEY, admin, links

SHOPPERS = 3_000


def held(client: redis.Redis, tenant: str = "acme") -> dict[str, str]:
    raw = client.hgetall(f"alias:{tenant}:quarantine")
    return {k.decode(): v.decode().split(" ")[0] for k, v in raw.items()}


def feed_ops(client: redis.Redis, op: ChangeOp) -> list[tuple[str, str, str]]:
    return [
        (c.previous_user_id, c.user_id, c.source_id)
        for c in read_changes(client, "alias:changes")
        if c.op is op
    ]


def test_a_blob_stops_at_the_cap_and_an_approved_link_joins_it(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """3,000 anonymous ids identify into one user_id, cap 1000: the component ends at exactly
    1000 ids (999 links and the root), the other 2,001 links are held (one feed entry each,
    nothing dead-lettered), every event is emitted; approving one held link makes it 1001
    and that id's later events resolve to the shared id, also on a warm worker."""
    sources, events = {}, {}
    for k in range(SHOPPERS):
        sources[f"anon-{k}"] = add(real_redis, "acme", identify("demo", f"anon-{k}"))
        events[f"anon-{k}"] = add(real_redis, "acme", event(f"anon-{k}"))
    warm = make_worker(real_redis, max_links_per_root_per_hour=0)  # the size rule alone
    warm.run(drain=True)
    assert real_redis.hget("alias:acme:sizes", "demo") == b"1000"
    assert len(links(real_redis)) == 999
    quarantined = held(real_redis)
    assert len(quarantined) == SHOPPERS - 999 and set(quarantined.values()) == {"demo"}
    assert set(quarantined) | set(links(real_redis)) == set(sources)
    assert metric(warm, "stitch_identify_total", outcome="quarantined") == SHOPPERS - 999
    resolved = {e["source_id"]: e["resolved_user_id"] for e in output(real_redis)}
    assert len(resolved) == SHOPPERS  # every event, once
    for anon, source in events.items():
        assert resolved[source] == (anon if anon in quarantined else "demo")
    assert real_redis.xlen(DEAD) == 0
    fed = feed_ops(real_redis, ChangeOp.QUARANTINE)
    assert sorted(fed) == sorted((a, "demo", sources[a]) for a in quarantined)

    approved = sorted(quarantined)[0]
    code, _, err = admin(redis_server, "quarantine", "approve", "--tenant", "acme", approved)
    assert code == 0, err
    assert real_redis.hget("alias:acme:sizes", "demo") == b"1001"
    assert links(real_redis)[approved] == "demo" and approved not in held(real_redis)
    [(prev, user, op_id)] = feed_ops(real_redis, ChangeOp.APPROVE)
    assert (prev, user) == (approved, "demo")
    assert real_redis.hget("alias:acme:provenance", approved).decode().startswith(op_id + " ")
    later = add(real_redis, "acme", event(approved))
    other = sorted(held(real_redis))[0]
    still_held = add(real_redis, "acme", event(other))
    warm.run(drain=True)  # its cache holds `approved` as a root: the script follows the link
    resolved = {e["source_id"]: e["resolved_user_id"] for e in output(real_redis)}
    assert (resolved[later], resolved[still_held]) == ("demo", other)


def test_list_reject_block_and_an_approve_another_rule_now_refuses(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """A tenant capped at 2 by set-limit: list shows both held links with their source ids;
    reject --block drops one and refuses it for good (feed: reject, block); approving a link
    whose id has linked elsewhere since is refused (conflict) and the link stays held."""
    code, _, err = admin(
        redis_server, "quarantine", "set-limit", "--tenant", "acme", "--max-component-size", "2"
    )
    assert code == 0, err
    ids = [add(real_redis, "acme", identify("u", prev)) for prev in ("a", "b", "c")]
    drain(real_redis)
    assert links(real_redis) == {"a": "u"} and held(real_redis) == {"b": "u", "c": "u"}
    code, out, err = admin(redis_server, "quarantine", "list", "--tenant", "acme", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["previous_user_id"], r["user_id"], r["source_id"], r["reason"]) for r in rows} == {
        ("b", "u", ids[1], "size"),
        ("c", "u", ids[2], "size"),
    }
    code, _, err = admin(redis_server, "quarantine", "reject", "--tenant", "acme", "c", "--block")
    assert code == 0, err
    assert held(real_redis) == {"b": "u"}
    assert [op for op in (ChangeOp.REJECT, ChangeOp.BLOCK) if feed_ops(real_redis, op)] == [
        ChangeOp.REJECT,
        ChangeOp.BLOCK,
    ]
    add(real_redis, "acme", identify("u", "c"))  # blocked now, not held again
    add(real_redis, "acme", identify("x", "b"))  # b links elsewhere (a component of 2)
    worker = drain(real_redis)
    assert metric(worker, "stitch_identify_total", outcome="blocked") == 1
    code, out, err = admin(redis_server, "explain", "--tenant", "acme", "b", "--json")
    assert code == 0, err
    assert json.loads(out)["held"] == {
        "previous_user_id": "b",
        "user_id": "u",
        "source_id": ids[1],
        "held_at_ms": next(r["held_at_ms"] for r in rows if r["previous_user_id"] == "b"),
        "reason": "size",
    }
    assert links(real_redis) == {"a": "u", "b": "x"} and held(real_redis) == {"b": "u"}
    code, out, _ = admin(redis_server, "quarantine", "approve", "--tenant", "acme", "b")
    assert code == 1 and "conflict" in out
    assert held(real_redis) == {"b": "u"}
    code, out, _ = admin(redis_server, "quarantine", "approve", "--tenant", "acme", "nobody")
    assert code == 1 and "nothing held" in out


SHARED = "shared-9f3c@example.com"
FEED_AND_STREAMS = {b"alias:changes", INPUT.encode(), OUTPUT.encode(), DEAD.encode()}


def holding(client: redis.Redis, uid: str) -> list[bytes]:
    """Every key but the change feed and the event streams (README: they keep ids until
    trimmed) whose dump holds uid's bytes."""
    keys = set(client.keys("*")) - FEED_AND_STREAMS
    return sorted(k for k in keys if uid.encode() in (client.dump(k) or b""))


def test_forget_leaves_no_byte_of_the_id_in_holds_or_anywhere_else(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Forgetting the user_id of held links drops those holds too (their previous_user_id
    is not erased, their target is), with the link, the refusal naming it, a block naming
    it and its sizes; forgetting an id whose only trace is its own hold (no link) erases it
    as well, and so does forgetting one whose only trace is a block."""
    code, _, err = admin(
        redis_server, "quarantine", "set-limit", "--tenant", "acme", "--max-component-size", "2"
    )
    assert code == 0, err
    for prev in ("a", "b", "anon-held-77", "null"):
        add(real_redis, "acme", identify(SHARED, prev))
    drain(real_redis, tombstone_key=KEY)
    assert set(held(real_redis)) == {"b", "anon-held-77"} and holding(real_redis, SHARED)
    code, _, err = admin(redis_server, "quarantine", "reject", "--tenant", "acme", "b", "--block")
    assert code == 0, err  # a block names both ids: b and SHARED
    code, _, err = admin(
        redis_server, "forget", "--tenant", "acme", SHARED, STITCH_TOMBSTONE_KEY=KEY
    )
    assert code == 0, err
    assert holding(real_redis, SHARED) == [] and held(real_redis) == {}
    add(real_redis, "acme", identify("other", "c"))  # reaches the cap of 2
    add(real_redis, "acme", identify("other", "anon-held-77"))  # held: its only trace
    drain(real_redis, tombstone_key=KEY)
    assert held(real_redis) == {"anon-held-77": "other"}
    code, out, err = admin(
        redis_server,
        "forget",
        "--tenant",
        "acme",
        "anon-held-77",
        "--json",
        STITCH_TOMBSTONE_KEY=KEY,
    )
    assert code == 0 and json.loads(out)["tombstones"] == 1, err
    assert holding(real_redis, "anon-held-77") == [] and held(real_redis) == {}
    add(real_redis, "acme", identify("x-target", "x-prev"))
    drain(real_redis, tombstone_key=KEY)
    for args in (["unlink", "x-prev", "--block"], ["forget", "x-prev", "--json"]):
        code, out, err = admin(redis_server, *args, "--tenant", "acme", STITCH_TOMBSTONE_KEY=KEY)
        assert code == 0, err
    assert json.loads(out)["tombstones"] == 1 and holding(real_redis, "x-prev") == []


def test_forget_erases_the_rate_window_and_the_tallies_of_its_holds(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """A root's rate window names it ('>' + root in the protection hash): forget erases it,
    and the holds forget drops leave the gauges' tallies."""
    code, _, err = admin(
        redis_server, "quarantine", "set-limit", "--tenant", "acme", "--max-links-per-hour", "2"
    )
    assert code == 0, err
    for prev in ("a", "b", "c", "d"):
        add(real_redis, "acme", identify(SHARED, prev))
    drain(real_redis, tombstone_key=KEY)
    protection = "alias:acme:protection"
    assert set(held(real_redis)) == {"c", "d"}
    assert real_redis.hget(protection, "held:rate") == b"2"
    assert real_redis.hexists(protection, ">" + SHARED)
    code, _, err = admin(
        redis_server, "forget", "--tenant", "acme", SHARED, STITCH_TOMBSTONE_KEY=KEY
    )
    assert code == 0, err
    assert holding(real_redis, SHARED) == [] and held(real_redis) == {}
    assert real_redis.hget(protection, "held:rate") == b"0"
