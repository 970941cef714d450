"""unlink and forget against the reference model (tests/model.py): a dry run lists exactly what
the real operation then changes, the map afterwards is the model's, heights stay upper bounds,
and links replayed afterwards get the model's outcomes (blocked, forgotten)."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resolver import Resolver
from resolver.heights import measure
from tests.model import AliasModel

IDS = st.sampled_from([f"u{k}" for k in range(7)])
LINKS = st.lists(st.tuples(IDS, IDS), max_size=14)
OPS = st.lists(
    st.tuples(st.sampled_from(["unlink", "block", "forget"]), IDS), min_size=1, max_size=4
)
CAP = 4


def _map(client: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall("alias:t").items()}


SIZE_CAP = 4
"""Small enough that some links are held, and apply once an unlink or forget shrank them."""


def _sizes_are_exact(client: redis.Redis, model: AliasModel) -> None:
    """Every link went through the rules (the children index is whole): sizes stay exact."""
    stored = {k.decode(): int(v) for k, v in client.hgetall("alias:t:sizes").items()}
    assert stored == model.sizes("t")


def _heights_bound_the_map(client: redis.Redis) -> None:
    """Every root's stored height is at least its true height (the depth cap's safety)."""
    stored = {k.decode(): int(v) for k, v in client.hgetall("alias:t:heights").items()}
    for root, height in measure(_map(client), CAP).heights.items():
        assert stored.get(root, 0) >= height, (root, height, stored)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(links=LINKS, ops=OPS, replay=LINKS)
@example(  # pinned: unlinking the middle of a chain moves only the part below it
    links=[("u0", "u1"), ("u1", "u2"), ("u3", "u1")], ops=[("unlink", "u1")], replay=[]
)
@example(  # pinned: a blocked link replayed is blocked; forgetting a leaf takes its whole person
    links=[("u0", "u1"), ("u2", "u1")],
    ops=[("block", "u0"), ("forget", "u2")],
    replay=[("u0", "u1"), ("u2", "u5"), ("u5", "u0")],
)
def test_dry_runs_list_what_the_operations_change(
    real_redis: redis.Redis,
    links: list[tuple[str, str]],
    ops: list[tuple[str, str]],
    replay: list[tuple[str, str]],
) -> None:
    real_redis.flushall()
    resolver = Resolver(real_redis, max_depth=CAP, tombstone_key=b"k", max_component_size=SIZE_CAP)
    model = AliasModel(cap=CAP, size_cap=SIZE_CAP)
    for prev, user in links:
        assert resolver.link("t", prev, user) == model.link("t", prev, user)
    for op, uid in ops:
        before = _map(real_redis)
        if op == "forget":
            planned = resolver.forget("t", uid, dry_run=True)
            assert _map(real_redis) == before
            done = resolver.forget("t", uid)
            erased = model.forget("t", uid)
            assert set(planned.affected_ids) == erased
            assert (done.tombstones, done.affected_ids) == (len(erased), [])
        else:
            planned = resolver.unlink("t", uid, dry_run=True)
            assert _map(real_redis) == before
            done = resolver.unlink("t", uid, block=op == "block")
            changed = model.unlink("t", uid, block=op == "block")
            assert set(planned.affected_ids) == set(done.affected_ids) == changed
        assert done.removed_links == len(before) - len(_map(real_redis))
        assert _map(real_redis) == model.snapshot("t")
        _heights_bound_the_map(real_redis)
        _sizes_are_exact(real_redis, model)
    for prev, user in replay:
        assert resolver.link("t", prev, user) == model.link("t", prev, user)
    assert _map(real_redis) == model.snapshot("t")
    _heights_bound_the_map(real_redis)
    _sizes_are_exact(real_redis, model)
