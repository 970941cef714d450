"""``dead-letters list|redrive|purge`` on a real Redis: the original fields go back on the
input stream exactly once (also across a killed and re-run command), the worker then emits
each once, what cannot be re-driven stays, and purge deletes exactly what it names."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import redis

from tests.conftest import ROOT
from tests.helpers import DEAD, INPUT, OUTPUT, add, drain, event, output, settings
from tests.redis_proc import RedisServer
from tests.test_cli import cli
from worker import ops
from worker.ops.dead_letters import PAGE, DeadLetters, Outcome

pytestmark = pytest.mark.redis_server

TIGHT = {"max_id_bytes": 30, "max_fields": 8}
"""The bounds of the 'client bug' era: long ids and extra fields are dead-lettered."""


def dead_lettered(c: redis.Redis, count: int) -> dict[str, list[bytes]]:
    """``count`` entries the worker dead-letters under TIGHT (every third without payload:
    too_many_fields), keyed by their marker field ``n``; the originals' flat fields."""
    for n in range(count):
        if n % 3 == 2:
            add(c, "globex", event("short"), n=str(n), **{f"x{k}": "v" for k in range(8)})
        else:
            add(c, "acme", event("u" * 40), n=str(n))
    drain(c, **TIGHT)
    assert c.xlen(DEAD) == count and c.xlen(OUTPUT) == 0
    return {_marker(fields): fields for _, fields in _raw(c, INPUT)}


def _raw(c: redis.Redis, stream: str) -> list[tuple[bytes, list[bytes]]]:
    """XRANGE with flat field lists: order and any repeated name kept."""
    flat = redis.Redis(connection_pool=c.connection_pool)
    flat.set_response_callback("XRANGE", lambda response, **_: response)
    return [(eid, fields) for eid, fields in flat.execute_command("XRANGE", stream, "-", "+")]


def _marker(fields: list[bytes]) -> str:
    return dict(zip(fields[::2], fields[1::2], strict=True))[b"n"].decode()


def copies(c: redis.Redis, originals: dict[str, list[bytes]]) -> Counter[str]:
    """How often each original's fields were put back on the input (beyond the original)."""
    seen = Counter(_marker(fields) for _, fields in _raw(c, INPUT))
    for _, fields in _raw(c, INPUT)[len(originals) :]:
        assert fields == originals[_marker(fields)]  # byte for byte, order kept
    return Counter({n: seen[n] - 1 for n in originals})


def admin(server: RedisServer, **overrides: Any) -> Any:
    return settings(redis_url=server.admin_url, **overrides)


