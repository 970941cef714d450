"""Pending-list faults on a real Redis: poison entries, entries deleted while pending,
idle consumers, and bounded output streams."""

from __future__ import annotations

import time

import pytest
import redis

from tests.fault_tools import GROUP, add_many, consumers, output_sources
from tests.helpers import DEAD, INPUT, OUTPUT, add, drain, event, make_worker, metric, output

pytestmark = pytest.mark.redis_server


def _delivered(client: redis.Redis, entry_id: str) -> int:
    [row] = client.xpending_range(INPUT, GROUP, entry_id, entry_id, 1)
    return int(row["times_delivered"])


def _redeliver(client: redis.Redis, consumer: str, entry_id: str, before: str, times: int) -> None:
    """Deliver ``entry_id`` (pending on ``consumer``) again ``times`` times by re-reading it from
    the consumer's own pending list with XREADGROUP, starting just after ``before``."""
    for _ in range(times):
        reply = client.xreadgroup(GROUP, consumer, {INPUT: before}, count=1)
        assert reply[0][1][0][0].decode() == entry_id


def test_poison_entry_is_dead_lettered_while_its_neighbours_flow(real_redis: redis.Redis) -> None:
    """An entry delivered more than STITCH_MAX_DELIVERIES times is dead-lettered (code
    max_deliveries_exceeded, payload kept) and acked, while its neighbours, including one
    delivered exactly the limit, are emitted once each."""
    c, limit = real_redis, 3
    c.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    n1 = add(c, "acme", event("n1"))
    poison = add(c, "acme", event("poison"))
    n2 = add(c, "acme", event("n2"))
    n3 = add(c, "acme", event("n3"))
    c.xreadgroup(GROUP, "ghost", {INPUT: ">"}, count=4)  # a consumer that then "crashes"
    _redeliver(c, "ghost", poison, n1, limit - 1)  # the reclaim will be delivery limit + 1
    _redeliver(c, "ghost", n2, poison, limit - 2)  # the reclaim will be delivery == limit
    assert (_delivered(c, poison), _delivered(c, n2), _delivered(c, n3)) == (limit, limit - 1, 1)
    time.sleep(0.2)  # idle past STITCH_CLAIM_IDLE_MS
    later = [add(c, "acme", event(f"later-{i}")) for i in range(3)]

    worker = drain(c, consumer="rescuer", claim_idle_ms=100, max_deliveries=limit)

    [dead] = output(c, DEAD)
    assert dead["error_code"] == "max_deliveries_exceeded"
    assert dead["source_id"] == poison
    assert dead["error"].startswith("max_deliveries_exceeded: delivered 4 times, limit 3")
    assert dead["tenant"] == "acme" and '"poison"' in dead["event"]
    assert output_sources(c) == dict.fromkeys([n1, n2, n3, *later], 1)
    assert c.xpending(INPUT, GROUP)["pending"] == 0
    assert worker.totals["dead:max_deliveries_exceeded"] == 1
    assert worker.totals["reclaimed"] == 4


def test_poison_entry_claimed_twice_is_dead_lettered_once(real_redis: redis.Redis) -> None:
    """The dead letter is written in the same atomic step as the ack: when two replicas hold
    the same over-delivered entry, only the one whose XACK succeeds writes a dead letter."""
    c, limit = real_redis, 2
    c.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    poison = add(c, "acme", event("poison"))
    c.xreadgroup(GROUP, "ghost", {INPUT: ">"}, count=1)
    _redeliver(c, "ghost", poison, "0", limit)
    first = make_worker(c, consumer="first", max_deliveries=limit)
    second = make_worker(c, consumer="second", max_deliveries=limit)
    for w in (first, second):
        w.startup()

    _, held_by_first, _ = first.stream.autoclaim(0, b"0-0", 10)
    counts_first = first.stream.delivery_counts(held_by_first)
    _, held_by_second, _ = second.stream.autoclaim(0, b"0-0", 10)  # a racing reclaim
    counts_second = second.stream.delivery_counts(held_by_second)
    assert counts_first[poison.encode()] > limit and counts_second[poison.encode()] > limit
    first.recovery.process(held_by_first, counts=counts_first)
    second.recovery.process(held_by_second, counts=counts_second)

    assert [d["source_id"] for d in output(c, DEAD)] == [poison]
    assert output(c) == []
    assert c.xpending(INPUT, GROUP)["pending"] == 0
    assert first.totals["dead:max_deliveries_exceeded"] == 1
    assert second.totals["duplicates"] == 1
    assert second.totals["dead:max_deliveries_exceeded"] == 0


@pytest.mark.parametrize("path", ["own_pending_after_restart", "reclaimed_from_crashed_consumer"])
def test_entries_deleted_while_pending_are_acked_and_counted(
    real_redis: redis.Redis, path: str
) -> None:
    """Pending entries removed by XDEL or XTRIM are acked (or dropped by XAUTOCLAIM), counted as
    deleted_pending, emit nothing and never stay in the PEL; the survivors are emitted once."""
    c = real_redis
    c.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    ids = [add(c, "acme", event(f"u{i}")) for i in range(10)]
    own = path == "own_pending_after_restart"
    holder = "worker-1" if own else "crashed"
    c.xreadgroup(GROUP, holder, {INPUT: ">"}, count=10)
    c.xdel(INPUT, ids[5], ids[7])
    c.xtrim(INPUT, minid=ids[3], approximate=False)  # trims ids[0..2]
    deleted = {ids[0], ids[1], ids[2], ids[5], ids[7]}
    assert c.xlen(INPUT) == 5
    assert c.xpending(INPUT, GROUP)["pending"] == 10
    if not own:
        time.sleep(0.2)

    worker = drain(
        c, consumer="worker-1" if own else "rescuer", claim_idle_ms=600_000 if own else 100
    )

    assert c.xpending(INPUT, GROUP)["pending"] == 0
    assert all(n == 0 for n in consumers(c).values())
    assert worker.totals["deleted_pending"] == len(deleted)
    assert metric(worker, "stitch_deleted_pending_total") == len(deleted)
    assert output_sources(c) == {i: 1 for i in ids if i not in deleted}
    assert c.xlen(DEAD) == 0


