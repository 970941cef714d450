"""Property tests: random identify/event streams through real workers vs a plain reference model.

The model applies the contract literally, one entry at a time: placeholders and self-links
refused, the first link of an id stands, links that would close a cycle or make any chain
longer than the cap are refused, and every event resolves by walking the map as it stands at
that event's position to its end (a cycle written by someone else: its smallest member).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resolver import Resolver
from resolver.feed import ChangeOp, fold, read_changes
from resolver.heights import measure
from tests.helpers import (
    INPUT,
    add,
    event,
    identify,
    make_worker,
    output,
    resolved_by_source,
)
from tests.model import AliasModel
from tests.redis_proc import RedisServer
from worker import Worker

IDS = ["a", "b", "c", "d", "e", "null", "Guest"]
TENANTS = ["t1", "t2"]
CAPS = st.sampled_from([1, 2, 16])
"""Small caps make too_deep refusals (and the stale predictions they cause) common."""

Op = tuple[str, str, str, str]  # (kind, tenant, user_id, previous_user_id)


def op_lists(ids: list[str], tenants: list[str]) -> st.SearchStrategy[list[Op]]:
    return st.lists(
        st.one_of(
            st.tuples(
                st.just("identify"),
                st.sampled_from(tenants),
                st.sampled_from(ids),
                st.sampled_from(ids),
            ),
            st.tuples(
                st.just("event"), st.sampled_from(tenants), st.sampled_from(ids), st.just("")
            ),
        ),
        min_size=1,
        max_size=40,
    )


ops_strategy = op_lists(IDS, TENANTS)
contested_ops = op_lists(["a", "b", "c"], ["t1"])
"""Few ids on one tenant: replicas keep linking what the others have cached."""


schedules = st.lists(st.tuples(st.integers(1, 8), st.integers(0, 2)), min_size=1, max_size=6)


Schedule = list[tuple[int, int]]  # (batch size, which replica reads it), repeated


def stored_heights(client: redis.Redis, tenant: str) -> dict[str, str]:
    raw = client.hgetall(f"alias:{tenant}:heights")
    return {k.decode(): v.decode() for k, v in raw.items()}


def expected_heights(links: dict[str, str], cap: int) -> dict[str, str]:
    """What link_rules.lua must have kept: each root's tree height, and the link count."""
    if not links:
        return {}
    heights = {root: str(h) for root, h in measure(links, cap).heights.items()}
    return {**heights, "": str(len(links))}


def check_accountable(client: redis.Redis, model: AliasModel) -> None:
    """Every link has its provenance and exactly one feed entry (folding the feed gives the
    maps); explain's hops are the model's chain with the right source ids, its refusals the
    model's refusals naming the id."""
    maps = {t: links for t, links in model.links.items() if links}
    changes = [c for c in read_changes(client, "alias:changes") if c.op is ChangeOp.LINK]
    assert fold(changes) == maps
    assert len(changes) == sum(map(len, maps.values()))
    assert {(c.tenant, c.previous_user_id): c.source_id for c in changes} == model.sources
    resolver = Resolver(client)
    for tenant in TENANTS:
        for uid in IDS:
            explained = resolver.explain(tenant, uid)
            path = model.path(tenant, uid)
            assert explained.root == path[-1]
            assert [(h.from_id, h.to_id, h.provenance and h.provenance.source_id)
                    for h in explained.hops] == [
                (a, b, model.sources[tenant, a]) for a, b in itertools.pairwise(path)
            ]  # fmt: skip
            assert [tuple(r) for r in explained.refused] == [
                r for r in model.refused.get(tenant, []) if uid in r[2:]
            ]


