"""The core contract on a real Redis: enrichment, identify, chains, stream order, dead letters."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from resolver import Resolver
from tests.helpers import (
    DEAD,
    add,
    drain,
    event,
    identify,
    make_worker,
    metric,
    output,
    resolved_by_source,
)
from worker.committer import MAX_STALE_RETRIES, Committed, Committer, Stale
from worker.planner import Plan, Planner
from worker.wire import PipelinedConnection, pack


def test_event_gets_resolved_id_and_source_id_and_keeps_its_fields(client: redis.Redis) -> None:
    """An event is emitted with every input field unchanged plus resolved_user_id and source_id."""
    source = add(client, "acme", event("anon-1"), domain="commerce", extra="kept")
    drain(client)
    [out] = output(client)
    assert out["tenant"] == "acme" and out["domain"] == "commerce" and out["extra"] == "kept"
    assert out["resolved_user_id"] == "anon-1"
    assert out["source_id"] == source


def test_identify_links_and_is_not_forwarded(client: redis.Redis) -> None:
    """identify writes alias:<tenant> previous -> user and is only acked, not emitted."""
    add(client, "acme", identify("real-x", "anon-a"))
    drain(client)
    assert client.hgetall("alias:acme") == {b"anon-a": b"real-x"}
    assert output(client) == []
    assert client.xpending("events", "stitch")["pending"] == 0


def test_identify_forwarded_when_configured(client: redis.Redis) -> None:
    """With forward_identify the identify is emitted too, resolved through its own link."""
    add(client, "acme", identify("real-x", "anon-a"))
    drain(client, forward_identify=True)
    [out] = output(client)
    assert out["resolved_user_id"] == "real-x"


def test_chain_resolution_walks_to_the_end(client: redis.Redis) -> None:
    """anon_a -> real_x -> real_y: events of every id on the chain resolve to real_y."""
    add(client, "acme", identify("real-x", "anon-a"))
    add(client, "acme", identify("real-y", "real-x"))
    ids = [add(client, "acme", event(u)) for u in ("anon-a", "real-x", "real-y")]
    drain(client)
    assert [resolved_by_source(client)[i] for i in ids] == ["real-y"] * 3


def test_stream_order_within_one_batch(client: redis.Redis) -> None:
    """An identify applies to later events of the same batch, not to earlier ones."""
    before = add(client, "acme", event("anon-a"))
    add(client, "acme", identify("real-x", "anon-a"))
    after = add(client, "acme", event("anon-a"))
    drain(client)
    resolved = resolved_by_source(client)
    assert resolved[before] == "anon-a"
    assert resolved[after] == "real-x"


def test_tenants_are_separate(client: redis.Redis) -> None:
    """A link in one tenant never changes resolution in another."""
    add(client, "acme", identify("real-x", "anon-a"))
    other = add(client, "globex", event("anon-a"))
    drain(client)
    assert resolved_by_source(client)[other] == "anon-a"


@pytest.mark.parametrize(
    ("links", "expected_map", "outcome"),
    [
        ([("a", "a")], {}, "noop"),
        ([("a", "x"), ("a", "x")], {"a": "x"}, "noop"),
        ([("a", "x"), ("a", "y")], {"a": "x"}, "conflict"),
        ([("a", "x"), ("x", "a")], {"a": "x"}, "cycle"),
        ([("a", "x"), ("x", "y"), ("y", "a")], {"a": "x", "x": "y"}, "cycle"),
        ([("null", "x")], {}, "placeholder"),
        ([("a", "'undefined'")], {}, "placeholder"),
        ([("a", "  ")], {}, "placeholder"),
        ([("a", "Anonymous")], {}, "placeholder"),
    ],
)
def test_link_rules(
    client: redis.Redis,
    links: list[tuple[str, str]],
    expected_map: dict[str, str],
    outcome: str,
) -> None:
    """The map stays a forest; each refusal is counted by outcome, never dead-lettered."""
    for prev, user in links:
        add(client, "acme", identify(user, prev))
    worker = drain(client)
    stored = {k.decode(): v.decode() for k, v in client.hgetall("alias:acme").items()}
    assert stored == expected_map
    assert worker.totals[f"identify:{outcome}"] >= 1
    assert client.xlen(DEAD) == 0


def test_extra_placeholders_are_configurable(client: redis.Redis) -> None:
    """STITCH_EXTRA_PLACEHOLDERS adds ids (case-insensitively) to the refused list."""
    add(client, "acme", identify("real-x", "VOID"))
    worker = drain(client, extra_placeholders="void,abc123")
    assert client.hlen("alias:acme") == 0
    assert worker.totals["identify:placeholder"] == 1


def test_existing_cycle_resolves_deterministically(client: redis.Redis) -> None:
    """A cycle written by someone else never loops: every member resolves to the same id."""
    client.hset("alias:acme", mapping={"p": "q", "q": "r", "r": "p"})
    ids = [add(client, "acme", event(u)) for u in ("p", "q", "r")]
    worker = drain(client)
    resolved = resolved_by_source(client)
    assert {resolved[i] for i in ids} == {"p"}
    assert metric(worker, "stitch_resolver_cycles_total") == 3


@pytest.mark.parametrize("maxlen", [0, 3])
def test_output_stream_trimming_setting(client: redis.Redis, maxlen: int) -> None:
    """STITCH_OUTPUT_MAXLEN 0 keeps every event; a bound trims the oldest (approximately)."""
    for i in range(1500):
        add(client, "acme", event(f"u{i % 10}"), domain="commerce")
    worker = drain(client, output_maxlen=maxlen, batch_size=100)
    assert worker.totals["emitted"] == 1500
    if maxlen == 0:
        assert client.xlen("events:enriched") == 1500
    else:
        assert client.xlen("events:enriched") < 1500


def test_refused_link_is_logged_with_its_entry_id(client: redis.Redis) -> None:
    """A conflict is logged at info with the entry id, and without any user id."""
    from structlog.testing import capture_logs

    add(client, "acme", identify("real-x", "anon-a"))
    conflicting = add(client, "acme", identify("real-y", "anon-a"))
    with capture_logs() as logs:
        drain(client)
    [refused] = [line for line in logs if line["event"] == "link refused"]
    assert refused == {
        "event": "link refused",
        "outcome": "conflict",
        "entry_id": conflicting,
        "log_level": "info",
    }


def test_batch_queued_behind_a_stale_commit_is_planned_again(client: redis.Redis) -> None:
    """The queued batch assumed the sent batch's link; once that link is refused, the queued
    event must resolve through what Redis holds, not through the refused link."""
    add(client, "acme", identify("x", "anon-a"))
    event_id = add(client, "acme", event("anon-a"))
    worker = make_worker(client, batch_size=1)
    worker.startup()
    for uid in ("anon-a", "x"):
        worker.cache.put("acme", uid, uid)  # both believed unlinked...
    client.hset("alias:acme", "anon-a", "z")  # ...but another replica linked it
    worker.loop(drain=True)
    assert resolved_by_source(client) == {event_id: "z"}
    assert worker.totals["identify:conflict"] == 1
    assert metric(worker, "stitch_stale_commits_total") == 1


def test_stop_requested_while_the_pipeline_loses_its_connection(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link drops with a commit in flight and SIGTERM already requested: the worker
    stops cleanly, and what it held stays pending for the next start to finish."""
    ids = [add(client, "acme", event(f"user-{i}")) for i in range(10)]
    worker = make_worker(client, batch_size=2, consumer="stopper")
    worker.startup()
    replies = 0
    real_reply = PipelinedConnection.reply

    def dropping_reply(channel: PipelinedConnection) -> Any:
        nonlocal replies
        replies += 1
        if replies == 4:  # the read sent with the first commit, after the second was sent
            worker.request_stop()
            channel.reset()
            raise redis.ConnectionError("Connection reset by peer")
        return real_reply(channel)

    monkeypatch.setattr(PipelinedConnection, "reply", dropping_reply)
    worker.loop()  # returns instead of raising
    monkeypatch.undo()
    assert replies == 4
    drain(client, batch_size=2, consumer="stopper")
    assert sorted(resolved_by_source(client)) == sorted(ids)
    assert len(output(client)) == len(ids)


