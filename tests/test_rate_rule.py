"""The rate rule (issue 12): more than STITCH_MAX_LINKS_PER_ROOT_PER_HOUR new links into one
root within an hour are held like the size cap's (reason ``rate``), by the worker, the library
and import alike; the hour is a sliding estimate over two fixed windows per root, on Redis's
clock; the holds and the largest component show in scrape-time gauges."""

from __future__ import annotations

import time

import pytest
import redis

from resolver import LinkOutcome, Resolver
from tests.helpers import add, drain, event, identify, make_worker, metric, output, settings
from tests.redis_proc import RedisServer
from tests.test_removals import admin, links
from worker.ops.import_rows import Row
from worker.ops.importing import Importer

pytestmark = pytest.mark.redis_server

HOUR_MS = 3_600_000
PROTECTION = "alias:acme:protection"


def held(client: redis.Redis) -> dict[str, str]:
    """previous_user_id -> reason of every held link."""
    raw = client.hgetall("alias:acme:quarantine")
    return {k.decode(): v.decode().rsplit(" ", 1)[1] for k, v in raw.items()}


def window(client: redis.Redis, root: str) -> tuple[int, int, int] | None:
    raw = client.hget(PROTECTION, ">" + root)
    if raw is None:
        return None
    start, count, previous = map(int, raw.decode().split(" "))
    return start, count, previous


def seed_window(client: redis.Redis, root: str, age_ms: int, count: int, previous: int) -> None:
    """root's window as if it had started age_ms ago (tests move the window, not the clock)."""
    start = int(time.time() * 1000) - age_ms
    client.hset(PROTECTION, ">" + root, f"{start} {count} {previous}")


def test_the_worker_holds_links_past_the_rate_and_the_gauges_show_them(
    real_redis: redis.Redis,
) -> None:
    """Limit 3: of five anonymous ids identifying into one user, three link and two are held
    (reason rate, a feed entry each), every event still resolves (held ids to themselves);
    the gauges read the tallies: 2 held for rate, 0 for size, largest component 4."""
    sources = [add(real_redis, "acme", identify("u", f"anon-{k}")) for k in range(5)]
    events = [add(real_redis, "acme", event(f"anon-{k}")) for k in range(5)]
    worker = drain(real_redis, max_links_per_root_per_hour=3)
    assert links(real_redis) == {f"anon-{k}": "u" for k in range(3)}
    assert held(real_redis) == {"anon-3": "rate", "anon-4": "rate"}
    fed = [f for _, f in real_redis.xrange("alias:changes") if f[b"op"] == b"quarantine"]
    assert [(f[b"source_id"].decode(), f[b"reason"]) for f in fed] == [
        (sources[3], b"rate"),
        (sources[4], b"rate"),
    ]
    resolved = {e["source_id"]: e["resolved_user_id"] for e in output(real_redis)}
    assert [resolved[s] for s in events] == ["u", "u", "u", "anon-3", "anon-4"]
    assert metric(worker, "stitch_identify_total", outcome="quarantined") == 2
    assert metric(worker, "stitch_quarantine_links", tenant="acme", reason="rate") == 2
    assert metric(worker, "stitch_quarantine_links", tenant="acme", reason="size") == 0
    assert metric(worker, "stitch_largest_component", tenant="acme") == 4
    assert window(real_redis, "u") is not None and window(real_redis, "u")[1:] == (3, 0)  # type: ignore[index]