def check_held(client: redis.Redis, model: AliasModel, tenant: str) -> None:
    """Sizes are the model's components (none over the cap); the quarantine holds the model's
    held links, each once, with the identify's source id; one feed entry per held link."""
    raw = client.hgetall(f"alias:{tenant}:sizes")
    sizes = {k.decode(): int(v) for k, v in raw.items()}
    assert sizes == model.sizes(tenant)
    assert all(size <= model.size_cap for size in sizes.values())
    held = {
        (tenant, k.decode()): (user, source, reason)
        for k, v in client.hgetall(f"alias:{tenant}:quarantine").items()
        for user, source, _, reason in [v.decode().split(" ")]
    }
    assert held == {key: value for key, value in model.held.items() if key[0] == tenant}
    fed = [
        tuple(f[k].decode() for k in (b"previous_user_id", b"user_id", b"source_id", b"reason"))
        for _, f in client.xrange("alias:changes")
        if f[b"tenant"] == tenant.encode() and f[b"op"] == ChangeOp.QUARANTINE.value.encode()
    ]
    assert sorted(fed) == sorted((k[1], *v) for k, v in held.items())
    tallies = client.hmget(f"alias:{tenant}:protection", "held:size", "held:rate")
    by_reason = Counter(reason for _, _, reason in held.values())
    assert [int(n or 0) for n in tallies] == [by_reason["size"], by_reason["rate"]]


def run_workers(
    client: redis.Redis, replicas: int, schedule: Schedule, **overrides: Any
) -> list[Worker]:
    """Replicas take batches in the given order, each with its own cache, to the end."""
    workers = [make_worker(client, consumer=f"replica-{i}", **overrides) for i in range(replicas)]
    for worker in workers:
        worker.startup()
    for size, who in _cycle(schedule):
        worker = workers[who % replicas]
        entries = worker.stream.read(size, None)
        if not entries:
            break
        worker.recovery.process(entries)
    return workers


def run_pipelined_workers(
    client: redis.Redis, replicas: int, schedule: Schedule, **overrides: Any
) -> list[Worker]:
    """Daemon loops of several replicas, interleaved one pipeline turn at a time.

    A replica's queued batch was planned before the others' later turns ran, so its link
    predictions go stale whenever another replica links first: the redo-and-replan path
    (reached by the pinned example below; that the queued batch must then be planned again
    is pinned by test_batch_queued_behind_a_stale_commit_is_planned_again).
    """
    workers = [
        make_worker(client, consumer=f"replica-{i}", batch_size=schedule[i % len(schedule)][0],
                    block_ms=1, **overrides)
        for i in range(replicas)
    ]  # fmt: skip
    for worker in workers:
        worker.startup()
        _record_commits(worker)
    while sum(workers[who % replicas].pipeline.turn() for _, who in schedule):
        pass
    for worker in workers:
        worker.loop(drain=True)
        worker.shutdown()
    return workers


COMMITTED: dict[str, list[tuple[int, int]]] = {}
"""Per consumer, the ids of the entries it committed, in the order it committed them."""


class RecordingSink:
    """Stands in front of a worker's accountant and notes what its consumer committed."""

    def __init__(self, worker: Worker) -> None:
        self.accounts = worker.accounts
        self.order = COMMITTED.setdefault(worker.settings.consumer, [])

    def committed(self, entries: list[Any], plan: Any, result: Any, elapsed_s: float) -> None:
        self.order.extend(_id_key(e.id.decode()) for e in entries)
        self.accounts.committed(entries, plan, result, elapsed_s)


def _record_commits(worker: Worker) -> None:
    worker.committer.sink = RecordingSink(worker)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def _cycle(values: Schedule) -> Iterator[tuple[int, int]]:
    while True:
        yield from values


