"""One answer everywhere: on any alias map (written directly with HSET, so with chains far
past the cap and cycles), the worker's planner and cache, its commit script, the library
cold and warm and the resolve CLI give every id the reference model's root."""

from __future__ import annotations

import contextlib
import io
import itertools
import random

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resolver import End, Resolver, walk
from tests.helpers import add, event, make_worker, output
from tests.model import AliasModel
from tests.redis_proc import RedisServer
from worker import cli
from worker.config import Settings

IDS = [f"u{n}" for n in range(10)]
CAP = 3
"""The write cap of every reader below: far below the chains the maps hold."""


@st.composite
def alias_maps(draw: st.DrawFn) -> dict[str, str]:
    """A few random links, plus maybe one long chain (up to 45 links) that may end in a
    random id, which can put it into a cycle."""
    links = draw(st.dictionaries(st.sampled_from(IDS), st.sampled_from(IDS), max_size=8))
    length = draw(st.integers(0, 45))
    chain = [f"c{n}" for n in range(length + 1)]
    links.update(itertools.pairwise(chain))
    if length and draw(st.booleans()):
        links[chain[-1]] = draw(st.sampled_from(IDS + chain[:-1]))
    return links


def every_id(links: dict[str, str]) -> list[str]:
    return sorted({*links, *links.values(), "nobody"})


def worker_answers(client: redis.Redis, ids: list[str], warm: list[str]) -> dict[str, str]:
    """Events for ``warm`` first (the cache learns and compresses), then for every id; also
    checks that what the cache walks to, where it claims a root, is the same answer."""
    worker = make_worker(client, max_chain_depth=CAP, batch_size=len(ids) + len(warm))
    worker.startup()
    for batch in (warm, ids):
        if batch:
            sources = {add(client, "t1", event(uid)): uid for uid in batch}
            worker.recovery.process(worker.stream.read(len(batch), None))
    answers = {sources[e["source_id"]]: e["resolved_user_id"] for e in output(client)
               if e["source_id"] in sources}  # fmt: skip
    for uid in ids:
        end, how, _, _ = walk(worker.cache, "t1", uid)
        if how is End.ROOT:
            assert end == answers[uid], uid
    return answers


def library_answers(client: redis.Redis, ids: list[str], warm: list[str]) -> list[dict[str, str]]:
    """Cold: one call for everything, and one call per id. Warm: after resolving ``warm``."""
    cold = Resolver(client, max_depth=CAP)
    one_by_one = Resolver(client, max_depth=CAP)
    warmed = Resolver(client, max_depth=CAP)
    warmed.resolve_many("t1", warm)
    for uid in warm:
        warmed.resolve("t1", uid)
    shuffled = random.Random(len(ids)).sample(ids, len(ids))
    return [
        dict(zip(ids, cold.resolve_many("t1", ids), strict=True)),
        {uid: one_by_one.resolve("t1", uid) for uid in shuffled},
        dict(zip(ids, warmed.resolve_many("t1", ids), strict=True)),
    ]


def cli_answers(url: str, ids: list[str]) -> list[dict[str, str]]:
    """`lehnz-stitch resolve` (in process) with every id at once, and with each id alone."""
    config = Settings.from_env({}, {"redis_url": url, "max_chain_depth": str(CAP)})

    def run(batch: list[str]) -> dict[str, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.resolve(config, "t1", batch, chain=False) == 0
        return dict(line.split("\t") for line in out.getvalue().splitlines())

    alone: dict[str, str] = {}
    for uid in ids:
        alone.update(run([uid]))
    return [run(ids), alone]


def check(client: redis.Redis, links: dict[str, str], warm: list[str], url: str | None) -> None:
    client.flushall()
    if links:
        client.hset("alias:t1", mapping=links)  # type: ignore[arg-type]
    ids = every_id(links)
    warm = [uid for uid in warm if uid in ids] or ids[:1]
    expected = {uid: AliasModel(links={"t1": links}).resolve("t1", uid) for uid in ids}
    assert worker_answers(client, ids, warm) == expected
    for answers in library_answers(client, ids, warm):
        assert answers == expected
    if url is not None:
        for answers in cli_answers(url, ids):
            assert answers == expected


warm_ids = st.lists(st.sampled_from(IDS + [f"c{n}" for n in range(46)]), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links=alias_maps(), warm=warm_ids)
# the map: one chain of 40 links, and a cache that has seen a middle id first
@example(links={f"c{n}": f"c{n + 1}" for n in range(40)}, warm=["c5", "c20"])
# a cycle whose smallest member is not where the walk enters it
@example(links={"c0": "u3", "u3": "u1", "u1": "u2", "u2": "u0", "u0": "u3"}, warm=["c0"])
def test_every_reader_gives_the_models_root_on_fakeredis(
    links: dict[str, str], warm: list[str]
) -> None:
    """Fast: worker (planner and script) and library, cold and warm, on fakeredis."""
    check(fakeredis.FakeRedis(protocol=2), links, warm, None)


@pytest.mark.redis_server
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(links=alias_maps(), warm=warm_ids)
def test_every_reader_gives_the_models_root_on_real_redis(
    redis_server: RedisServer, links: dict[str, str], warm: list[str]
) -> None:
    """The same on a real redis-server, and the resolve CLI too."""
    check(redis_server.client(), links, warm, redis_server.url)