def test_entries_deleted_while_in_hand_are_acked_and_accounted(real_redis: redis.Redis) -> None:
    """Entries deleted after the worker read them but before its commit are acked, never left
    in the PEL, and each one is accounted for exactly once: emitted or counted as deleted."""
    c = real_redis
    ids = [add(c, "acme", event(f"u{i}")) for i in range(10)]
    worker = make_worker(c, consumer="worker-1")
    worker.startup()
    in_hand = worker.stream.read(10, None)
    assert [e[0].decode() for e in in_hand] == ids
    c.xdel(INPUT, ids[2], ids[6])
    c.xtrim(INPUT, minid=ids[1], approximate=False)  # trims ids[0]

    worker.recovery.process(in_hand)

    assert c.xpending(INPUT, GROUP)["pending"] == 0
    survivors = [i for n, i in enumerate(ids) if n not in (0, 2, 6)]
    emitted = output_sources(c)
    assert set(survivors) <= set(emitted) and all(n == 1 for n in emitted.values())
    assert worker.totals["emitted"] == len(emitted)
    assert worker.totals["emitted"] + worker.totals["deleted_pending"] == len(ids), dict(
        worker.totals
    )


def test_idle_consumers_without_pending_are_removed(real_redis: redis.Redis) -> None:
    """Consumers idle longer than STITCH_CONSUMER_IDLE_MS with nothing pending are deleted from
    the group; an idle consumer with pending entries and a recently active one are kept."""
    c = real_redis
    c.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    for i in range(3):
        add(c, "acme", event(f"u{i}"))
    c.xreadgroup(GROUP, "busy", {INPUT: ">"}, count=3)
    for name in ("idle-1", "idle-2"):
        c.xgroup_createconsumer(INPUT, GROUP, name)
    time.sleep(1.7)
    c.xgroup_createconsumer(INPUT, GROUP, "recent")

    worker = drain(c, consumer="janitor", consumer_idle_ms=1500, claim_idle_ms=600_000)

    assert consumers(c) == {"busy": 3, "recent": 0, "janitor": 0}
    assert c.xpending(INPUT, GROUP)["pending"] == 3  # DELCONSUMER would have dropped these
    assert metric(worker, "stitch_consumers_removed_total") == 2


def test_output_and_dead_letter_streams_stay_bounded(real_redis: redis.Redis) -> None:
    """XADD to the output and dead-letter streams trims them to about STITCH_OUTPUT_MAXLEN and
    STITCH_DEAD_MAXLEN, keeping the newest entries, while every entry is still emitted."""
    c = real_redis
    rows = []
    for i in range(5000):
        rows.append(("acme", event(f"u{i % 200}")))
    ids = add_many(c, rows)
    bad = [c.xadd(INPUT, {"tenant": "acme", "event": "not json"}).decode() for _ in range(1000)]

    worker = drain(c, output_maxlen=100, dead_maxlen=50, batch_size=200)

    assert worker.totals["emitted"] == 5000
    assert worker.totals["dead:event_not_json"] == 1000
    kept = [fields[b"source_id"].decode() for _, fields in c.xrange(OUTPUT)]
    assert 100 <= len(kept) <= 300, len(kept)
    assert kept == ids[-len(kept) :]  # the oldest were trimmed, the newest kept, in order
    dead = [fields[b"source_id"].decode() for _, fields in c.xrange(DEAD)]
    assert 50 <= len(dead) <= 250, len(dead)
    assert dead == bad[-len(dead) :]


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "restarted"])
def test_rereads_during_an_outage_are_not_deliveries(
    real_redis: redis.Redis, restarted: bool
) -> None:
    """Every attempt of an outage re-reads the worker's own pending entries, and Redis counts
    each re-read as a delivery: those this process made itself do not count towards
    STITCH_MAX_DELIVERIES (the entry is emitted once the outage ends, as after a slot
    migration's TRYAGAIN/ASK retries), while a restarted process counts them all (a crash
    loop still ends in a dead letter)."""
    c, limit = real_redis, 2
    worker = make_worker(c, consumer="w", max_deliveries=limit)
    worker.startup()
    entry = add(c, "acme", event("anon-1"))
    c.xreadgroup(GROUP, "w", {INPUT: ">"}, count=1)
    c.set("alias:acme", "not a hash")  # every commit refused (WRONGTYPE): an outage
    for _ in range(limit + 2):
        with pytest.raises(redis.ResponseError):
            worker.recovery.own_pending()
    assert _delivered(c, entry) == limit + 3
    c.delete("alias:acme")
    if restarted:
        worker = make_worker(c, consumer="w", max_deliveries=limit)
        worker.startup()
    worker.recovery.own_pending()
    assert c.xpending(INPUT, GROUP)["pending"] == 0
    if restarted:
        assert [d["error_code"] for d in output(c, DEAD)] == ["max_deliveries_exceeded"]
        assert output(c) == []
    else:
        assert output_sources(c) == {entry: 1} and c.xlen(DEAD) == 0
