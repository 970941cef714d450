"""Several replicas on one real Redis: warm caches never emit stale resolutions, and racing
identifies keep the alias map a forest where the first link of every id stands."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from resolver import Resolver
from resolver.links import LinkOutcome
from tests.conftest import running_worker
from tests.fault_tools import (
    GROUP,
    add_many,
    alias_map,
    assert_running,
    consumers,
    has_cycle,
    output_sources,
    record_alias_writes,
    stop_gracefully,
    stopped_summary,
    wait_for,
    wait_group_done,
)
from tests.helpers import DEAD, INPUT, OUTPUT, add, event, identify, make_worker, resolved_by_source
from tests.model import AliasModel
from tests.redis_proc import RedisServer
from worker import Worker
from worker.committer import MAX_STALE_RETRIES, Committer

pytestmark = pytest.mark.redis_server

OUTCOMES = ("applied", "noop", "conflict", "cycle", "too_deep", "placeholder")
STALE_RETRIES = MAX_STALE_RETRIES


def _handle(worker: Worker, ids: list[str], mode: str) -> None:
    """Let this replica alone handle the entries just added: read them and call process(), or
    run its real loop (pipelined batches of 4) until drained."""
    if mode == "process":
        entries = worker.stream.read(len(ids), None)
        assert [e[0].decode() for e in entries] == ids
        worker.recovery.process(entries)
    else:
        worker.loop(drain=True)


@pytest.mark.parametrize("mode", ["process", "drain"])
def test_warm_caches_of_every_replica_follow_new_links(
    redis_server: RedisServer, real_redis: redis.Redis, mode: str
) -> None:
    """After identifies committed through one replica, every other replica whose cache holds
    the old ids as roots resolves later events through the new links (and their chains)."""
    c = real_redis
    replicas = [
        make_worker(redis_server.client(), consumer=f"replica-{i}", batch_size=4) for i in range(3)
    ]
    for w in replicas:
        w.startup()
    anon = [f"anon-{i}" for i in range(12)]

    for w in replicas:  # warm: every replica resolves every anon id to itself
        _handle(w, [add(c, "acme", event(a)) for a in anon], mode)
        assert all(w.cache.get("acme", a) == a for a in anon)
    assert set(resolved_by_source(c).values()) == set(anon)
    assert output_sources(c).total() == 3 * len(anon)

    model = AliasModel()
    links = [(f"anon-{i}", f"user-{i}") for i in range(12)]
    links += [(f"user-{i}", f"person-{i % 4}") for i in range(8)]  # two-hop chains, merges
    for prev, user in links:
        assert model.link("acme", prev, user) == "applied"
    _handle(replicas[0], [add(c, "acme", identify(u, p)) for p, u in links], mode)
    assert alias_map(c, "acme") == model.snapshot("acme")

    expected: dict[str, str] = {}
    users = (*anon, *anon[::-1], "user-0", "user-9", "person-1")
    for w in replicas:
        ids = [add(c, "acme", event(u)) for u in users]
        expected.update((i, model.resolve("acme", u)) for i, u in zip(ids, users, strict=True))
        _handle(w, ids, mode)
    resolved = resolved_by_source(c)
    assert {i: resolved[i] for i in expected} == expected
    assert all(n == 1 for n in output_sources(c).values())
    assert c.xpending(INPUT, GROUP)["pending"] == 0


# --- racing identifies --------------------------------------------------------------------


def _contested_links(rng: random.Random, tag: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Identify links built to contend: x<->y pairs, a->b->c->a triangles, fan-out conflicts,
    placeholders and self-links, each sent several times with contenders adjacent."""
    rows: list[tuple[str, str]] = []
    shape: dict[str, Any] = {"pairs": [], "triangles": [], "fans": []}
    groups: list[list[tuple[str, str]]] = []
    for g in range(60):
        x, y = f"{tag}x{g}", f"{tag}y{g}"
        shape["pairs"].append((x, y))
        groups.append([(x, y), (y, x)] * 2)
    for g in range(40):
        a, b, t = f"{tag}a{g}", f"{tag}b{g}", f"{tag}c{g}"
        shape["triangles"].append((a, b, t))
        groups.append([(a, b), (b, t), (t, a)] * 2)
    for g in range(20):
        p = f"{tag}p{g}"
        targets = [f"{tag}q{g}-{k}" for k in range(3)]
        shape["fans"].append((p, targets))
        groups.append([(p, q) for q in targets])
    for g in range(10):
        groups.append([("null", f"{tag}n{g}"), (f"{tag}s{g}", f"{tag}s{g}")])
    for group in groups:
        rng.shuffle(group)
    rng.shuffle(groups)
    for group in groups:
        rows.extend(group)
    return rows, shape


