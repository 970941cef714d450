"""Property tests: random identify/event streams through real workers vs a plain reference model.

The model applies the contract literally, one entry at a time: placeholders and self-links
refused, the first link of an id stands, links that would close a cycle are refused, and
every event resolves by walking the map as it stands at that event's position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resolver import PlaceholderRule
from tests.helpers import INPUT, add, drain, event, identify, make_worker, resolved_by_source
from tests.redis_proc import RedisServer
from worker import Worker

IDS = ["a", "b", "c", "d", "e", "null", "Guest"]
TENANTS = ["t1", "t2"]
MAX_DEPTH = 32

Op = tuple[str, str, str, str]  # (kind, tenant, user_id, previous_user_id)

ops_strategy = st.lists(
    st.one_of(
        st.tuples(
            st.just("identify"),
            st.sampled_from(TENANTS),
            st.sampled_from(IDS),
            st.sampled_from(IDS),
        ),
        st.tuples(st.just("event"), st.sampled_from(TENANTS), st.sampled_from(IDS), st.just("")),
    ),
    min_size=1,
    max_size=40,
)


schedules = st.lists(st.tuples(st.integers(1, 8), st.integers(0, 2)), min_size=1, max_size=6)


@dataclass
class Model:
    links: dict[str, dict[str, str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    is_placeholder: PlaceholderRule = field(default_factory=PlaceholderRule)

    def resolve(self, tenant: str, uid: str) -> str:
        links, node, seen = self.links.get(tenant, {}), uid, {uid}
        while node in links:
            node = links[node]
            if node in seen:
                raise AssertionError("the model never holds a cycle")
            seen.add(node)
        return node

    def identify(self, tenant: str, user: str, prev: str) -> None:
        links = self.links.setdefault(tenant, {})
        if self.is_placeholder(prev) or self.is_placeholder(user):
            outcome = "placeholder"
        elif prev == user or links.get(prev) == user:
            outcome = "noop"
        elif prev in links:
            outcome = "conflict"
        elif self.resolve(tenant, user) == prev:
            outcome = "cycle"
        else:
            links[prev] = user
            outcome = "applied"
        self.outcomes[outcome] += 1


Schedule = list[tuple[int, int]]  # (batch size, which replica reads it), repeated


def run_workers(client: redis.Redis, replicas: int, schedule: Schedule) -> list[Worker]:
    """Replicas take batches in the given order, each with its own cache, to the end."""
    workers = [make_worker(client, consumer=f"replica-{i}") for i in range(replicas)]
    for worker in workers:
        worker.startup()
    for size, who in _cycle(schedule):
        worker = workers[who % replicas]
        entries = worker.streams.read(size, None)
        if not entries:
            break
        worker.process(entries)
    return workers


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
) -> None:
    client.flushall()
    model = Model()
    expected: dict[str, str] = {}
    for kind, tenant, user, prev in ops:
        if kind == "identify":
            add(client, tenant, identify(user, prev))
            model.identify(tenant, user, prev)
        else:
            expected[add(client, tenant, event(user))] = model.resolve(tenant, user)
    if pipelined:
        workers = [drain(client, batch_size=schedule[0][0], consumer="daemon")]
    else:
        workers = run_workers(client, replicas, schedule)
    for tenant in TENANTS:
        stored = {k.decode(): v.decode() for k, v in client.hgetall(f"alias:{tenant}").items()}
        assert stored == model.links.get(tenant, {})
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
)
# replica 0 caches "a" as a root, replica 1 links it, replica 0 must follow the link
@example(
    ops=[("event", "t1", "a", ""), ("identify", "t1", "b", "a"), ("event", "t1", "a", "")],
    replicas=2,
    schedule=[(1, 0), (1, 1), (1, 0)],
)
def test_workers_match_the_model_on_fakeredis(
    ops: list[Op], replicas: int, schedule: Schedule
) -> None:
    """Any stream, any batching, any mix of replicas with their own caches: same as the model."""
    check(fakeredis.FakeRedis(protocol=2), ops, replicas, schedule)


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
)
def test_workers_match_the_model_on_real_redis(
    redis_server: RedisServer, ops: list[Op], replicas: int, schedule: Schedule
) -> None:
    """The same property on a real redis-server, where the Lua commit really runs."""
    check(redis_server.client(), ops, replicas, schedule)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, batch_size=st.integers(1, 6))
def test_the_daemon_loop_matches_the_model(ops: list[Op], batch_size: int) -> None:
    """The pipelined loop (plan N+1 while N commits) gives exactly the sequential answer."""
    check(fakeredis.FakeRedis(protocol=2), ops, 1, [(batch_size, 0)], pipelined=True)
