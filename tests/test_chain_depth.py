"""The depth cap: no link makes a chain longer than STITCH_MAX_CHAIN_DEPTH, and every reader
answers with the true end of a chain, however deep a foreign map already is."""

from __future__ import annotations

import redis
import structlog
from structlog.testing import capture_logs

from resolver import DEFAULT_MAX_DEPTH, LinkOutcome, Resolver
from resolver.heights import Measured, measure, sync
from tests.helpers import add, event, identify, make_worker, resolved_by_source
from tests.redis_proc import RedisServer
from tests.test_cli import cli
from worker.measuring import measure_alias_maps

IDS = [f"id{n}" for n in range(41)]
PAGE_VIEW_LINKS = [(IDS[n], IDS[n + 1]) for n in range(40)]
"""The issue's client: a new user_id per page view, identified each time (id0 -> id1, ...)."""


def heights(client: redis.Redis, tenant: str = "t1") -> dict[str, int]:
    raw = client.hgetall(f"alias:{tenant}:heights")
    return {k.decode(): int(v) for k, v in raw.items()}


def test_forty_page_view_links_through_the_worker(real_redis: redis.Redis) -> None:
    """The issue's scenario at cap 32: the 33rd link is refused as too_deep, the rest apply,
    and the events of id0, id5 and id20 all resolve to the end of their chain, id32."""
    for prev, user in PAGE_VIEW_LINKS:
        add(real_redis, "t1", identify(user, prev))
    sources = {add(real_redis, "t1", event(uid)): uid for uid in ("id0", "id5", "id20")}
    worker = make_worker(real_redis, max_chain_depth=32, batch_size=7)
    worker.run(drain=True)
    assert worker.totals["identify:applied"] == 39
    assert worker.totals["identify:too_deep"] == 1
    assert worker.totals["identify:cycle"] == 0
    assert worker.metrics.identify.labels("too_deep")._value.get() == 1
    assert real_redis.hget("alias:t1", "id32") is None  # the 33rd link, id32 -> id33
    assert real_redis.hlen("alias:t1") == 39
    assert {sources[s]: r for s, r in resolved_by_source(real_redis).items()} == {
        "id0": "id32",
        "id5": "id32",
        "id20": "id32",
    }
    assert heights(real_redis) == {"id32": 32, "id40": 7, "": 39}
    resolver = Resolver(real_redis)
    assert resolver.resolve_many("t1", IDS[:33]) == ["id32"] * 33
    assert resolver.chain("t1", "id0") == IDS[:33]


def test_forty_page_view_links_at_the_default_cap(real_redis: redis.Redis) -> None:
    """With the default cap (16) the 17th and the 34th link are refused: the client's
    chain restarts after each refusal, so the map holds chains of 16, 16 and 6 links."""
    for prev, user in PAGE_VIEW_LINKS:
        add(real_redis, "t1", identify(user, prev))
    worker = make_worker(real_redis)
    worker.run(drain=True)
    assert DEFAULT_MAX_DEPTH == 16
    assert worker.totals["identify:too_deep"] == 2
    assert worker.totals["identify:applied"] == 38
    assert real_redis.hget("alias:t1", "id16") is None
    assert real_redis.hget("alias:t1", "id33") is None
    assert heights(real_redis) == {"id16": 16, "id33": 16, "id40": 6, "": 38}


def test_library_link_refuses_the_33rd_page_view_link(real_redis: redis.Redis) -> None:
    """Resolver.link keeps the same rule and the same heights as the worker."""
    resolver = Resolver(real_redis, max_depth=32)
    outcomes = [resolver.link("t1", prev, user) for prev, user in PAGE_VIEW_LINKS]
    assert outcomes.index(LinkOutcome.TOO_DEEP) == 32
    assert outcomes.count(LinkOutcome.APPLIED) == 39
    assert heights(real_redis) == {"id32": 32, "id40": 7, "": 39}
    assert resolver.resolve_many("t1", ["id0", "id5", "id20", "id33"]) == [
        "id32",
        "id32",
        "id32",
        "id40",
    ]


def test_a_refused_link_predicted_to_apply_costs_one_replan(real_redis: redis.Redis) -> None:
    """The cache shows both ids as roots, so the planner predicts the link applies; the
    script refuses it as too deep (stale once), and the worker remembers the refusal: the
    same identify again commits at the first try, and the tenant's cache was kept."""
    resolver = Resolver(real_redis, max_depth=2)
    resolver.link("t1", "a", "b")
    resolver.link("t1", "b", "c")
    worker = make_worker(real_redis, max_chain_depth=2, batch_size=1)
    worker.startup()
    for uid in ("c", "d"):
        add(real_redis, "t1", event(uid))
    worker.recovery.process(worker.stream.read(2, None))
    for _ in range(2):
        add(real_redis, "t1", identify("d", "c"))
        add(real_redis, "t1", event("c"))
        worker.recovery.process(worker.stream.read(2, None))
    assert worker.totals["identify:too_deep"] == 2
    assert worker.metrics.stale_commits._value.get() == 1
    assert worker.cache.get("t1", "d") == "d"  # not forgotten for a too_deep refusal
    assert list(resolved_by_source(real_redis).values()) == ["c", "d", "c", "c"]