def test_redrive_puts_the_original_fields_back_and_the_worker_emits_each_once(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters with payload and without (re-read from the source entry) go back with
    their original fields only; after the fix (wider bounds) a drain emits each exactly once
    and the dead stream is empty."""
    c = real_redis
    originals = dead_lettered(c, 9)
    capsys.readouterr()  # the worker's log lines
    assert ops.redrive(admin(redis_server), code=None, tenant=None, dry_run=False) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "re-drove 9 of 9 matching dead letters onto events"
    assert "too_many_fields  redriven        3" in out
    assert copies(c, originals) == Counter({n: 1 for n in originals})
    assert c.xlen(DEAD) == 0
    drain(c)  # default bounds: the fix
    emitted = output(c)
    assert sorted(e["n"] for e in emitted) == sorted(originals)
    assert len({e["source_id"] for e in emitted}) == 9
    assert c.xlen(DEAD) == 0


def test_redrive_killed_after_one_page_and_run_again_redrives_each_once(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """SIGKILL at a known point: the command's stderr is a pipe filled to the brim, so it
    blocks writing its first progress line, right after the first page's script. Exactly
    one page is re-driven; the re-run re-drives the rest; every entry is back once and the
    worker emits each once."""
    c = real_redis
    originals = dead_lettered(c, 3 * PAGE + 7)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, os.O_NONBLOCK)
    for size in (4096, 1):
        with pytest.raises(BlockingIOError):
            while True:
                os.write(write_end, b"x" * size)
    fcntl.fcntl(write_end, fcntl.F_SETFL, 0)
    last_original = c.xrevrange(INPUT, count=1)[0][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "dead-letters", "redrive"],
        env={**env, "STITCH_REDIS_URL": redis_server.admin_url},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    try:  # the first page's copies appear on the input at once: its script is atomic
        assert c.xread({INPUT: last_original}, count=1, block=60_000)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        os.close(read_end)
    assert c.xlen(DEAD) == len(originals) - PAGE
    assert sum(copies(c, originals).values()) == PAGE
    again = cli("dead-letters", "redrive", env={"STITCH_REDIS_URL": redis_server.admin_url})
    assert again.returncode == 0, again.stderr
    rest = len(originals) - PAGE
    assert again.stdout.startswith(f"re-drove {rest:,} of {rest:,} matching dead letters")
    assert copies(c, originals) == Counter({n: 1 for n in originals})
    drain(c)
    assert Counter(e["n"] for e in output(c)) == Counter({n: 1 for n in originals})


def test_the_script_redrives_an_entry_at_most_once(real_redis: redis.Redis) -> None:
    """The same id twice in one call, and again in a later call: re-driven once, then gone."""
    c = real_redis
    originals = dead_lettered(c, 2)
    dead = DeadLetters(c, settings())
    ids = [eid.decode() for eid, _ in c.xrange(DEAD)]
    first = dead.redrive([ids[0], ids[0], ids[1]])
    assert [o for o, _ in first] == [Outcome.REDRIVEN, Outcome.GONE, Outcome.REDRIVEN]
    assert all(new for o, new in first if o is Outcome.REDRIVEN)
    assert dead.redrive(ids) == [(Outcome.GONE, None), (Outcome.GONE, None)]
    assert copies(c, originals) == Counter({n: 1 for n in originals})


def test_what_cannot_be_redriven_stays_and_the_dry_run_says_so(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead letter without payload whose source was trimmed, an entry that is not a dead
    letter, and one with more values than an XADD from Lua carries are left in place; the
    dry run predicts exactly what the run then does, and changes nothing."""
    c = real_redis
    dead_lettered(c, 3)  # n=2 has no payload
    capsys.readouterr()
    [(trimmed_source, _)] = [(e, f) for e, f in _raw(c, INPUT) if _marker(f) == "2"]
    c.xdel(INPUT, trimmed_source)
    c.xadd(DEAD, {"note": "written by hand"})
    many = {"tenant": "acme", **{f"f{k}": "v" for k in range(3960)}}
    c.xadd(DEAD, {**many, "error": "x: y", "error_code": "event_not_json", "source_id": "1-1"})
    before = c.xrange(DEAD)
    config = admin(redis_server)
    assert ops.redrive(config, code=None, tenant=None, dry_run=True) == 0
    dry = capsys.readouterr().out
    assert c.xrange(DEAD) == before and c.xlen(INPUT) == 2
    assert ops.redrive(config, code=None, tenant=None, dry_run=False) == 0
    real = capsys.readouterr().out
    assert dry.replace("would re-drive", "re-drove") == real
    assert real.splitlines() == [
        "re-drove 2 of 5 matching dead letters onto events",
        "  error_code       outcome            entries",
        "  -                not_a_dead_letter        1",
        "  event_not_json   too_many_fields          1",
        "  id_too_long      redriven                 2",
        "  too_many_fields  source_trimmed           1",
    ]
    assert c.xlen(DEAD) == 3


def test_list_and_redrive_filter_by_code_and_tenant(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--code and --tenant select the same dead letters for list and redrive; a dead letter
    without payload takes its tenant from its source entry."""
    c = real_redis
    originals = dead_lettered(c, 6)
    capsys.readouterr()
    config = admin(redis_server)
    ops.list_dead_letters(config, code=None, tenant="globex", as_json=True, limit=None)
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["error_code"], r["payload"], r["tenant"]) for r in listed] == [
        ("too_many_fields", "source", "globex")
    ] * 2
    assert [r["fields"][r["fields"].index("n") + 1] for r in listed] == ["2", "5"]
    ops.list_dead_letters(config, code="id_too_long", tenant=None, as_json=False, limit=3)
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["id", "error_code", "tenant", "source_id", "error"]
    assert [line.split()[1:3] for line in text[1:]] == [["id_too_long", "acme"]] * 3
    ops.redrive(config, code=None, tenant="globex", dry_run=False)
    assert sorted(n for n, k in copies(c, originals).items() if k) == ["2", "5"]
    assert c.xlen(DEAD) == 4


def test_purge_deletes_exactly_the_older_dead_letters(
    redis_server: RedisServer, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--before an id deletes every older dead letter (XTRIM MINID), --code only those of
    that code, --dry-run counts without deleting; the CLI takes ISO times too."""
    c = real_redis
    dead_lettered(c, 6)
    capsys.readouterr()
    ids = [eid.decode() for eid, _ in c.xrange(DEAD)]
    config = admin(redis_server)
    ops.purge(config, before=ids[4], code="too_many_fields", dry_run=True)
    assert capsys.readouterr().out.startswith("would purge 1 of 6 dead letters, those older")
    ops.purge(config, before=ids[4], code="too_many_fields", dry_run=False)
    assert [e.decode() for e, _ in c.xrange(DEAD)] == [*ids[:2], *ids[3:]]
    ops.purge(config, before=ids[4], code=None, dry_run=False)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"purged 3 of 5 dead letters, those older than {ids[4]}"
    )
    assert [e.decode() for e, _ in c.xrange(DEAD)] == ids[4:]
    everything = cli(
        "dead-letters", "purge", "--before", "2999-01-01T00:00:00Z",
        env={"STITCH_REDIS_URL": redis_server.admin_url},
    )  # fmt: skip
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout == ("purged 2 of 2 dead letters, those older than 32472144000000-0\n")
    assert c.xlen(DEAD) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--code", "nope"], "argument --code: 'nope' is not an error_code"),
        (["purge", "--before", "yesterday"], "argument --before: 'yesterday' is neither"),
        (["purge"], "the following arguments are required: --before"),
    ],
)
def test_bad_arguments_exit_2_naming_them(args: list[str], message: str) -> None:
    """Usage errors name the argument and what is wrong with it."""
    result = cli("dead-letters", *args)
    assert result.returncode == 2
    assert message in result.stderr


