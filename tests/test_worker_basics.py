"""The core contract on a real Redis: enrichment, identify, chains, stream order, dead letters."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.helpers import (
    DEAD,
    add,
    drain,
    event,
    identify,
    make_worker,
    output,
    resolved_by_source,
)
from worker import Worker
from worker.committer import Committed, Committer, Stale
from worker.errors import StaleCommitError
from worker.planner import Plan
from worker.wire import PipelinedConnection, pack

pytestmark = pytest.mark.redis_server


def test_event_gets_resolved_id_and_source_id_and_keeps_its_fields(real_redis: redis.Redis) -> None:
    """An event is emitted with every input field unchanged plus resolved_user_id and source_id."""
    source = add(real_redis, "acme", event("anon-1"), domain="commerce", extra="kept")
    drain(real_redis)
    [out] = output(real_redis)
    assert out["tenant"] == "acme" and out["domain"] == "commerce" and out["extra"] == "kept"
    assert out["resolved_user_id"] == "anon-1"
    assert out["source_id"] == source


def test_identify_links_and_is_not_forwarded(real_redis: redis.Redis) -> None:
    """identify writes alias:<tenant> previous -> user and is only acked, not emitted."""
    add(real_redis, "acme", identify("real-x", "anon-a"))
    drain(real_redis)
    assert real_redis.hgetall("alias:acme") == {b"anon-a": b"real-x"}
    assert output(real_redis) == []
    assert real_redis.xpending("events", "stitch")["pending"] == 0


def test_identify_forwarded_when_configured(real_redis: redis.Redis) -> None:
    """With forward_identify the identify is emitted too, resolved through its own link."""
    add(real_redis, "acme", identify("real-x", "anon-a"))
    drain(real_redis, forward_identify=True)
    [out] = output(real_redis)
    assert out["resolved_user_id"] == "real-x"


def test_chain_resolution_walks_to_the_end(real_redis: redis.Redis) -> None:
    """anon_a -> real_x -> real_y: events of every id on the chain resolve to real_y."""
    add(real_redis, "acme", identify("real-x", "anon-a"))
    add(real_redis, "acme", identify("real-y", "real-x"))
    ids = [add(real_redis, "acme", event(u)) for u in ("anon-a", "real-x", "real-y")]
    drain(real_redis)
    assert [resolved_by_source(real_redis)[i] for i in ids] == ["real-y"] * 3


def test_stream_order_within_one_batch(real_redis: redis.Redis) -> None:
    """An identify applies to later events of the same batch, not to earlier ones."""
    before = add(real_redis, "acme", event("anon-a"))
    add(real_redis, "acme", identify("real-x", "anon-a"))
    after = add(real_redis, "acme", event("anon-a"))
    drain(real_redis)
    resolved = resolved_by_source(real_redis)
    assert resolved[before] == "anon-a"
    assert resolved[after] == "real-x"


def test_tenants_are_separate(real_redis: redis.Redis) -> None:
    """A link in one tenant never changes resolution in another."""
    add(real_redis, "acme", identify("real-x", "anon-a"))
    other = add(real_redis, "globex", event("anon-a"))
    drain(real_redis)
    assert resolved_by_source(real_redis)[other] == "anon-a"


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
    real_redis: redis.Redis,
    links: list[tuple[str, str]],
    expected_map: dict[str, str],
    outcome: str,
) -> None:
    """The map stays a forest; each refusal is counted by outcome, never dead-lettered."""
    for prev, user in links:
        add(real_redis, "acme", identify(user, prev))
    worker = drain(real_redis)
    stored = {k.decode(): v.decode() for k, v in real_redis.hgetall("alias:acme").items()}
    assert stored == expected_map
    assert worker.totals[f"identify:{outcome}"] >= 1
    assert real_redis.xlen(DEAD) == 0


def test_extra_placeholders_are_configurable(real_redis: redis.Redis) -> None:
    """STITCH_EXTRA_PLACEHOLDERS adds ids (case-insensitively) to the refused list."""
    add(real_redis, "acme", identify("real-x", "VOID"))
    worker = drain(real_redis, extra_placeholders="void,abc123")
    assert real_redis.hlen("alias:acme") == 0
    assert worker.totals["identify:placeholder"] == 1


def test_existing_cycle_resolves_deterministically(real_redis: redis.Redis) -> None:
    """A cycle written by someone else never loops: every member resolves to the same id."""
    real_redis.hset("alias:acme", mapping={"p": "q", "q": "r", "r": "p"})
    ids = [add(real_redis, "acme", event(u)) for u in ("p", "q", "r")]
    worker = drain(real_redis)
    resolved = resolved_by_source(real_redis)
    assert {resolved[i] for i in ids} == {"p"}
    assert worker.metrics.resolver_cycles._value.get() == 3


@pytest.mark.parametrize("maxlen", [0, 3])
def test_output_stream_trimming_setting(real_redis: redis.Redis, maxlen: int) -> None:
    """STITCH_OUTPUT_MAXLEN 0 keeps every event; a bound trims the oldest (approximately)."""
    for i in range(1500):
        add(real_redis, "acme", event(f"u{i % 10}"), domain="commerce")
    worker = drain(real_redis, output_maxlen=maxlen, batch_size=100)
    assert worker.totals["emitted"] == 1500
    if maxlen == 0:
        assert real_redis.xlen("events:enriched") == 1500
    else:
        assert real_redis.xlen("events:enriched") < 1500


def test_refused_link_is_logged_with_its_entry_id(real_redis: redis.Redis) -> None:
    """A conflict is logged at info with the entry id, and without any user id."""
    from structlog.testing import capture_logs

    add(real_redis, "acme", identify("real-x", "anon-a"))
    conflicting = add(real_redis, "acme", identify("real-y", "anon-a"))
    with capture_logs() as logs:
        drain(real_redis)
    [refused] = [line for line in logs if line["event"] == "link refused"]
    assert refused == {
        "event": "link refused",
        "outcome": "conflict",
        "entry_id": conflicting,
        "log_level": "info",
    }


def test_batch_queued_behind_a_stale_commit_is_planned_again(real_redis: redis.Redis) -> None:
    """The queued batch assumed the sent batch's link; once that link is refused, the queued
    event must resolve through what Redis holds, not through the refused link."""
    add(real_redis, "acme", identify("x", "anon-a"))
    event_id = add(real_redis, "acme", event("anon-a"))
    worker = make_worker(real_redis, batch_size=1)
    worker.startup()
    for uid in ("anon-a", "x"):
        worker.resolver.cache.put("acme", uid, uid)  # both believed unlinked...
    real_redis.hset("alias:acme", "anon-a", "z")  # ...but another replica linked it
    worker.loop(drain=True)
    assert resolved_by_source(real_redis) == {event_id: "z"}
    assert worker.totals["identify:conflict"] == 1
    assert worker.metrics.stale_commits._value.get() == 1


def test_stop_requested_while_the_pipeline_loses_its_connection(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link drops with a commit in flight and SIGTERM already requested: the worker
    stops cleanly, and what it held stays pending for the next start to finish."""
    ids = [add(real_redis, "acme", event(f"user-{i}")) for i in range(10)]
    worker = make_worker(real_redis, batch_size=2, consumer="stopper")
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
    drain(real_redis, batch_size=2, consumer="stopper")
    assert sorted(resolved_by_source(real_redis)) == sorted(ids)
    assert len(output(real_redis)) == len(ids)