def check(
    client: redis.Redis,
    ops: list[Op],
    replicas: int,
    schedule: Schedule,
    *,
    pipelined: bool = False,
    forward_identify: bool = False,
    cap: int = 16,
    size_cap: int = 1000,
    rate_limit: int = 0,
) -> None:
    """The workers' results equal the model's, applied in the order entries committed.

    With ``forward_identify`` every entry is emitted, so the output stream is the commit
    order; it must be the stream order too, except for pipelined replicas, whose batches
    may commit in any order (each replica keeps its own stream order).
    """
    client.flushall()
    COMMITTED.clear()
    ids = [
        add(client, tenant, identify(user, prev) if kind == "identify" else event(user))
        for kind, tenant, user, prev in ops
    ]
    runner = run_pipelined_workers if pipelined else run_workers
    workers = runner(
        client,
        replicas,
        schedule,
        forward_identify=forward_identify,
        max_chain_depth=cap,
        max_component_size=size_cap,
        max_links_per_root_per_hour=rate_limit,
    )
    order = [e["source_id"] for e in output(client)] if forward_identify else ids
    assert sorted(order) == sorted(ids)  # every entry exactly once
    if not (pipelined and replicas > 1):
        assert order == ids
    for committed in COMMITTED.values():  # each replica keeps its own stream order
        assert committed == sorted(committed)
    op_of = dict(zip(ids, ops, strict=True))
    model = AliasModel(cap=cap, size_cap=size_cap, rate_limit=rate_limit)
    expected: dict[str, str] = {}
    for source in order:
        kind, tenant, user, prev = op_of[source]
        if kind == "identify":
            model.link(tenant, prev, user, source)
        if kind == "event" or forward_identify:
            expected[source] = model.resolve(tenant, user)
    check_accountable(client, model)
    for tenant in TENANTS:
        stored = {k.decode(): v.decode() for k, v in client.hgetall(f"alias:{tenant}").items()}
        assert stored == model.links.get(tenant, {})
        assert stored_heights(client, tenant) == expected_heights(stored, cap)
        check_held(client, model, tenant)
    assert resolved_by_source(client) == expected
    outcomes: Counter[str] = Counter()
    for worker in workers:
        outcomes.update(
            {k.split(":", 1)[1]: v for k, v in worker.totals.items() if k.startswith("identify:")}
        )
    assert outcomes == model.outcomes
    assert client.xpending(INPUT, "stitch")["pending"] == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_strategy,
    replicas=st.integers(1, 3),
    schedule=schedules,
    forward=st.booleans(),
    cap=CAPS,
)
# replica 0 caches "a" as a root, replica 1 links it, replica 0 must follow the link
@example(
    ops=[("event", "t1", "a", ""), ("identify", "t1", "b", "a"), ("event", "t1", "a", "")],
    replicas=2,
    schedule=[(1, 0), (1, 1), (1, 0)],
    forward=False,
    cap=16,
)
# the cache knows both roots, so the planner predicts the link applies; the script refuses
# it as too deep (a-b-c is 2 links already): stale once, then remembered
@example(
    ops=[
        ("identify", "t1", "b", "a"), ("identify", "t1", "c", "b"), ("event", "t1", "c", ""),
        ("event", "t1", "d", ""), ("identify", "t1", "d", "c"), ("event", "t1", "c", ""),
    ],
    replicas=1,
    schedule=[(3, 0), (1, 0), (2, 0)],
    forward=False,
    cap=2,
)  # fmt: skip
# two links of one prev refused as too deep in one batch: both remembered, not one in turn
# (the planner once kept one refused target per prev and went stale until it gave up)
@example(
    ops=[
        ("identify", "t2", "b", "a"), ("event", "t2", "a", ""), ("event", "t2", "c", ""),
        ("event", "t2", "d", ""), ("identify", "t2", "c", "b"), ("identify", "t2", "d", "b"),
    ],
    replicas=1,
    schedule=[(2, 0)],
    forward=False,
    cap=1,
)  # fmt: skip
def test_workers_match_the_model_on_fakeredis(
    ops: list[Op], replicas: int, schedule: Schedule, forward: bool, cap: int
) -> None:
    """Any stream, any batching, any mix of replicas with their own caches: same as the model."""
    check(
        fakeredis.FakeRedis(protocol=2), ops, replicas, schedule, forward_identify=forward, cap=cap
    )


@pytest.mark.redis_server
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=ops_strategy,
    replicas=st.integers(1, 3),
    schedule=schedules,
    forward=st.booleans(),
    cap=CAPS,
)
def test_workers_match_the_model_on_real_redis(
    redis_server: RedisServer,
    ops: list[Op],
    replicas: int,
    schedule: Schedule,
    forward: bool,
    cap: int,
) -> None:
    """The same property on a real redis-server, where the Lua commit really runs."""
    check(redis_server.client(), ops, replicas, schedule, forward_identify=forward, cap=cap)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, batch_size=st.integers(1, 6), forward=st.booleans(), cap=CAPS)