def test_batch_left_pending_after_stale_retries_keeps_stream_order(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that stays stale through every retry is left pending; the batches pipelined
    behind it wait for its recovery instead of overtaking it."""
    ids = [add(client, "acme", event(f"user-{i}")) for i in range(8)]
    worker = make_worker(client, batch_size=2)
    real_plan, real_verdict, real_commit = Planner.plan, Committer.verdict, Committer.commit
    faults = {"plan": 1, "verdict": 1, "commit": MAX_STALE_RETRIES}

    def first_commit_writes_nothing(self: Planner, *args: Any) -> Plan:
        plan = real_plan(self, *args)
        if faults["plan"]:
            faults["plan"] -= 1
            return dataclasses.replace(plan, packed=pack(["PING"]))
        return plan

    def stale_once(self: Committer, *args: Any) -> Committed | Stale:
        if faults["verdict"]:  # ...and is answered as stale
            faults["verdict"] -= 1
            return Stale([])
        return real_verdict(self, *args)

    def stale_through_every_retry(self: Committer, plan: Plan) -> Committed | Stale:
        if faults["commit"]:
            faults["commit"] -= 1
            return Stale([])
        return real_commit(self, plan)

    monkeypatch.setattr(Planner, "plan", first_commit_writes_nothing)
    monkeypatch.setattr(Committer, "verdict", stale_once)
    monkeypatch.setattr(Committer, "commit", stale_through_every_retry)
    worker.run(drain=True)
    assert faults == {"plan": 0, "verdict": 0, "commit": 0}
    assert [e["source_id"] for e in output(client)] == ids
    assert metric(worker, "stitch_stale_commits_total") == 1 + MAX_STALE_RETRIES


def test_every_histogram_is_observed_by_a_drain(client: redis.Redis) -> None:
    """Each histogram the worker exports (batch duration, end-to-end delay, chain depth) is fed
    by an ordinary run: no panel or alert reads a series that nothing observes."""
    add(client, "acme", identify("real-x", "anon-a"))
    add(client, "acme", event("anon-a"))
    worker = drain(client)
    histograms = [
        family.name for family in worker.metrics.registry.collect() if family.type == "histogram"
    ]
    assert sorted(histograms) == [
        "stitch_batch_duration_seconds",
        "stitch_chain_depth",
        "stitch_end_to_end_delay_seconds",
    ]
    counts = {name: metric(worker, name + "_count") for name in histograms}
    assert all(count is not None and count > 0 for count in counts.values()), counts


def test_building_a_worker_asks_redis_nothing() -> None:
    """Constructors do no I/O: a worker (and its scrape-time collector) can be built while
    Redis is unreachable; only startup() connects."""
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)
    worker = make_worker(unreachable)
    with pytest.raises(redis.ConnectionError):
        worker.reconnection.connect()


def test_non_utf8_ids_written_by_another_program_are_followed(client: redis.Redis) -> None:
    """A chain through an id that is not UTF-8 resolves byte for byte, in the worker (every
    batch, however warm its cache) and in the library, instead of crashing either."""
    odd = b"\xff\xfeodd"
    client.hset("alias:acme", mapping={b"anon-a": odd, odd: b"real-z"})
    first = add(client, "acme", event("anon-a"))
    worker = drain(client)
    second = add(client, "acme", event("anon-a"))
    worker.run(drain=True)
    assert resolved_by_source(client) == {first: "real-z", second: "real-z"}
    library = Resolver(client)
    assert library.resolve_many("acme", ["anon-a", "anon-a"]) == ["real-z", "real-z"]
    assert library.chain("acme", "anon-a") == [
        "anon-a",
        odd.decode("utf-8", "surrogateescape"),
        "real-z",
    ]