def test_resolve_cli_gives_one_answer_on_an_over_deep_foreign_map(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """A 40-link chain written by another program: `resolve id0` alone and together with
    other ids both answer id40, the true end (they answered id32 and id40 before)."""
    real_redis.hset("alias:t1", mapping=dict(PAGE_VIEW_LINKS))
    env = {"STITCH_REDIS_URL": redis_server.url, "STITCH_MAX_CHAIN_DEPTH": "32"}
    alone = cli("resolve", "--tenant", "t1", "id0", env=env)
    together = cli("resolve", "--tenant", "t1", "id0", "id5", "id20", env=env)
    assert alone.returncode == together.returncode == 0, alone.stderr + together.stderr
    assert alone.stdout == "id0\tid40\n"
    assert together.stdout == "id0\tid40\nid5\tid40\nid20\tid40\n"


def test_worker_start_measures_an_over_deep_foreign_map(real_redis: redis.Redis) -> None:
    """At start the worker measures a map its heights do not account for, logs the chains
    deeper than the cap, resolves them to their true end and lets no link extend them."""
    real_redis.hset("alias:t1", mapping=dict(PAGE_VIEW_LINKS))
    real_redis.hset("alias:t2", mapping={"x": "y"})
    worker = make_worker(real_redis, max_chain_depth=32)
    with capture_logs() as logs:
        worker.startup()
    measured = {e["tenant"]: e for e in logs if e["event"] == "alias map measured"}
    assert measured["t1"]["deepest"] == 40
    assert measured["t1"]["too_deep_roots"] == 1
    assert measured["t2"]["too_deep_roots"] == 0
    [warning] = [e for e in logs if e["event"] == "alias map holds chains deeper than the cap"]
    assert (warning["tenant"], warning["roots"], warning["cap"]) == ("t1", 1, 32)
    assert heights(real_redis) == {"id40": 40, "": 40}
    add(real_redis, "t1", identify("z", "id40"))  # would make the chain 41 deep
    add(real_redis, "t1", identify("id0", "fresh"))  # a new anonymous id: 41 deep too
    add(real_redis, "t1", identify("id39", "other"))  # 2 links below the root: fine
    source = add(real_redis, "t1", event("id0"))
    worker.recovery.process(worker.stream.read(10, None))
    assert worker.totals["identify:too_deep"] == 2
    assert worker.totals["identify:applied"] == 1
    assert resolved_by_source(real_redis)[source] == "id40"
    with capture_logs() as again:
        assert measure_alias_maps(real_redis, "alias:", 32, structlog.get_logger()) == 0
    assert not [e for e in again if e["event"] == "alias map measured"]


def test_measure_counts_heights_and_cycles() -> None:
    """measure() gives each root its tree height and counts ids that lead into a cycle."""
    links = {"a": "b", "b": "r", "c": "r", "d": "c", "e": "d", "x": "y", "y": "x", "w": "x"}
    assert measure(links, 2) == Measured(8, {"r": 3}, {"r": 3}, 3, {"r": 6})


def test_sync_measures_the_sizes_of_a_map_kept_before_sizes_existed(
    real_redis: redis.Redis,
) -> None:
    """A map whose heights account for every link but that has no sizes (kept by an older
    version) is measured once: sizes per root, the tenant's own cap kept; then left alone."""
    resolver = Resolver(real_redis)
    for prev, user in [("a", "b"), ("c", "b"), ("b", "r"), ("x", "y")]:
        resolver.link("t1", prev, user)
    real_redis.delete("alias:t1:sizes")
    real_redis.hset("alias:t1:sizes", "", 7)
    result = sync(real_redis, "alias:t1", 16)
    assert result is not None and result.sizes == {"r": 4, "y": 2}
    assert real_redis.hgetall("alias:t1:sizes") == {b"r": b"4", b"y": b"2", b"": b"7"}
    assert sync(real_redis, "alias:t1", 16) is None


def test_sync_stays_put_when_heights_account_for_every_link(real_redis: redis.Redis) -> None:
    """Maps kept by the link rules are never measured again; others are, exactly once."""
    resolver = Resolver(real_redis)
    resolver.link("t1", "a", "b")
    assert sync(real_redis, "alias:t1", 16) is None
    real_redis.hset("alias:t1", "c", "a")  # written by someone else
    result = sync(real_redis, "alias:t1", 16)
    assert result is not None and result.heights == {"b": 2}
    assert heights(real_redis) == {"b": 2, "": 2}
    assert sync(real_redis, "alias:t1", 16) is None