def _check_forest(links: dict[str, str], shape: dict[str, Any]) -> None:
    assert not has_cycle(links)
    for x, y in shape["pairs"]:
        assert (links.get(x) == y) != (links.get(y) == x), (x, y, links.get(x), links.get(y))
    for a, b, t in shape["triangles"]:
        present = [links.get(a) == b, links.get(b) == t, links.get(t) == a]
        assert sum(present) == 2, (a, b, t, present)
    for p, targets in shape["fans"]:
        assert links.get(p) in targets


def _identify_rows(rows: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    return [("acme", identify(user, prev)) for prev, user in rows]


def _check_writes(writes: list[tuple[str, str, str]], links: dict[str, str]) -> None:
    """Each id was written at most once (first link stands), and the map is exactly them."""
    written = Counter((tenant, prev) for tenant, prev, _ in writes)
    overwritten = [key for key, n in written.items() if n > 1]
    assert not overwritten, f"links written more than once: {overwritten[:5]}"
    assert links == {prev: user for tenant, prev, user in writes if tenant == "acme"}


@pytest.mark.slow
def test_racing_identifies_across_replica_threads_keep_first_links(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """Conflicting and cycle-closing identifies processed concurrently by three in-process
    replicas (own clients, batches of 1), three times over on warm caches, never form a cycle
    or overwrite a link: the alias map is exactly the links Redis saw written, each written
    once, and the outcome counts add up to the identifies processed."""
    c = real_redis
    rng = random.Random(5)
    replicas = [
        make_worker(
            redis_server.client(),
            consumer=f"replica-{i}",
            batch_size=1,
            claim_idle_ms=5000,
            claim_interval_ms=500,
        )
        for i in range(3)
    ]
    for w in replicas:
        w.startup()
    sent = 0
    rows, shape = _contested_links(rng, "r")
    first_round: dict[str, str] | None = None
    with record_alias_writes(redis_server.client) as writes:
        for _ in range(3):  # the same contenders again, on warm caches: all refused later
            rng.shuffle(rows)
            add_many(c, _identify_rows(rows))
            sent += len(rows)
            _run_concurrently(replicas)
            links = alias_map(c, "acme")
            _check_forest(links, shape)
            first_round = first_round or links
            assert links == first_round

    _check_writes(writes, links)
    totals = sum((Counter(w.totals) for w in replicas), Counter())
    assert sum(totals[f"identify:{o}"] for o in OUTCOMES) == sent
    assert totals["identify:applied"] == len(links)
    assert totals["identify:placeholder"] == 3 * 10
    assert all(w.totals["read"] > 0 for w in replicas)
    assert c.xpending(INPUT, GROUP)["pending"] == 0
    assert c.xlen(OUTPUT) == 0 and c.xlen(DEAD) == 0


def _run_concurrently(replicas: list[Worker]) -> None:
    """Drain with every replica at once (each in its own thread, on its own client)."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas))

    def run(worker: Worker) -> None:
        try:
            start.wait()
            worker.loop(drain=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not [t for t in threads if t.is_alive()], "a replica did not finish draining"
    assert not errors, errors


@pytest.mark.slow
def test_racing_identifies_across_replica_processes_keep_first_links(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """The same contested identifies through three worker processes running in parallel:
    no cycle, one direction per pair, two links per triangle, every link written once and
    the map exactly those writes, and the outcomes in the workers' final summaries add up."""
    c = real_redis
    rows, shape = _contested_links(random.Random(9), "p")
    rows = rows * 2
    names = {f"replica-{i}" for i in range(3)}
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                running_worker(
                    redis_server.url,
                    log_path=tmp_path / f"replica-{i}.log",
                    consumer=f"replica-{i}",
                    batch_size=1,
                    block_ms=100,
                    claim_idle_ms=3000,
                    claim_interval_ms=500,
                )
            )
            for i in range(3)
        ]

        def reading() -> bool:
            for i, proc in enumerate(procs):
                assert_running(proc, tmp_path / f"replica-{i}.log")
            return bool(c.exists(INPUT)) and names <= set(consumers(c))

        wait_for(reading, 30, "all three replicas reading")
        with record_alias_writes(redis_server.client) as writes:
            add_many(c, _identify_rows(rows))
            wait_group_done(c, 60)
        codes = [stop_gracefully(p, 15) for p in procs]
    assert codes == [0, 0, 0]

    links = alias_map(c, "acme")
    _check_forest(links, shape)
    _check_writes(writes, links)
    summaries = [stopped_summary(tmp_path / f"replica-{i}.log") for i in range(3)]
    totals = sum((Counter(s) for s in summaries), Counter())
    assert sum(totals[f"identify:{o}"] for o in OUTCOMES) == len(rows)
    assert totals["identify:applied"] == len(links)
    assert sum(1 for s in summaries if s.get("read", 0) > 0) >= 2, summaries
    assert c.xlen(OUTPUT) == 0 and c.xlen(DEAD) == 0