def test_the_hour_slides_over_two_windows(real_redis: redis.Redis) -> None:
    """Limit 3 through the library, roots that have a link: a full window an hour and a
    minute old still weighs 59/60 of its links (2 of 3), so one more link applies and the next
    is held; two hours old it weighs nothing; a window that starts in the future (a clock set
    back) keeps counting."""
    library = Resolver(real_redis, max_links_per_root_per_hour=3)
    for root in ("u", "v", "w"):
        assert library.link("acme", root + "-0", root) is LinkOutcome.APPLIED
        assert window(real_redis, root) is None  # a root's first link: nothing to count yet
    seed_window(real_redis, "u", HOUR_MS + 60_000, 3, 0)
    assert library.link("acme", "a", "u") is LinkOutcome.APPLIED
    start, count, previous = window(real_redis, "u")  # type: ignore[misc]
    assert (count, previous) == (1, 3) and abs(start - (time.time() * 1000 - 60_000)) < 5_000
    assert library.link("acme", "b", "u") is LinkOutcome.QUARANTINED
    seed_window(real_redis, "v", 2 * HOUR_MS + 1, 3, 3)
    assert [library.link("acme", p, "v") for p in ("c", "d", "e", "f")] == [
        LinkOutcome.APPLIED,
        LinkOutcome.APPLIED,
        LinkOutcome.APPLIED,
        LinkOutcome.QUARANTINED,
    ]
    seed_window(real_redis, "w", -60_000, 2, 0)
    assert library.link("acme", "g", "w") is LinkOutcome.APPLIED
    assert library.link("acme", "h", "w") is LinkOutcome.QUARANTINED
    assert held(real_redis) == {"b": "rate", "f": "rate", "h": "rate"}


def test_first_links_count_a_root_that_gains_a_parent_drops_its_window_sizes_go_first(
    real_redis: redis.Redis,
) -> None:
    """A root's first link writes no window; its second counts both. A root linked under
    another loses its window (it is no longer a root); a link both rules would hold is held
    for its size."""
    library = Resolver(real_redis, max_links_per_root_per_hour=2, max_component_size=6)
    assert library.link("acme", "a", "r") is LinkOutcome.APPLIED
    assert window(real_redis, "r") is None
    assert library.link("acme", "b", "r") is LinkOutcome.APPLIED
    assert window(real_redis, "r")[1:] == (2, 0)  # type: ignore[index]
    assert library.link("acme", "c", "r") is LinkOutcome.QUARANTINED
    assert library.link("acme", "r", "s") is LinkOutcome.APPLIED
    assert window(real_redis, "r") is None
    assert library.link("acme", "d", "s") is LinkOutcome.APPLIED
    assert library.link("acme", "e", "s") is LinkOutcome.QUARANTINED
    library.link("acme", "x", "y")
    assert library.link("acme", "y", "s") is LinkOutcome.QUARANTINED
    assert held(real_redis) == {"c": "rate", "e": "rate", "y": "size"}
    assert real_redis.hmget(PROTECTION, "held:size", "held:rate", "largest") == [b"1", b"2", b"5"]


def test_set_limit_approve_and_reject(real_redis: redis.Redis, redis_server: RedisServer) -> None:
    """set-limit --max-links-per-hour 1 wins over the default; approve overrides the rate
    (and lowers the tally), reject lowers it too; --max-links-per-hour 0 turns the rule off."""
    code, out, err = admin(
        redis_server, "quarantine", "set-limit", "--tenant", "acme", "--max-links-per-hour", "1"
    )
    assert code == 0 and "max links per root per hour 1" in out, err
    for prev in ("a", "b", "c"):
        add(real_redis, "acme", identify("u", prev))
    worker = drain(real_redis)
    assert links(real_redis) == {"a": "u"} and held(real_redis) == {"b": "rate", "c": "rate"}
    code, out, err = admin(redis_server, "quarantine", "list", "--tenant", "acme")
    assert code == 0 and "max links per root per hour 1" in out and "  rate  " in out, err
    assert admin(redis_server, "quarantine", "approve", "--tenant", "acme", "b")[0] == 0
    assert links(real_redis) == {"a": "u", "b": "u"}
    assert metric(worker, "stitch_quarantine_links", tenant="acme", reason="rate") == 1
    assert admin(redis_server, "quarantine", "reject", "--tenant", "acme", "c")[0] == 0
    assert metric(worker, "stitch_quarantine_links", tenant="acme", reason="rate") == 0
    code, _, err = admin(
        redis_server, "quarantine", "set-limit", "--tenant", "acme", "--max-links-per-hour", "0"
    )
    assert code == 0, err
    add(real_redis, "acme", identify("u", "d"))
    drain(real_redis)
    assert links(real_redis)["d"] == "u" and held(real_redis) == {}
    code, _, err = admin(redis_server, "quarantine", "set-limit", "--tenant", "acme")
    assert code == 2 and "--max-links-per-hour" in err


