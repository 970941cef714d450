"""Chaos: three worker processes, one SIGKILLed at random and restarted under a new consumer
name (or SIGSTOPped past the claim idle time and resumed), while a producer adds identifies
and events for several tenants."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from resolver.feed import fold, read_changes
from resolver.provenance import parse_provenance
from tests.conftest import running_worker
from tests.fault_tools import (
    add_many,
    alias_map,
    assert_running,
    consumers,
    log_lines,
    output_sources,
    stop_gracefully,
    wait_for,
    wait_group_done,
)
from tests.helpers import DEAD, INPUT, OUTPUT, event, identify
from tests.model import AliasModel
from tests.redis_proc import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

TENANTS = ("t0", "t1", "t2", "t3")
ROUNDS = 16
EVENTS_PER_ROUND = 360
CHUNK = 60
PAUSE_SHARE = 0.4
PAUSE_S = 1.6
"""Longer than STITCH_CLAIM_IDLE_MS plus one claim interval: what it holds gets reclaimed."""
MAX_CHAIN = 8
WORKER_SETTINGS: dict[str, object] = {
    "batch_size": 50,
    "block_ms": 200,
    "claim_idle_ms": 1000,
    "claim_interval_ms": 300,
    "consumer_idle_ms": 4000,
    "max_deliveries": 1000,
    "shutdown_timeout_s": 10,
}


@dataclass
class Traffic:
    """Generates identifies whose outcome cannot depend on which replica commits first.

    Per round and tenant: fresh links (prevs distinct and unlinked, acyclic together with
    everything before), links that must conflict (prev linked in an earlier round), links
    that must close a cycle (prev is the root an earlier chain leads to, kept unlinked this
    round), repeats, self-links and placeholders. The producer waits for a round's fresh
    links to be stored before sending the next round, so every event knows the least
    advanced alias map it may be resolved against.
    """

    rng: random.Random
    model: AliasModel = field(default_factory=AliasModel)
    nodes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    serial: int = 0

    def new_id(self, tenant: str, kind: str) -> str:
        self.serial += 1
        uid = f"{kind}-{self.serial}"
        self.nodes[tenant].append(uid)
        return uid

    def round_links(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        """(every identify as (tenant, prev, user)) and (the fresh ones), in stream order."""
        rows: list[tuple[str, str, str, str]] = []
        for tenant in TENANTS:
            rows.extend((tenant, *link) for link in self._tenant_links(tenant))
        self.rng.shuffle(rows)
        for tenant, prev, user, expected in rows:
            assert self.model.link(tenant, prev, user) == expected, (tenant, prev, user)
        links = [(t, p, u) for t, p, u, _ in rows]
        fresh = [(t, p, u) for t, p, u, expected in rows if expected == "applied"]
        return links, fresh

    def _tenant_links(self, tenant: str) -> list[tuple[str, str, str]]:
        rng, model = self.rng, self.model
        linked = model.snapshot(tenant)
        out: list[tuple[str, str, str]] = []
        reserved: set[str] = set()
        if linked:
            prev = rng.choice(sorted(linked))
            other = rng.choice([n for n in self.nodes[tenant] if n not in (prev, linked[prev])])
            out += [(prev, other, "conflict"), (prev, linked[prev], "noop")]
            start = rng.choice(sorted(linked))
            root = model.resolve(tenant, start)
            reserved.add(root)
            out.append((root, start, "cycle"))
        if self.nodes[tenant]:
            some = rng.choice(self.nodes[tenant])
            out += [
                (some, some, "noop"),
                ("null", some, "placeholder"),
                (some, "anonymous", "placeholder"),
            ]
        union = dict(linked)
        for _ in range(6):
            link = self._fresh(tenant, union, reserved)
            if link is not None:
                union[link[0]] = link[1]
                reserved.add(link[0])
                out.append((*link, "applied"))
        return out

    def _fresh(
        self, tenant: str, union: dict[str, str], reserved: set[str]
    ) -> tuple[str, str] | None:
        rng = self.rng
        for _ in range(20):
            roots = [n for n in self.nodes[tenant] if n not in union and n not in reserved]
            prev = rng.choice(roots) if roots and rng.random() < 0.6 else None
            prev = prev or self.new_id(tenant, "anon")
            user = (
                rng.choice(self.nodes[tenant])
                if rng.random() < 0.5
                else self.new_id(tenant, "user")
            )
            if user == prev or _end(union, user) == prev:
                continue
            trial = {**union, prev: user}
            if max(len(_chain(trial, n)) for n in trial) <= MAX_CHAIN:
                return prev, user
        return None

    def events(self, n: int) -> list[tuple[str, str, str]]:
        """(tenant, user_id, least advanced end it may resolve to) for n events."""
        out = []
        for _ in range(n):
            tenant = self.rng.choice(TENANTS)
            if self.nodes[tenant] and self.rng.random() < 0.7:
                uid = self.rng.choice(self.nodes[tenant])
            else:
                uid = self.new_id(tenant, "anon")
            out.append((tenant, uid, self.model.resolve(tenant, uid)))
        return out


def _chain(links: dict[str, str], uid: str) -> list[str]:
    path = [uid]
    while path[-1] in links:
        path.append(links[path[-1]])
    return path


def _end(links: dict[str, str], uid: str) -> str:
    return _chain(links, uid)[-1]


def _produce(client: redis.Redis, traffic: Traffic, sent: dict[str, tuple[str, str, str]]) -> None:
    for _ in range(ROUNDS):
        links, fresh = traffic.round_links()
        add_many(client, [(t, identify(u, p)) for t, p, u in links])

        def stored(fresh: list[tuple[str, str, str]] = fresh) -> bool:
            pipe = client.pipeline(transaction=False)
            for tenant, prev, _ in fresh:
                pipe.hget(f"alias:{tenant}", prev)
            return [v.decode() if v else None for v in pipe.execute()] == [u for *_, u in fresh]

        wait_for(stored, 60, "a round's fresh links to be stored", interval=0.05)
        batch = traffic.events(EVENTS_PER_ROUND)
        for chunk in range(0, len(batch), CHUNK):
            rows = batch[chunk : chunk + CHUNK]
            ids = add_many(client, [(t, event(u)) for t, u, _ in rows])
            sent.update(zip(ids, rows, strict=True))
            time.sleep(0.15)


class Replicas:
    """Three worker processes; SIGKILL + restart under a new name, or SIGSTOP + SIGCONT."""

    def __init__(self, stack: contextlib.ExitStack, url: str, logs: Path) -> None:
        self.stack, self.url, self.logs = stack, url, logs
        self.names = [f"w{i}-g0" for i in range(3)]
        self.procs = [self._start(name) for name in self.names]
        self.kills = self.pauses = 0

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        return self.stack.enter_context(
            running_worker(
                self.url, log_path=self.logs / f"{name}.log", consumer=name, **WORKER_SETTINGS
            )
        )

    def victim(self, client: redis.Redis, rng: random.Random) -> int:
        """A replica holding pending entries if one shows up within 0.3 s, else any."""
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pending = consumers(client)
            busy = [i for i, name in enumerate(self.names) if pending.get(name, 0) > 0]
            if busy:
                return rng.choice(busy)
            time.sleep(0.002)
        return rng.randrange(len(self.names))

    def kill_and_restart(self, slot: int) -> None:
        self.procs[slot].kill()
        self.procs[slot].wait()
        self.kills += 1
        self.names[slot] = f"w{slot}-g{self.kills}"
        self.procs[slot] = self._start(self.names[slot])

    def pause(self, slot: int) -> None:
        """A stalled replica (GC pause, stolen CPU) that wakes up after others reclaimed."""
        self.procs[slot].send_signal(signal.SIGSTOP)
        time.sleep(PAUSE_S)
        self.procs[slot].send_signal(signal.SIGCONT)
        self.pauses += 1

    def stop_all(self) -> list[int]:
        for name in self.names:  # a SIGTERM before the handlers are installed just kills
            log = self.logs / f"{name}.log"
            wait_for(
                lambda log=log: any(line.get("event") == "started" for line in log_lines(log)),
                30,
                f"{name} started",
            )
        return [stop_gracefully(p, 15) for p in self.procs]


def _wrong_resolutions(
    client: redis.Redis, model: AliasModel, sent: dict[str, tuple[str, str, str]]
) -> list[tuple[str, ...]]:
    """Outputs whose resolved id is off the user's final chain, or before the chain end
    that was already stored when the event was added."""
    wrong = []
    for _, fields in client.xrange(OUTPUT):
        source = fields[b"source_id"].decode()
        tenant, uid, least = sent[source]
        chain = model.path(tenant, uid)
        resolved = fields[b"resolved_user_id"].decode()
        if resolved not in chain or chain.index(resolved) < chain.index(least):
            wrong.append((source, tenant, uid, resolved, " -> ".join(chain), least))
    return wrong


def test_chaos_sigkill_and_restart_replicas_keeps_exactly_once(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """With replicas SIGKILLed at random and restarted under new consumer names, or SIGSTOPped
    past the claim idle time and resumed, while traffic flows: every event is emitted exactly
    once, the alias map equals the reference model's, and each event resolves to an id on its
    user's final chain at least as far along as the chain end when the event was added."""
    c, rng = real_redis, random.Random(20240611)
    traffic = Traffic(random.Random(7))
    sent: dict[str, tuple[str, str, str]] = {}
    errors: list[BaseException] = []

    def producer() -> None:
        client = redis_server.client()
        try:
            _produce(client, traffic, sent)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    with contextlib.ExitStack() as stack:
        replicas = Replicas(stack, redis_server.url, tmp_path)

        def reading() -> bool:
            for name, proc in zip(replicas.names, replicas.procs, strict=True):
                assert_running(proc, tmp_path / f"{name}.log")
            return bool(c.exists(INPUT)) and set(replicas.names) <= set(consumers(c))

        wait_for(reading, 30, "all three replicas reading")
        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        while thread.is_alive():
            time.sleep(rng.uniform(0.2, 1.0))
            slot = replicas.victim(c, rng)
            if rng.random() < PAUSE_SHARE:
                replicas.pause(slot)
            else:
                replicas.kill_and_restart(slot)
        thread.join()
        assert not errors, errors
        wait_group_done(c, 90)
        assert replicas.stop_all() == [0, 0, 0]
    assert replicas.kills >= 4 and replicas.pauses >= 2
    reclaims = [
        line
        for log in tmp_path.glob("*.log")
        for line in log_lines(log)
        if line.get("event") == "reclaimed idle entries"
    ]
    assert reclaims, "no replica left entries behind: the chaos did not bite"

    counts = output_sources(c)
    duplicated = {i: n for i, n in counts.items() if n != 1}
    assert not duplicated, f"{len(duplicated)} events emitted more than once"
    assert set(counts) == set(sent), (
        f"missing {len(set(sent) - set(counts))}, unexpected {len(set(counts) - set(sent))}"
    )
    assert c.xlen(DEAD) == 0
    for tenant in TENANTS:
        assert alias_map(c, tenant) == traffic.model.snapshot(tenant), tenant
    wrong = _wrong_resolutions(c, traffic.model, sent)
    assert not wrong, f"{len(wrong)} stale or foreign resolutions, e.g. {wrong[:3]}"
    _check_accountable(c)


def _check_accountable(c: redis.Redis) -> None:
    """0 missing and 0 duplicate change-feed entries (one per link, folding to the maps), 0
    links without provenance, each naming the identify that asked for exactly that link."""
    changes = list(read_changes(c, "alias:changes"))
    maps = {tenant: alias_map(c, tenant) for tenant in TENANTS}
    linked = Counter((change.tenant, change.previous_user_id) for change in changes)
    assert not [key for key, n in linked.items() if n > 1], "duplicate feed entries"
    assert fold(changes) == {tenant: links for tenant, links in maps.items() if links}
    fed = {(ch.tenant, ch.previous_user_id): ch.source_id for ch in changes}
    for tenant, links in maps.items():
        records = c.hgetall(f"alias:{tenant}:provenance")
        assert {k.decode() for k in records} == set(links), f"{tenant}: links without provenance"
        for prev, record in records.items():
            provenance = parse_provenance(record)
            assert provenance is not None and fed[tenant, prev.decode()] == provenance.source_id
            [(_, fields)] = c.xrange(INPUT, provenance.source_id, provenance.source_id)
            asked = json.loads(fields[b"event"])
            assert (asked["previous_user_id"], asked["user_id"]) == (
                prev.decode(),
                links[prev.decode()],
            )
