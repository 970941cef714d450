"""A live Redis refusing the worker's commands (OOM, READONLY, LOADING) under a running worker
process: it never exits, reports not-ready meanwhile, and drains every event exactly once
when the condition clears."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import running_worker
from tests.fault_tools import (
    add_many,
    alias_map,
    assert_running,
    group_state,
    log_lines,
    output_sources,
    stop_gracefully,
    wait_for,
    wait_group_done,
)
from tests.helpers import DEAD, OUTPUT, event, identify
from tests.redis_proc import RedisServer, free_port
from tests.test_operating import get, sample

pytestmark = pytest.mark.redis_server

BACKLOG = 20_000


@contextlib.contextmanager
def serving(server: RedisServer, log: Path, **settings: object) -> Iterator[tuple[object, str]]:
    """A worker process on ``server`` with its probes on loopback, ready."""
    port = free_port()
    with running_worker(
        server.url,
        log_path=log,
        consumer="w",
        block_ms=100,
        metrics_port=port,
        metrics_addr="127.0.0.1",
        reconnect_give_up_s=5,  # a refusing Redis must be waited out past it
        shutdown_timeout_s=10,
        **settings,
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "the worker to be ready")
        yield proc, base


def errors(base: str, kind: str) -> float:
    return sample(get(base + "/metrics")[1], f'stitch_redis_errors_total{{kind="{kind}"}}') or 0.0


def refusal_survived(
    server: RedisServer,
    tmp_path: Path,
    kind: str,
    refuse: Callable[[], None],
    accept: Callable[[], None],
    **settings: object,
) -> None:
    """A backlog; ``refuse()`` (in a thread, mid-drain); wait until the worker met the
    refusal a few times (not ready, alive); ``accept()``: the backlog drains, every event
    exactly once, one log line at the start and one at the end, both naming ``kind``."""
    client, log = server.client(), tmp_path / "worker.log"
    rows = []
    for i in range(BACKLOG // 2):  # under OOM, Redis refuses only a batch that links first
        rows += [("acme", identify(f"real-{i}", f"anon-{i}")), ("acme", event(f"anon-{i}"))]
    expected = add_many(client, rows)[1::2]
    refuse()
    with serving(server, log, **settings) as (proc, base):
        wait_for(lambda: errors(base, kind) >= 3, 60, f"the worker to meet {kind} a few times")
        # not ready while refused (under OOM some batches still commit: it may flap)
        wait_for(lambda: get(base + "/readyz")[0] == 503, 30, "/readyz to report not ready")
        assert get(base + "/healthz")[0] == 200
        assert_running(proc, log)  # type: ignore[arg-type]
        accept()
        wait_group_done(client, 60)
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "the worker to be ready again")
        assert stop_gracefully(proc, 15) == 0  # type: ignore[arg-type]
    counts = output_sources(client)
    assert not {i: n for i, n in counts.items() if n != 1}, "events emitted more than once"
    assert set(counts) == set(expected)
    assert client.xlen(DEAD) == 0
    assert group_state(client)["pending"] == 0
    assert alias_map(client, "acme") == {f"anon-{i}": f"real-{i}" for i in range(BACKLOG // 2)}
    resolved = {f[b"resolved_user_id"] for _, f in client.xrange(OUTPUT)}
    assert resolved == {f"real-{i}".encode() for i in range(BACKLOG // 2)}
    lines = log_lines(log)
    started = [ln for ln in lines if ln.get("event") == "redis refusing commands, retrying"]
    ended = [ln for ln in lines if ln.get("event") == "redis accepting commands again"]
    # one line as each outage starts, one as it ends; under OOM a batch whose first write
    # frees memory (an XACK, an HDEL) still commits, so the worker may go in and out of it
    assert started
    assert [ln["kind"] for ln in started] == [kind] * len(started)
    assert [(ln["kind"], ln["reason"]) for ln in ended] == [(kind, ln["error"]) for ln in started]
    client.close()


def in_a_while(admin: redis.Redis, change: Callable[[], None]) -> Callable[[], None]:
    """A thread that waits for the worker to emit a few batches, then ``change()``s Redis:
    the change comes mid-drain."""

    def refuse() -> None:
        def later() -> None:
            wait_for(lambda: admin.xlen(OUTPUT) >= 200, 30, "the drain to start", interval=0.001)
            change()

        threading.Thread(target=later, daemon=True).start()

    return refuse


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_oom_is_waited_out(server: RedisServer, tmp_path: Path) -> None:
    """maxmemory reached under noeviction mid-backlog, then raised: nothing lost, nothing
    twice, the worker never exited."""
    admin = server.client()
    admin.config_set("maxmemory-policy", "noeviction")

    def full() -> None:  # maxmemory now far below what Redis holds
        admin.config_set("maxmemory", 1)

    refusal_survived(
        server,
        tmp_path,
        "oom",
        in_a_while(admin, full),
        lambda: admin.config_set("maxmemory", 0),
        batch_size=2,  # slow enough for Redis to fill up mid-drain
    )


def test_readonly_is_waited_out(server: RedisServer, tmp_path: Path) -> None:
    """The worker's Redis turned into a replica (of a Redis that is not there) under load,
    then back into a primary: the same."""
    admin, nowhere = server.client(), free_port()
    refusal_survived(
        server,
        tmp_path,
        "readonly",
        in_a_while(admin, lambda: admin.execute_command("REPLICAOF", "127.0.0.1", str(nowhere))),
        lambda: admin.execute_command("REPLICAOF", "NO", "ONE"),
        batch_size=2,  # slow enough for the change to come mid-drain
    )


@pytest.mark.slow
def test_loading_is_waited_out(tmp_path: Path) -> None:
    """Redis restarted on an AOF that takes seconds to load, under a running worker: the
    outage turns from a lost link into LOADING (logged once), the worker reconnects once
    the data is in, and the backlog drains exactly once with every link kept."""
    server = RedisServer(appendonly=True, extra=["--loading-process-events-interval-bytes", "1024"])
    server.start()
    try:
        client, log = server.client(), tmp_path / "worker.log"
        client.mset({f"filler:{n}": n for n in range(20_000)})
        client.bgrewriteaof()  # the filler goes to an RDB base file: key-load-delay applies
        wait_for(lambda: not client.info("persistence")["aof_rewrite_in_progress"], 30, "rewrite")
        rows = []
        for i in range(1000):
            rows += [("acme", identify(f"real-{i}", f"anon-{i}")), ("acme", event(f"anon-{i}"))]
        expected = add_many(client, rows)[1::2]
        plain = f"redis://127.0.0.1:{server.port}/0"  # the ACL users are not in the AOF
        with running_worker(
            plain, log_path=log, consumer="w", batch_size=20, block_ms=100, reconnect_give_up_s=60
        ) as proc:
            wait_for(lambda: client.xlen(OUTPUT) >= 100, 30, "the drain to start", interval=0.001)
            server.kill()
            client.close()
            server.extra += ["--key-load-delay", "200"]  # 20,000 keys: about 4 s of LOADING
            server.start()
            client = server.client()
            wait_group_done(client, 60)
            assert_running(proc, log)
            assert stop_gracefully(proc, 15) == 0
        counts = output_sources(client)
        assert not {i: n for i, n in counts.items() if n != 1}, "events emitted more than once"
        assert set(counts) == set(expected)
        assert alias_map(client, "acme") == {f"anon-{i}": f"real-{i}" for i in range(1000)}
        lines = log_lines(log)
        changed = [ln["kind"] for ln in lines if ln.get("event") == "redis outage changed"]
        assert changed == ["loading"]
        ended = [ln for ln in lines if ln.get("event") == "redis reconnected"]
        assert [ln["kind"] for ln in ended] == ["loading"]
        client.close()
    finally:
        server.stop()
