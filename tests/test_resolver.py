"""The resolver library on its own: chains, round trips, cycles, the bounded cache."""

from __future__ import annotations

import itertools

import redis

from resolver import AliasCache, End, LinkOutcome, Resolver, walk


def test_cache_never_exceeds_its_cap() -> None:
    """Memory stays flat: inserting far more ids than the cap keeps len() at or under it."""
    cache = AliasCache(1000)
    for i in range(10_000):
        cache.put("t", f"id-{i}", f"id-{i}")
        assert len(cache) <= 1000
    assert cache.get("t", "id-9999") == "id-9999"
    assert cache.get("t", "id-0") is None


def test_cache_promotes_recent_hits_across_generations() -> None:
    """An id that keeps being read survives generation turnover."""
    cache = AliasCache(10)
    cache.put("t", "hot", "root")
    for i in range(50):
        cache.put("t", f"cold-{i}", "x")
        assert cache.get("t", "hot") == "root"


def test_cache_forget_tenant_only_drops_that_tenant() -> None:
    """forget_tenant invalidates one tenant's paths (for link removal), not the others'."""
    cache = AliasCache(100)
    cache.put("a", "x", "y")
    cache.put("b", "x", "z")
    cache.forget_tenant("a")
    assert cache.get("a", "x") is None
    assert cache.get("b", "x") == "z"


def test_walk_reports_unknown_root_and_cycle() -> None:
    """walk ends at an unknown id, a verified-looking root, or a deterministic cycle member."""
    cache = AliasCache(100)
    cache.put("t", "a", "b")
    assert walk(cache, "t", "a")[:2] == ("b", End.UNKNOWN)
    cache.put("t", "b", "b")
    assert walk(cache, "t", "a")[:3] == ("b", End.ROOT, 1)
    for x, y in (("p", "q"), ("q", "r"), ("r", "p")):
        cache.put("t", x, y)
    ends = {walk(cache, "t", start)[:2] for start in ("p", "q", "r")}
    assert ends == {("p", End.CYCLE)}


def test_resolve_many_uses_one_round_trip_per_hop_level(fake_redis: redis.Redis) -> None:
    """A cold batch with chains up to depth 4 costs 5 pipelined round trips, not one per hop."""
    chains = {f"anon-{i}": [f"anon-{i}", *(f"u{i}-{d}" for d in range(i % 5))] for i in range(200)}
    for path in chains.values():
        for prev, user in itertools.pairwise(path):
            fake_redis.hset("alias:t", prev, user)
    resolver = Resolver(fake_redis)
    resolved = resolver.resolve_many("t", list(chains))
    assert resolved == [path[-1] for path in chains.values()]
    assert resolver.round_trips == 5


def test_warm_cache_still_verifies_roots(fake_redis: redis.Redis) -> None:
    """A cached root that another process linked since is followed, not trusted."""
    resolver = Resolver(fake_redis)
    assert resolver.resolve("t", "anon") == "anon"
    fake_redis.hset("alias:t", "anon", "real")
    assert resolver.resolve("t", "anon") == "real"


def test_path_compression_shortens_later_walks(fake_redis: redis.Redis) -> None:
    """After one resolution the cache maps the start of a long chain straight to its root."""
    path = [f"n{i}" for i in range(6)]
    for prev, user in itertools.pairwise(path):
        fake_redis.hset("alias:t", prev, user)
    resolver = Resolver(fake_redis)
    assert resolver.resolve("t", "n0") == "n5"
    assert resolver.cache.get("t", "n0") == "n5"


def test_chain_lists_the_path_and_stops_on_cycles(fake_redis: redis.Redis) -> None:
    """chain() prints the whole path, and a foreign cycle ends it instead of looping."""
    fake_redis.hset("alias:t", mapping={"a": "b", "b": "c", "x": "y", "y": "x"})
    resolver = Resolver(fake_redis)
    assert resolver.chain("t", "a") == ["a", "b", "c"]
    assert resolver.chain("t", "x") == ["x", "y", "x"]
    assert resolver.resolve("t", "y") == "x"


def test_link_applies_the_forest_rules(fake_redis: redis.Redis) -> None:
    """The library's link() refuses conflicts, cycles and placeholders like the worker does."""
    resolver = Resolver(fake_redis)
    assert resolver.link("t", "a", "b") is LinkOutcome.APPLIED
    assert resolver.link("t", "a", "b") is LinkOutcome.NOOP
    assert resolver.link("t", "a", "c") is LinkOutcome.CONFLICT
    assert resolver.link("t", "b", "a") is LinkOutcome.CYCLE
    assert resolver.link("t", "undefined", "a") is LinkOutcome.PLACEHOLDER
    assert fake_redis.hgetall("alias:t") == {b"a": b"b"}


def test_decoded_clients_work_too(fake_redis: redis.Redis) -> None:
    """Downstream consumers may use decode_responses=True clients."""
    client = redis.Redis(connection_pool=fake_redis.connection_pool, decode_responses=True)
    fake_redis.hset("alias:t", "a", "b")
    assert Resolver(client).resolve("t", "a") == "b"


def test_observe_many_matches_observe_one_by_one() -> None:
    """The batch histogram update gives exactly the buckets and sum of per-value observe()."""
    from prometheus_client import CollectorRegistry, Histogram

    from worker.metrics import observe_many

    values = [0.0, 0.0004, 0.001, 0.0011, 0.3, 2.0, 99.0, 0.005]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d_seconds", "x", buckets=(0.001, 0.005, 1), registry=one)
    h2 = Histogram("d_seconds", "x", buckets=(0.001, 0.005, 1), registry=many)
    for value in values:
        h1.observe(value)
    observe_many(h2, values)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (x.name, x.labels, x.value)
            for m in registry.collect()
            for x in m.samples
            if not x.name.endswith("_created")
        ]

    assert samples(one) == samples(many)
