"""The two ACL users: the worker's rules are enough for the whole contract and no more than
it needs, and what only an operator may do is refused to the worker's credentials."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from tests.conftest import ROOT, running_worker
from tests.fault_tools import GROUP
from tests.helpers import DEAD, INPUT, OUTPUT, add, event, identify, output, settings
from tests.redis_proc import (
    ADMIN_PASSWORD,
    WORKER_PASSWORD,
    RedisServer,
    apply_acl_users,
)
from tests.test_cli import cli
from worker import Metrics, Settings, Worker
from worker.acl import (
    ADMIN_USER,
    HEIGHTS_COMMANDS,
    WORKER_COMMANDS,
    WORKER_USER,
    acl_lines,
    key_patterns,
    setuser_args,
    worker_rules,
)
from worker.cli import resolve
from worker.connection import connect

pytestmark = pytest.mark.redis_server

CONSUMER = "w"


def seed(c: redis.Redis) -> dict[str, str]:
    """Input and group state that drive every path of the daemon: a crashed consumer's
    pending entries (one reclaimable, one poison, one deleted while pending), an entry
    pending on the worker's own name, new entries, an idle empty consumer."""
    c.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    ids = {
        "reclaimed": add(c, "acme", event("anon-1")),
        "poison": add(c, "acme", event("anon-2")),
        "deleted": add(c, "acme", event("anon-3")),
    }
    c.xreadgroup(GROUP, "gone", {INPUT: ">"}, count=3)
    c.xclaim(INPUT, GROUP, "gone", 0, [ids["reclaimed"], ids["deleted"]], idle=600_000)
    c.xclaim(INPUT, GROUP, "gone", 0, [ids["poison"]], idle=600_000, retrycount=10)
    c.xdel(INPUT, ids["deleted"])
    ids["own"] = add(c, "acme", identify("cust-1", "anon-1"))
    c.xreadgroup(GROUP, CONSUMER, {INPUT: ">"}, count=1)
    ids["after"] = add(c, "acme", event("anon-1"))
    ids["bad"] = add(c, "acme", "not json")
    ids["placeholder"] = add(c, "acme", identify("cust-1", "anonymous"))
    c.hset("alias:acme", "old-anon", "anon-9")  # by another program: measured at start
    ids["chained"] = add(c, "acme", identify("cust-1", "anon-9"))  # anon-9 loses its height
    ids["old"] = add(c, "acme", event("old-anon"))
    c.xgroup_createconsumer(INPUT, GROUP, "idle")
    c.hset("alias:acme:removals", "", 1)  # an unlink happened: identifies check for blocks
    c.hset("alias:blob:sizes", "", 1)  # a tenant capped at 1 id per component: a link is held
    ids["held"] = add(c, "blob", identify("shared", "anon-b"))
    return ids


SCENARIO = {
    "consumer": CONSUMER,
    "consumer_idle_ms": 1,
    "claim_interval_ms": 1,
    "wait_replicas": 1,  # WAIT behind each commit (no replica here: 1 ms, then counted short)
    "wait_timeout_ms": 1,
}


def check_outcome(c: redis.Redis, ids: dict[str, str]) -> None:
    """Each event emitted once and resolved through the identify; the poison and the bad
    entry dead-lettered; the placeholder link refused; nothing pending; idle consumers gone."""
    assert {e["source_id"]: e["resolved_user_id"] for e in output(c)} == {
        ids["reclaimed"]: "cust-1",
        ids["after"]: "cust-1",
        ids["old"]: "cust-1",
    }
    assert {e["source_id"]: e["error_code"] for e in output(c, DEAD)} == {
        ids["poison"]: "max_deliveries_exceeded",
        ids["bad"]: "event_not_json",
    }
    assert c.hgetall("alias:acme") == {
        b"anon-1": b"cust-1",
        b"old-anon": b"anon-9",
        b"anon-9": b"cust-1",
    }
    assert c.hgetall("alias:acme:heights") == {b"": b"3", b"cust-1": b"2"}
    held = c.hgetall("alias:blob:quarantine")
    assert list(held) == [b"anon-b"]
    assert held[b"anon-b"].split(b" ")[:2] == [b"shared", ids["held"].encode()]
    assert c.hgetall("alias:blob") == {}
    assert c.xpending(INPUT, GROUP)["pending"] == 0
    assert [info["name"] for info in c.xinfo_consumers(INPUT, GROUP)] == [CONSUMER.encode()]