LAST_ID = "18446744073709551615-18446744073709551615"
REDRIVE_FAULTS = {
    "input not a stream": (
        lambda c: c.delete(INPUT) and c.hset(INPUT, "a", "b"),
        "WRONGTYPE events holds a hash",
    ),
    "dead not a stream": (
        lambda c: c.delete(DEAD) and c.set(DEAD, "x"),
        "WRONGTYPE events:dead holds a string",
    ),
    "input out of ids": (
        lambda c: c.xadd(INPUT, {"a": "b"}, id=LAST_ID),
        "events has handed out the last possible id",
    ),
    "out of memory at the first write": (
        lambda c: c.config_set("maxmemory-policy", "noeviction") and c.config_set("maxmemory", 1),
        "command not allowed when used memory",
    ),
}


@pytest.mark.parametrize("fault", REDRIVE_FAULTS)
def test_redrive_script_refuses_before_any_write(real_redis: redis.Redis, fault: str) -> None:
    """What would make the script's XADD or XDEL fail is found before its first write, so a
    refused page changes nothing (Redis keeps a failed script's earlier writes)."""
    c = real_redis
    dead_lettered(c, 3)
    ids = [eid.decode() for eid, _ in c.xrange(DEAD)]
    cause, message = REDRIVE_FAULTS[fault]
    cause(c)
    before = {key: c.dump(key) for key in sorted(c.keys("*"))}
    try:
        with pytest.raises(redis.ResponseError, match=message):
            DeadLetters(c, settings()).redrive(ids)
        assert {key: c.dump(key) for key in sorted(c.keys("*"))} == before
    finally:
        c.config_set("maxmemory", 0)


def test_every_write_of_redrive_lua_has_a_fault_case() -> None:
    """redrive.lua writes with XADD (input) and XDEL (dead) only, both after every check."""
    source = (ROOT / "worker/lua/redrive.lua").read_text()
    writes = [w for w in ("XADD", "XDEL", "XTRIM", "DEL", "HSET") if f"'{w}'" in source]
    assert writes == ["XADD", "XDEL"]
    first_write = source.index("redis.call('XADD'")
    assert "redis.call('XRANGE'" not in source[first_write:]
    assert "error_reply" not in source[first_write:]