def test_the_daemon_loop_matches_the_model(
    ops: list[Op], batch_size: int, forward: bool, cap: int
) -> None:
    """The pipelined loop (plan N+1 while N commits) gives exactly the sequential answer."""
    check(
        fakeredis.FakeRedis(protocol=2), ops, 1, [(batch_size, 0)],
        pipelined=True, forward_identify=forward, cap=cap,
    )  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.one_of(contested_ops, ops_strategy),
    replicas=st.integers(2, 3),
    schedule=schedules,
    cap=CAPS,
)
# replica 0's queued batch predicts a link that replica 1 makes stale first
@example(
    ops=[
        ("event", "t1", "b", ""), ("identify", "t1", "c", "c"), ("event", "t1", "b", ""),
        ("identify", "t1", "b", "c"), ("event", "t1", "c", ""), ("identify", "t1", "b", "c"),
        ("identify", "t1", "c", "b"), ("event", "t1", "c", ""),
    ],
    replicas=2,
    schedule=[(1, 0), (1, 1), (2, 0)],
    cap=16,
)  # fmt: skip
def test_interleaved_daemon_loops_match_the_model(
    ops: list[Op], replicas: int, schedule: Schedule, cap: int
) -> None:
    """Several pipelined replicas whose queued plans go stale under each other's links."""
    check(
        fakeredis.FakeRedis(protocol=2), ops, replicas, schedule,
        pipelined=True, forward_identify=True, cap=cap,
    )  # fmt: skip


@pytest.mark.redis_server
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.one_of(contested_ops, ops_strategy), replicas=st.integers(2, 3), schedule=schedules)
def test_interleaved_daemon_loops_match_the_model_on_real_redis(
    redis_server: RedisServer, ops: list[Op], replicas: int, schedule: Schedule
) -> None:
    """The same on a real redis-server, where sent commits run while Python plans."""
    client = redis_server.client()
    hz = client.config_get("hz")["hz"]
    client.config_set("hz", 100)  # BLOCK timeouts fire on server ticks: 10 ms, not 100
    try:
        check(client, ops, replicas, schedule, pipelined=True, forward_identify=True)
    finally:
        client.config_set("hz", hz)


SIZE_CAPS = st.sampled_from([2, 3, 4])
"""Components of at most a few ids: held links are common, and so are their stale
predictions (the planner cannot see sizes: it learns each hold once)."""


RATE_LIMITS = st.sampled_from([0, 1, 2])
"""Links per root per hour: with a handful of ids every root soon takes its limit (0: off)."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_strategy,
    replicas=st.integers(1, 3),
    schedule=schedules,
    size_cap=SIZE_CAPS,
    rate_limit=RATE_LIMITS,
)
def test_no_component_outgrows_the_size_cap(
    ops: list[Op], replicas: int, schedule: Schedule, size_cap: int, rate_limit: int
) -> None:
    """Any stream through 1-3 replicas: sizes are the model's, none over the cap, no root
    past its rate limit, every held link in the quarantine once with its reason, every entry
    acked and every event emitted."""
    check(
        fakeredis.FakeRedis(protocol=2), ops, replicas, schedule,
        size_cap=size_cap, rate_limit=rate_limit,
    )  # fmt: skip


@pytest.mark.redis_server
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=ops_strategy,
    replicas=st.integers(1, 3),
    schedule=schedules,
    forward=st.booleans(),
    size_cap=SIZE_CAPS,
    rate_limit=RATE_LIMITS,
)
def test_no_component_outgrows_the_size_cap_on_real_redis(
    redis_server: RedisServer,
    ops: list[Op],
    replicas: int,
    schedule: Schedule,
    forward: bool,
    size_cap: int,
    rate_limit: int,
) -> None:
    check(
        redis_server.client(), ops, replicas, schedule,
        forward_identify=forward, size_cap=size_cap, rate_limit=rate_limit,
    )  # fmt: skip