def test_batch_left_pending_after_stale_retries_keeps_stream_order(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that stays stale through every retry is left pending; the batches pipelined
    behind it wait for its recovery instead of overtaking it."""
    ids = [add(real_redis, "acme", event(f"user-{i}")) for i in range(8)]
    real_pack, real_verdict = Committer.pack, Committer.verdict
    real_retries = Worker._commit_with_retries
    faults = {"pack": 1, "verdict": 1, "retries": 1}

    def first_commit_refused(self: Committer, plan: Plan) -> Plan:
        if faults["pack"]:  # the first commit writes nothing and is answered as stale
            faults["pack"] -= 1
            plan.packed = pack(["PING"])
            return plan
        return real_pack(self, plan)

    def stale_once(self: Committer, *args: Any) -> Committed | Stale:
        if faults["verdict"]:
            faults["verdict"] -= 1
            return Stale([])
        return real_verdict(self, *args)

    def exhausted_once(self: Worker, entries: list[Any]) -> tuple[Any, Committed]:
        if faults["retries"]:
            faults["retries"] -= 1
            raise StaleCommitError("stayed stale")
        return real_retries(self, entries)

    monkeypatch.setattr(Committer, "pack", first_commit_refused)
    monkeypatch.setattr(Committer, "verdict", stale_once)
    monkeypatch.setattr(Worker, "_commit_with_retries", exhausted_once)
    worker = make_worker(real_redis, batch_size=2)  # after the patches: it binds its methods
    worker.run(drain=True)
    assert faults == {"pack": 0, "verdict": 0, "retries": 0}
    assert [e["source_id"] for e in output(real_redis)] == ids
