"""``lehnz-stitch audit`` (issue 12): existing links that break the current rules are listed
without a change, held in the quarantine with ``--apply`` (as unlink removes them, with
feed entries and a generation bump), found no more on a re-run, and reviewed as any hold."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import redis

from resolver import Resolver
from resolver.auditing import Finding, Reason, component_findings, hold
from resolver.feed import ChangeOp, fold, read_changes
from tests.helpers import add, drain, event, identify, make_worker, resolved_by_source
from tests.redis_proc import RedisServer
from tests.test_quarantine import held
from tests.test_removals import KEY, admin, links
from tests.test_script_atomicity import _snapshot
from worker.ops.quarantining import CONSUMER

ENV = {"STITCH_TOMBSTONE_KEY": KEY, "STITCH_EXTRA_PLACEHOLDERS": "qa-user"}
SHOPPERS = [f"anon-{k}" for k in range(5)]
EXPECTED = {
    ("tester", "qa-user", "audit:placeholder"),
    ("x", "y", "audit:blocked"),
    ("w", "z", "audit:forgotten"),
    ("a1", "a2", "audit:too_deep"),
    ("anon-3", "demo", "audit:size"),
    ("anon-4", "demo", "audit:size"),
}


def seed(client: redis.Redis, server: RedisServer) -> None:
    """Links each later rule breaks: one into an id that became a placeholder, one re-written
    by another program after `unlink --block`, one into an erased id, a chain of 3 (the audit
    runs with a cap of 2) and a component of 6 ids (the tenant's cap then set to 4)."""
    pairs = [("tester", "qa-user"), ("x", "y"), ("z", "z-real"), ("a1", "a2"), ("a2", "a3")]
    pairs += [("a3", "a4")] + [(anon, "demo") for anon in SHOPPERS]
    for prev, user in pairs:
        add(client, "acme", identify(user, prev))
    drain(client)
    for args in (["unlink", "x", "--block"], ["forget", "z"]):
        code, _, err = admin(server, *args, "--tenant", "acme", STITCH_TOMBSTONE_KEY=KEY)
        assert code == 0, err
    client.hset("alias:acme", mapping={"x": "y", "w": "z"})  # another program's writes
    code, _, err = admin(
        server, "quarantine", "set-limit", "--tenant", "acme", "--max-component-size", "4"
    )
    assert code == 0, err


def audit(server: RedisServer, *args: str) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    code, out, err = admin(
        server, "audit", "--tenant", "acme", "--json", "--max-chain-depth", "2", *args, **ENV
    )
    assert code in (0, 1), err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["kind"] for line in lines[:-1]] == ["link"] * (len(lines) - 1)
    return code, lines[:-1], lines[-1]


def found(rows: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(r["previous_user_id"], r["user_id"], r["reason"]) for r in rows}


