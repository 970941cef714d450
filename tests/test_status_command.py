"""``status`` on a real Redis: exact figures as JSON and as a table, an empty Redis, the
incremental dead-letter count under ``--watch`` and its clean exit on Ctrl-C; and every
operator command as stitch-admin (nothing refused) and as stitch-worker (refused, exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import redis

from tests.conftest import ROOT
from tests.helpers import DEAD, INPUT, add, drain, event, identify, settings
from tests.redis_proc import RedisServer
from tests.test_cli import cli
from worker import ConfigError, ops
from worker.ops.dead_letters import DeadLetters
from worker.ops.status import DeadLetterCounts, StreamState, entry_time, read_status

pytestmark = pytest.mark.redis_server


def seed(c: redis.Redis) -> None:
    """Two tenants' links (one map written by hand), three dead letters, and two entries
    pending on a consumer that crashed."""
    add(c, "acme", identify("cust-1", "anon-1"))
    add(c, "acme", event("anon-1"))
    add(c, "acme", event("u" * 40))
    add(c, "acme", "not json")
    add(c, "globex", event("short"), **{f"x{k}": "v" for k in range(8)})
    drain(c, max_id_bytes=30, max_fields=8)
    c.hset("alias:globex", mapping={"g-1": "g-2", "g-2": "g-3"})
    add(c, "acme", event("anon-2"))
    add(c, "acme", event("anon-3"))
    c.xreadgroup("stitch", "crashed", {INPUT: ">"})


def test_status_json_reports_exact_figures(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """Streams, group lag and pending, consumers, dead letters by code, links per tenant (the
    heights hashes are not maps), and the last commit: the newest output or dead-letter id."""
    c = real_redis
    seed(c)
    result = cli("status", "--json", env={"STITCH_REDIS_URL": redis_server.admin_url})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert [status[s]["length"] for s in ("input", "output", "dead")] == [7, 1, 3]
    group = status["group"]
    assert (group["name"], group["lag"], group["pending"]) == ("stitch", 0, 2)
    assert [(k["name"], k["pending"]) for k in group["consumers"]] == [
        ("crashed", 2),
        ("test-consumer", 0),
    ]
    assert status["dead_letters"] == {"event_not_json": 1, "id_too_long": 1, "too_many_fields": 1}
    assert status["links"] == {"acme": 1, "globex": 2}
    newest = max(c.xrevrange(s, count=1)[0][0].decode() for s in ("events:enriched", DEAD))
    assert status["last_commit_at"] == entry_time(newest).isoformat(timespec="milliseconds")
    assert status["last_commit_age_s"] >= 0


def test_status_table_for_people(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same reading as aligned tables."""
    seed(real_redis)
    capsys.readouterr()
    assert ops.status(settings(redis_url=redis_server.admin_url), as_json=False, watch=None) == 0
    lines = capsys.readouterr().out.splitlines()
    for expected in (
        "group stitch: lag 0, pending 2, last delivered "
        + real_redis.xinfo_groups(INPUT)[0]["last-delivered-id"].decode(),
        "  consumer       pending  idle",
        "dead letters: 3 in events:dead",
        "  event_not_json         1",
        "links: 3 in 2 alias maps",
        "  globex      2",
    ):
        assert expected in lines
    assert any(line.startswith("  input   events                 7  ") for line in lines)