def test_import_holds_past_the_rate(real_redis: redis.Redis, redis_server: RedisServer) -> None:
    """An import applies the rate rule like the worker, within a chunk and across chunks, and
    a dry run predicts the same outcomes without writing."""
    rows = [Row(n, f"anon-{n}", "u", None) for n in range(1, 6)]
    chosen = settings(redis_url=redis_server.admin_url, max_links_per_root_per_hour=3)
    dry = Importer(real_redis, chosen, "acme", "t", dry_run=True)
    dry.start(chosen.max_chain_depth)
    predicted = dry.apply([rows[:2], rows[2:]])
    dry.close()
    assert links(real_redis) == {} and real_redis.exists(PROTECTION) == 0
    importer = Importer(real_redis, chosen, "acme", "t", dry_run=False)
    importer.start(chosen.max_chain_depth)
    outcomes = importer.apply([rows[:2], rows[2:]])
    assert (
        outcomes == predicted == [["applied", "applied"], ["applied", "quarantined", "quarantined"]]
    )
    assert held(real_redis) == {"anon-4": "rate", "anon-5": "rate"}
    assert real_redis.hget(PROTECTION, "held:rate") == b"2"


def test_a_remembered_rate_hold_applies_once_the_hour_has_passed(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """A warm worker that cached b and u as roots predicts b -> u applies; it is held for the
    rate (stale once), then remembered like a size hold; once u's window is two hours old the
    same identify applies: one more stale commit (the memory predicted a hold) drops the
    tenant's cached paths, the retry leaves the link to the script, nothing stays pending."""
    for prev in ("a", "c"):
        add(real_redis, "acme", identify("u", prev))
    add(real_redis, "acme", event("b"))
    add(real_redis, "acme", event("u"))
    worker = make_worker(real_redis, max_links_per_root_per_hour=2)
    worker.run(drain=True)
    add(real_redis, "acme", identify("u", "b"))
    worker.run(drain=True)
    assert held(real_redis) == {"b": "rate"}
    assert metric(worker, "stitch_stale_commits_total") == 1
    assert admin(redis_server, "quarantine", "reject", "--tenant", "acme", "b")[0] == 0
    seed_window(real_redis, "u", 2 * HOUR_MS + 1, 2, 0)
    add(real_redis, "acme", identify("u", "b"))
    worker.run(drain=True)
    assert links(real_redis) == {"a": "u", "b": "u", "c": "u"}
    assert metric(worker, "stitch_stale_commits_total") == 2
    assert real_redis.xpending("events", "stitch")["pending"] == 0


def test_scripts_refuse_a_protection_key_of_the_wrong_type_before_writing(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """approve and import read the protection hash before their first write: a key of the
    wrong type fails them with nothing changed."""
    add(real_redis, "acme", identify("u", "a"))
    add(real_redis, "acme", identify("u", "b"))
    drain(real_redis, max_links_per_root_per_hour=1)
    real_redis.delete(PROTECTION)
    real_redis.set(PROTECTION, "x")
    before = {key: real_redis.dump(key) for key in real_redis.keys("*")}
    code, _, err = admin(redis_server, "quarantine", "approve", "--tenant", "acme", "b")
    assert code != 0 and "WRONGTYPE" in err
    chosen = settings(redis_url=redis_server.admin_url)
    importer = Importer(real_redis, chosen, "acme", "t", dry_run=False)
    importer.start(chosen.max_chain_depth)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        importer.apply([[Row(1, "c", "u", None)]])
    assert {key: real_redis.dump(key) for key in real_redis.keys("*")} == before