def test_identify_delivered_twice_is_counted_once(real_redis: redis.Redis) -> None:
    """An identify that two replicas both commit (a slow replica's batch was reclaimed) is
    counted under exactly one outcome: the duplicate commit adds no identify outcome, just as it
    emits nothing."""
    c = real_redis
    link_id = add(c, "acme", identify("real-x", "anon-a"))
    event_id = add(c, "acme", event("anon-a"))
    slow = make_worker(c, consumer="slow")
    fast = make_worker(c, consumer="fast")
    for w in (slow, fast):
        w.startup()
    held_by_slow = slow.stream.read(10, None)
    _, held_by_fast, _ = fast.stream.autoclaim(0, b"0-0", 10)
    assert [e[0].decode() for e in held_by_fast] == [link_id, event_id]

    fast.recovery.process(held_by_fast, counts=fast.stream.delivery_counts(held_by_fast))
    slow.recovery.process(held_by_slow)

    assert output_sources(c) == {event_id: 1}
    assert alias_map(c, "acme") == {"anon-a": "real-x"}
    assert slow.totals["duplicates"] == 2
    totals = fast.totals + slow.totals
    assert {o: totals[f"identify:{o}"] for o in OUTCOMES if totals[f"identify:{o}"]} == {
        "applied": 1
    }


def test_reclaimed_batch_that_stays_stale_is_left_pending_not_fatal(
    redis_server: RedisServer, real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reclaimed batch whose commit keeps finding its cached root relinked by another replica
    (a hot contested id) never takes the worker down: it is retried, or left pending for a
    later reclaim like a freshly read batch, and the event is emitted once, resolved to the
    chain end as it stood at its commit."""
    c = real_redis
    worker = make_worker(c, consumer="rescuer", claim_idle_ms=50, claim_interval_ms=20)
    worker.startup()
    add(c, "acme", event("u0"))
    worker.loop(drain=True)  # the cache now holds u0 as a root
    assert worker.cache.get("acme", "u0") == "u0"
    source = add(c, "acme", event("u0"))
    c.xreadgroup(GROUP, "crashed", {INPUT: ">"}, count=1)
    time.sleep(0.1)
    other_replica = Resolver(redis_server.client())
    relinked: list[str] = []
    commit = Committer.commit

    def racing_commit(committer: Committer, plan: Any) -> Any:
        if len(relinked) < STALE_RETRIES:  # another replica links the tip first
            tip, new_tip = f"u{len(relinked)}", f"u{len(relinked) + 1}"
            assert other_replica.link("acme", tip, new_tip) is LinkOutcome.APPLIED
            relinked.append(tip)
        return commit(committer, plan)

    monkeypatch.setattr(Committer, "commit", racing_commit)
    worker.loop(drain=True)

    assert 1 <= len(relinked) <= STALE_RETRIES
    assert resolved_by_source(c)[source] == f"u{len(relinked)}"
    assert output_sources(c)[source] == 1
    assert c.xpending(INPUT, GROUP)["pending"] == 0