def test_status_of_an_empty_redis(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """No streams, no group, no maps: zeros and nones, not an error."""
    reading = read_status(real_redis, settings())
    assert (reading.group, reading.dead_letters, reading.links) == (None, {}, {})
    assert reading.input == StreamState(name=INPUT, length=0, last_id=None, entries_added=None)
    assert reading.last_commit_at is None
    ops.status(settings(redis_url=redis_server.admin_url), as_json=False, watch=None)
    out = capsys.readouterr().out
    assert "last commit: none yet" in out
    assert "group: none on events yet (created when a worker starts)" in out


class CountingScans(DeadLetters):
    """Records where each scan of the dead stream starts."""

    starts: list[str]

    def scan(self, start: str, end: str, page: int = 200) -> Any:
        self.starts.append(start)
        return super().scan(start, end, page)


def dead_letter(c: redis.Redis, code: str) -> str:
    fields = {"tenant": "acme", "error": f"{code}: x", "error_code": code, "source_id": "1-1"}
    return str(c.xadd(DEAD, fields).decode())


def test_dead_letter_counts_read_only_what_was_added_until_something_is_removed(
    real_redis: redis.Redis,
) -> None:
    """Under --watch the dead stream is read whole once, then from the last entry seen; a
    removal (XDEL, a trim) makes the next reading count the whole stream again."""
    c = real_redis
    first = dead_letter(c, "event_not_json")
    scans = CountingScans(c, settings())
    scans.starts = []
    counts = DeadLetterCounts(scans)
    assert read_status(c, settings(), counts).dead_letters == {"event_not_json": 1}
    newest = dead_letter(c, "id_too_long")
    dead_letter(c, "id_too_long")
    assert read_status(c, settings(), counts).dead_letters == {
        "id_too_long": 2,
        "event_not_json": 1,
    }
    c.xdel(DEAD, first)
    assert read_status(c, settings(), counts).dead_letters == {"id_too_long": 2}
    ms, seq = newest.split("-")
    c.xtrim(DEAD, minid=f"{ms}-{int(seq) + 1}", approximate=False)
    assert read_status(c, settings(), counts).dead_letters == {"id_too_long": 1}
    assert scans.starts == ["-", "(" + first, "-", "-"]


def test_watch_refreshes_until_ctrl_c_and_exits_0(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """`status --watch` prints a new reading every SECONDS that sees new dead letters, and
    SIGINT ends it with exit 0 and no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "status", "--json", "--watch", "0.05"],
        env={**env, "STITCH_REDIS_URL": redis_server.admin_url},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["dead_letters"] == {}
        dead_letter(real_redis, "event_not_json")
        while json.loads(proc.stdout.readline())["dead_letters"] != {"event_not_json": 1}:
            pass
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert stderr == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_operator_commands_need_the_admin_user(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """As stitch-worker every operator command is refused (exit 2, naming stitch-admin) and
    nothing changes; as stitch-admin all of them run and Redis refuses it nothing."""
    c = real_redis
    seed(c)
    before = c.xrange(DEAD)
    refused = cli("status", env={"STITCH_REDIS_URL": redis_server.url})
    assert refused.returncode == 2
    assert "connect as stitch-admin" in refused.stderr
    worker = settings(redis_url=redis_server.url)
    for command in (
        lambda s: ops.list_dead_letters(s, code=None, tenant=None, as_json=True, limit=None),
        lambda s: ops.redrive(s, code=None, tenant=None, dry_run=False),
        lambda s: ops.purge(s, before="9999999999999-0", code=None, dry_run=False),
        lambda s: ops.purge(s, before="9999999999999-0", code="id_too_long", dry_run=False),
    ):
        with pytest.raises(ConfigError, match="connect as stitch-admin"):
            command(worker)
    assert c.xrange(DEAD) == before
    assert c.acl_log()
    c.acl_log_reset()
    config = settings(redis_url=redis_server.admin_url)
    assert ops.status(config, as_json=True, watch=None) == 0
    assert ops.list_dead_letters(config, code=None, tenant=None, as_json=False, limit=1) == 0
    assert ops.redrive(config, code=None, tenant="acme", dry_run=True) == 0
    assert ops.redrive(config, code=None, tenant="acme", dry_run=False) == 0
    assert ops.purge(config, before="9999999999999-0", code="too_many_fields", dry_run=False) == 0
    assert ops.purge(config, before="9999999999999-0", code=None, dry_run=False) == 0
    capsys.readouterr()
    assert c.acl_log() == []
    assert c.xlen(DEAD) == 0