def denials(c: redis.Redis) -> list[str]:
    """What ACL LOG recorded as refused (`command|sub` or a key), oldest first."""
    return [str(entry["object"]) for entry in reversed(c.acl_log())]


@pytest.fixture
def acl_log(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    """A flushed server with an empty ACL LOG; the README's users are restored afterwards."""
    real_redis.acl_log_reset()
    yield real_redis
    apply_acl_users(real_redis)
    real_redis.acl_log_reset()


def test_worker_user_runs_the_whole_contract(
    redis_server: RedisServer, acl_log: redis.Redis, tmp_path: Path
) -> None:
    """`python -m worker run --drain` and `resolve` as stitch-worker: events emitted and
    resolved, identify applied, dead letters, own-pending recovery, reclaim, deleted pending
    entries, idle consumer removal; and Redis refused it nothing (empty ACL LOG)."""
    c = acl_log
    ids = seed(c)
    assert redis_server.url.startswith(f"redis://{WORKER_USER}:")
    log = tmp_path / "w.log"
    with running_worker(redis_server.url, "--drain", log_path=log, block_ms=50, **SCENARIO) as proc:
        assert proc.wait(timeout=60) == 0, log.read_text()
    check_outcome(c, ids)
    summary = json.loads(log.read_text().splitlines()[-1])
    assert summary["event"] == "stopped" and summary["deleted_pending"] == 1
    resolved = cli(
        "resolve",
        "--tenant",
        "acme",
        "--chain",
        "anon-1",
        env={"STITCH_REDIS_URL": redis_server.url},
    )
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.strip() == "anon-1 -> cust-1"
    assert denials(c) == []


def run_scenario(server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon's own client (``connect``) on db 1, so SELECT is exercised too; the scrape-
    time gauges and ``resolve --chain`` included. Errors are left to ACL LOG to explain."""
    url = server.url.removesuffix("/0") + "/1"
    config = settings(redis_url=url, reconnect_give_up_s=2, **SCENARIO)
    client = connect(config)
    worker = Worker(config, client, Metrics(), structlog.get_logger("test"))
    with contextlib.suppress(redis.RedisError):
        worker.run(drain=True)
        worker.stream.group_stats()
        resolve(config, "acme", ["anon-1"], chain=True)
    client.close()
    capsys.readouterr()


def test_every_worker_rule_is_needed(
    redis_server: RedisServer, acl_log: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The in-process scenario passes with the worker's rules; without any one of them Redis
    refuses that very command (at the top level or inside a script)."""
    db1 = redis.Redis(port=redis_server.port, db=1, protocol=2)
    ids = seed(db1)
    run_scenario(redis_server, capsys)
    check_outcome(db1, ids)
    assert denials(acl_log) == []
    for rule in (*WORKER_COMMANDS, *HEIGHTS_COMMANDS):
        db1.flushdb()
        db1.script_flush()  # the script cache is server-wide: make the worker load them again
        acl_log.acl_log_reset()
        rules = [without(r, rule) for r in worker_rules(Settings(consumer="x")) if r != rule]
        acl_log.execute_command(*setuser_args(WORKER_USER, ">" + WORKER_PASSWORD, rules))
        seed(db1)
        run_scenario(redis_server, capsys)
        assert rule.removeprefix("+") in denials(acl_log), rule


def without(rule: str, command: str) -> str:
    """``rule``, or the selector ``rule`` with ``command`` taken out of it."""
    if not rule.startswith("("):
        return rule
    return "(" + " ".join(word for word in rule[1:-1].split() if word != command) + ")"


def admin_script(c: redis.Redis) -> Any:
    """A script the worker may load and run, asking for a command it lacks: refused inside."""
    sha = c.script_load("return redis.call('DEL', KEYS[1])")
    return c.evalsha(sha, 1, "alias:acme")


REFUSED = "(?i)no permissions|can't run this command|can't access at least one of the keys"
"""Redis's refusal at the top level, and inside a script (a command the worker may run only
on the heights hashes is refused on other keys with the third message)."""
ADMIN_ONLY = {
    "XGROUP DESTROY": lambda c: c.xgroup_destroy(INPUT, GROUP),
    "XGROUP SETID": lambda c: c.xgroup_setid(INPUT, GROUP, "0"),
    "XDEL": lambda c: c.xdel(INPUT, "1-1"),
    "XRANGE dead letters": lambda c: c.xrange(DEAD),
    "XLEN output": lambda c: c.xlen(OUTPUT),
    "HDEL alias": lambda c: c.hdel("alias:acme", "anon-1"),
    "HGETALL alias": lambda c: c.hgetall("alias:acme"),
    "DEL alias": lambda c: c.delete("alias:acme"),
    "DEL inside a script": admin_script,
}
NOBODY = {
    "FLUSHALL": lambda c: c.flushall(),
    "CONFIG SET": lambda c: c.config_set("maxmemory", "1"),
    "KEYS": lambda c: c.keys("*"),
    "ACL SETUSER": lambda c: c.acl_setuser("intruder", enabled=True),
    "EVAL": lambda c: c.eval("return 1", 0),
    "HSET outside the alias keys": lambda c: c.hset("session:1", "a", "b"),
    "XADD outside the streams": lambda c: c.xadd("other", {"a": "b"}),
    "PUBLISH": lambda c: c.publish("events", "x"),
}


@pytest.mark.parametrize(("name", "operation"), [*ADMIN_ONLY.items(), *NOBODY.items()])
def test_admin_operations_are_refused_to_the_worker(
    redis_server: RedisServer, acl_log: redis.Redis, name: str, operation: Any
) -> None:
    """The worker's credentials get NOPERM for operator commands (and for anything outside
    its keys); stitch-admin may run the operator commands, nobody the server-wide ones."""
    acl_log.xgroup_create(INPUT, GROUP, "0", mkstream=True)
    acl_log.hset("alias:acme", "anon-1", "cust-1")
    with pytest.raises(redis.ResponseError, match=REFUSED):
        operation(redis_server.worker_client())
    assert denials(acl_log)
    admin = redis.Redis(
        port=redis_server.port, protocol=2, username=ADMIN_USER, password=ADMIN_PASSWORD
    )
    if name in ADMIN_ONLY:
        operation(admin)
    else:
        with pytest.raises(redis.ResponseError, match=REFUSED):
            operation(admin)
    acl_log.acl_log_reset()


def test_rules_follow_the_configured_names(acl_log: redis.Redis, redis_server: RedisServer) -> None:
    """Hash-tagged names (Cluster) get their own patterns, glob characters escaped; a worker
    configured with them runs under the rules printed for them, and the default names are
    then out of its reach."""
    names = {
        "input_stream": "{lehnz}ev*",
        "output_stream": "{lehnz}out",
        "dead_stream": "{lehnz}dead",
        "alias_prefix": "{lehnz}alias:",
    }
    tagged = settings(**names)
    assert key_patterns(tagged) == [
        r"~{lehnz}ev\*",
        "~{lehnz}out",
        "~{lehnz}dead",
        "~{lehnz}alias:*",
    ]
    apply_acl_users(acl_log, tagged)
    acl_log.xadd("{lehnz}ev*", {"tenant": "acme", "event": json.dumps(event("anon-9"))})
    worker = Worker(tagged, redis_server.worker_client(), Metrics(), structlog.get_logger("t"))
    worker.run(drain=True)
    assert acl_log.xlen("{lehnz}out") == 1
    assert denials(acl_log) == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_server.worker_client().xadd("{lehnz}evX", {"a": "b"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_server.worker_client().hget("alias:acme", "x")


def test_readme_and_acl_command_give_the_same_lines() -> None:
    """`lehnz-stitch acl` prints both users' lines for the configured names, and the README
    quotes them for the default names word for word."""
    printed = cli("acl", env={"STITCH_INPUT_STREAM": "raw"})
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == acl_lines(Settings(consumer="x", input_stream="raw")) + "\n"
    assert " ~raw " in printed.stdout
    readme = (ROOT / "README.md").read_text()
    for line in acl_lines(Settings(consumer="x")).splitlines():
        assert line in readme