def test_audit_lists_each_rule_and_changes_nothing(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Without --apply: exit 1, one row per link breaking a rule (the two newest links of
    the over-cap component), and every key dumps the same before and after."""
    seed(real_redis, redis_server)
    before = _snapshot(real_redis)
    code, rows, summary = audit(redis_server)
    assert code == 1
    assert found(rows) == EXPECTED and {r["status"] for r in rows} == {"found"}
    assert summary["found"] == len(EXPECTED) and summary["applied"] is False
    assert summary["by_reason"]["audit:size"] == 2
    code, _, err = admin(redis_server, "audit", "--tenant", "acme")  # no STITCH_TOMBSTONE_KEY
    assert code == 2 and "STITCH_TOMBSTONE_KEY" in err
    assert _snapshot(real_redis) == before


def test_apply_holds_them_as_unlink_would_and_a_rerun_finds_nothing(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """--apply: every finding held with its rule as reason, its link gone (the component
    at the cap, sizes exact), an unlink and a quarantine feed entry each, so a fold of the
    feed is the map; a warm worker resolves the held ids to themselves; a re-run finds
    nothing and exits 0."""
    seed(real_redis, redis_server)
    ids = {e: add(real_redis, "acme", event(e)) for e in ("anon-4", "anon-0")}
    warm = make_worker(real_redis, tombstone_key=KEY)
    warm.run(drain=True)
    generation = int(real_redis.hget("alias:acme:removals", ""))
    code, rows, summary = audit(redis_server, "--apply")
    assert code == 0 and found(rows) == EXPECTED
    assert {r["status"] for r in rows} == {"held"} and summary["by_status"] == {"held": 6}
    holds = {
        k.decode(): v.decode().split(" ")
        for k, v in real_redis.hgetall("alias:acme:quarantine").items()
    }
    assert {(p, h[0], h[3]) for p, h in holds.items()} == EXPECTED
    tallies = real_redis.hgetall("alias:acme:protection")
    assert Counter(h[3] for h in holds.values()) == {
        k.decode().removeprefix("held:"): int(v)
        for k, v in tallies.items()
        if k.startswith(b"held:") and int(v)
    }
    assert not {p for p, _, _ in EXPECTED} & set(links(real_redis))
    assert real_redis.hget("alias:acme:sizes", "demo") == b"4"
    # bumped once per script that held links: the map's one page and the two components
    assert int(real_redis.hget("alias:acme:removals", "")) == generation + 3
    changes = list(read_changes(real_redis, "alias:changes"))
    audited = [(c.op, c.previous_user_id) for c in changes if c.source_id == summary["op_id"]]
    assert sorted(audited) == sorted(
        (op, prev) for prev, _, _ in EXPECTED for op in (ChangeOp.UNLINK, ChangeOp.QUARANTINE)
    )
    folded = fold(changes)["acme"]
    del folded["z"]  # erased by forget, whose entry names no id
    assert folded == links(real_redis)
    later = {e: add(real_redis, "acme", event(e)) for e in ("anon-4", "anon-0")}
    warm.run(drain=True)
    resolved = resolved_by_source(real_redis)
    assert [resolved[ids["anon-4"]], resolved[later["anon-4"]]] == ["demo", "anon-4"]
    assert resolved[later["anon-0"]] == "demo"
    before = _snapshot(real_redis)
    for again in (("--apply",), ()):
        code, rows, summary = audit(redis_server, *again)
        assert (code, rows, summary["found"]) == (0, [], 0)
    assert _snapshot(real_redis) == before


def test_audit_holds_are_approved_and_rejected_as_any_hold(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """Approving an audit:size hold applies it over the cap and later audits keep it; an
    audit:placeholder or audit:blocked hold cannot be approved (the rule still refuses it)
    and is rejected."""
    seed(real_redis, redis_server)
    audit(redis_server, "--apply")
    code, out, err = admin(
        redis_server, "quarantine", "approve", "--tenant", "acme", "anon-3", **ENV
    )
    assert code == 0, err
    assert (
        links(real_redis)["anon-3"] == "demo"
        and real_redis.hget("alias:acme:sizes", "demo") == b"5"
    )
    for prev, rule in (("tester", "placeholder"), ("x", "blocked"), ("w", "forgotten")):
        code, out, _ = admin(redis_server, "quarantine", "approve", "--tenant", "acme", prev, **ENV)
        assert code == 1 and rule in out, out
        code, _, err = admin(redis_server, "quarantine", "reject", "--tenant", "acme", prev, **ENV)
        assert code == 0, err
    assert set(held(real_redis)) == {"a1", "anon-4"}
    code, rows, _ = audit(redis_server)
    assert (code, rows) == (0, [])


def linked(client: redis.Redis, pairs: list[tuple[str, str]]) -> Resolver:
    resolver = Resolver(client, changes_key="alias:changes")
    for prev, user in pairs:
        assert resolver.link("acme", prev, user) == "applied"
    return resolver


def page(client: redis.Redis, findings: list[Finding]) -> list[str]:
    return hold(
        client,
        "alias:acme",
        "acme",
        findings,
        op_id="op-1",
        changes_key="alias:changes",
        changes_maxlen=0,
        max_depth=32,
        tombstone_key=None,
    )


def test_a_page_checks_each_link_again_before_holding_it(client: redis.Redis) -> None:
    """In the script, a link linked elsewhere meanwhile is 'changed', one that no longer
    breaks its rule 'kept', one whose previous_user_id is held already 'already_held' (the
    first hold stands); the others are held with their provenance's source id, and the
    component's size follows."""
    linked(client, [("a", "r"), ("b", "r"), ("c", "r"), ("d", "r")])
    client.hset("alias:acme:quarantine", "d", "elsewhere 1-0 1700000000000 size")
    source = client.hget("alias:acme:provenance", "a").split(b" ")[0]
    statuses = page(
        client,
        [
            Finding(b"a", b"r", Reason.PLACEHOLDER),
            Finding(b"b", b"other", Reason.PLACEHOLDER),
            Finding(b"c", b"r", Reason.BLOCKED),
            Finding(b"d", b"r", Reason.SIZE),
        ],
    )
    assert statuses == ["held", "changed", "kept", "already_held"]
    assert links(client) == {"b": "r", "c": "r", "d": "r"}
    assert held(client) == {"a": "r", "d": "elsewhere"}
    assert client.hget("alias:acme:quarantine", "a").split(b" ")[1] == source
    assert client.hget("alias:acme:sizes", "r") == b"4"


def test_the_size_rule_replays_links_in_provenance_order(client: redis.Redis) -> None:
    """Cap 3: a link without provenance counts as oldest, an approved link is always kept,
    and each other link is held when the parts it joins would exceed the cap then: here the
    link into an id that had joined (p3 -> p2) and the newest (p1)."""
    linked(client, [("p1", "r"), ("p2", "r"), ("p3", "p2"), ("p4", "r"), ("p5", "r")])
    client.hset(
        "alias:acme:provenance",
        mapping={
            "p1": "s1 5 worker-1",
            "p2": "s2 1 worker-1",
            "p3": "s3 2 worker-2",
            "p5": f"s5 3 {CONSUMER}",
        },
    )
    client.hdel("alias:acme:provenance", "p4")
    client.hset("alias:acme:sizes", "", 3)
    [findings] = component_findings(
        client, "alias:acme", max_depth=32, default_cap=1000, approved_by=CONSUMER, skip=set()
    )
    assert {(f.previous_user_id, f.reason) for f in findings} == {
        (b"p3", Reason.SIZE),
        (b"p1", Reason.SIZE),
    }
