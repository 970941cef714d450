"""Every link accountable: provenance beside each alias map, the per-tenant refusal log, the
change feed, ``explain`` (library and command line) and the feed's downstream example."""

from __future__ import annotations

import json

import pytest
import redis

from resolver import Resolver
from resolver.feed import Attribution, ChangeOp, fold, follow, read_changes
from resolver.heights import alias_keys
from resolver.provenance import parse_provenance
from tests.helpers import add, drain, event, identify, make_worker, metric
from tests.redis_proc import RedisServer
from tests.test_cli import cli
from worker.config import Settings
from worker.errors import ConfigError
from worker.parser import Parser

CHANGES = "alias:changes"
LINKS = [  # (prev, user, outcome) in stream order, tenant acme, cap 3
    ("anon-1", "cust-1", "applied"),
    ("cust-1", "cust-9", "applied"),
    ("anon-1", "cust-7", "conflict"),
    ("cust-9", "anon-1", "cycle"),
    ("null", "cust-1", "placeholder"),
    ("anon-1", "cust-1", "noop"),
    ("cust-1", "cust-1", "noop"),
    ("x1", "x2", "applied"),
    ("x2", "x3", "applied"),
    ("x3", "anon-0", "applied"),
    ("anon-0", "anon-1", "too_deep"),  # x1's chain would become 6 links
]


def seed(client: redis.Redis) -> dict[tuple[str, str], str]:
    """The LINKS identifies, then an event; returns (prev, user) -> entry id (the first)."""
    sources: dict[tuple[str, str], str] = {}
    for p, u, _ in LINKS:
        sources.setdefault((p, u), add(client, "acme", identify(u, p)))
    add(client, "acme", event("anon-1"))
    return sources


def refusals(client: redis.Redis, tenant: str = "acme") -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(f"alias:{tenant}:refusals")
    ]


def provenance(client: redis.Redis, tenant: str = "acme") -> dict[str, tuple[str, str]]:
    """previous_user_id -> (source_id, consumer)."""
    out = {}
    for prev, value in client.hgetall(f"alias:{tenant}:provenance").items():
        record = parse_provenance(value)
        assert record is not None and record.applied_at_ms > 1_700_000_000_000
        out[prev.decode()] = (record.source_id, record.consumer)
    return out


def test_links_carry_provenance_feed_entries_and_refusals_are_logged(client: redis.Redis) -> None:
    """Each applied link gets its provenance and one feed entry (with the root after it); each
    refused identify one refusal-log entry; noops neither; metrics count both."""
    sources = seed(client)
    worker = drain(client, max_chain_depth=3, batch_size=4, consumer="w-1")
    applied = [(p, u) for p, u, outcome in LINKS if outcome == "applied"]
    assert provenance(client) == {p: (sources[p, u], "w-1") for p, u in applied}
    changes = list(read_changes(client, CHANGES))
    roots = {"anon-1": "cust-1", "cust-1": "cust-9", "x1": "x2", "x2": "x3", "x3": "anon-0"}
    assert [(c.tenant, c.op, c.previous_user_id, c.user_id, c.root, c.source_id)
            for c in changes] == [
        ("acme", ChangeOp.LINK, p, u, roots[p], sources[p, u]) for p, u in applied
    ]  # fmt: skip
    refused = [(p, u, o) for p, u, o in LINKS if o not in ("applied", "noop")]
    assert refusals(client) == [
        {"outcome": o, "source_id": sources[p, u], "previous_user_id": p, "user_id": u}
        for p, u, o in refused
    ]
    assert metric(worker, "stitch_changes_total", op="link") == len(applied)
    for outcome in ("conflict", "cycle", "placeholder", "too_deep"):
        assert metric(worker, "stitch_refusals_total", outcome=outcome) == 1
    assert fold(changes) == {"acme": {p: u for p, u in applied}}


def test_redelivered_entries_write_no_provenance_feed_or_refusal_again(client: redis.Redis) -> None:
    """The same entries committed a second time (a reclaimed copy, a redelivery): their XACK
    returns 0, the links are noops, so nothing new is written anywhere."""
    seed(client)
    worker = make_worker(client, max_chain_depth=3, forward_identify=True)
    worker.startup()
    parser = Parser.from_settings(worker.settings)
    entries = worker.stream.read(100, None)
    parsed = [parser.parse(entry_id, fields) for entry_id, fields in entries]
    assert worker.committer.commit_now(parsed)
    before = {
        key: client.dump(key)
        for key in (CHANGES, "alias:acme:refusals", "alias:acme:provenance", "events:enriched")
    }
    again = [parser.parse(entry_id, fields) for entry_id, fields in entries]
    assert worker.committer.commit_now(again)
    assert {key: client.dump(key) for key in before} == before
    assert client.xlen(CHANGES) == 5 and len(refusals(client)) == 4


def test_explain_gives_the_chain_with_provenance_and_the_refusals(client: redis.Redis) -> None:
    """The README's JSON shape exactly: hops with source ids and times, null for a link
    another program wrote, and every refused identify naming the id on either side."""
    sources = seed(client)
    drain(client, max_chain_depth=3)
    client.hset("alias:acme", "cust-9", "legacy-1")  # by another program: no provenance
    explained = Resolver(client).explain("acme", "anon-1").as_json()
    assert list(explained) == ["tenant", "id", "root", "hops", "refused", "held"]
    hops = explained.pop("hops")
    assert [list(hop) for hop in hops] == [["from", "to", "source_id", "applied_at_ms"]] * 3
    assert [(h["from"], h["to"], h["source_id"]) for h in hops] == [
        ("anon-1", "cust-1", sources["anon-1", "cust-1"]),
        ("cust-1", "cust-9", sources["cust-1", "cust-9"]),
        ("cust-9", "legacy-1", None),
    ]
    assert isinstance(hops[0]["applied_at_ms"], int) and hops[2]["applied_at_ms"] is None
    assert explained == {
        "tenant": "acme",
        "id": "anon-1",
        "root": "legacy-1",
        "refused": [
            {"source_id": sources[p, u], "outcome": o, "previous_user_id": p, "user_id": u}
            for p, u, o in LINKS
            if o in ("conflict", "cycle", "too_deep")
        ],
        "held": None,
    }
    unknown = Resolver(client).explain("acme", "nobody").as_json()
    assert unknown == {"tenant": "acme", "id": "nobody", "root": "nobody", "hops": [],
                       "refused": [], "held": None}  # fmt: skip


def test_library_links_carry_provenance_and_a_feed_entry(client: redis.Redis) -> None:
    """Resolver.link writes what the worker writes: provenance (its operation id, the time,
    "resolver") and one feed entry, so explain and a feed consumer see it too."""
    library = Resolver(client)
    assert library.link("acme", "anon-1", "cust-1", source_id="crm-merge-7").value == "applied"
    assert library.link("acme", "anon-2", "cust-1").value == "applied"
    assert library.link("acme", "anon-2", "cust-1").value == "noop"  # nothing written again
    stored = {k.decode(): parse_provenance(v) for k, v in client.hgetall(
        "alias:acme:provenance").items()}  # fmt: skip
    assert stored["anon-1"] is not None and stored["anon-1"].source_id == "crm-merge-7"
    assert stored["anon-2"] is not None and stored["anon-2"].source_id.startswith("link:")
    assert {p.consumer for p in stored.values() if p is not None} == {"resolver"}
    changes = list(read_changes(client, "alias:changes"))
    assert [(c.op, c.previous_user_id, c.user_id, c.root) for c in changes] == [
        ("link", "anon-1", "cust-1", "cust-1"),
        ("link", "anon-2", "cust-1", "cust-1"),
    ]
    assert fold(changes) == {"acme": {"anon-1": "cust-1", "anon-2": "cust-1"}}
    [hop] = library.explain("acme", "anon-1").as_json()["hops"]
    assert hop["source_id"] == "crm-merge-7"


def test_the_change_feed_is_never_taken_for_an_alias_map(client: redis.Redis) -> None:
    """alias:changes (a stream) and the provenance, refusal and heights keys are not alias
    maps: listing finds only the tenants' hashes, and a worker starts and measures fine."""
    seed(client)
    drain(client, max_chain_depth=3)
    client.hset("alias:other", "a", "b")  # by another program: measured at the next start
    assert client.type(CHANGES) == b"stream"
    assert alias_keys(client, "alias:") == ["alias:acme", "alias:other"]
    drain(client)
    assert client.hget("alias:other:heights", "") == b"1"


def test_feed_consumer_group_keeps_an_attribution_table_current(client: redis.Redis) -> None:
    """The documented example: a consumer group on the feed keeps id -> person equal to what
    the resolver answers, batch after batch, from an empty table."""
    table = Attribution()
    resolver = Resolver(client)
    waves = [
        [("a", "b"), ("c", "d")],
        [("b", "d"), ("e", "a")],  # a's tree (a, e) and b's move under d
        [("d", "f"), ("g", "g")],
    ]
    applied = 0
    for wave in waves:
        for prev, user in wave:
            add(client, "acme", identify(user, prev))
        drain(client)
        applied += follow(client, CHANGES, "attribution", "a-1", table)
        for uid in "abcdefg":
            assert table.person("acme", uid) == resolver.resolve("acme", uid), uid
    assert applied == 5 and follow(client, CHANGES, "attribution", "a-1", table) == 0
    fresh = Attribution()
    fresh.snapshot(
        {"acme": {k.decode(): v.decode() for k, v in client.hgetall("alias:acme").items()}}
    )
    assert fresh.root_of == table.root_of


def test_change_stream_setting_is_checked() -> None:
    """The feed defaults to the alias prefix + 'changes' (same hash tag); it may not be one of
    the other streams, nor a key under the prefix with ':' (a heights or provenance key)."""
    assert Settings(consumer="x").changes_key == CHANGES
    tagged = Settings(consumer="x", alias_prefix="{l}alias:")
    assert (tagged.changes_key, tagged.reserved_tenant) == ("{l}alias:changes", "changes")
    assert Settings(consumer="x", changes_stream="feed").reserved_tenant is None
    for bad in ("events", "alias:acme:provenance", "alias:"):
        with pytest.raises(ConfigError, match="STITCH_CHANGES_STREAM"):
            Settings.from_env({"STITCH_CHANGES_STREAM": bad})


@pytest.mark.redis_server
def test_explain_command(redis_server: RedisServer, real_redis: redis.Redis) -> None:
    """`explain --json` prints the library's object, the console form one hop per line; an
    unknown id exits 0 with no hops; a bad or reserved tenant exits 2 with a message."""
    sources = seed(real_redis)
    make_worker(real_redis, max_chain_depth=3).run(drain=True)
    env = {"STITCH_REDIS_URL": redis_server.admin_url}
    printed = cli("explain", "--tenant", "acme", "--json", "anon-1", env=env)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == Resolver(real_redis).explain("acme", "anon-1").as_json()
    console = cli("explain", "--tenant", "acme", "cust-1", env=env)
    assert console.returncode == 0, console.stderr
    lines = console.stdout.splitlines()
    assert lines[0] == "cust-1 resolves to cust-9 (tenant acme, 1 links)"
    assert lines[1].startswith(f"  cust-1 -> cust-9    identify {sources['cust-1', 'cust-9']}")
    assert lines[1].endswith("by test-consumer")
    unknown = cli("explain", "--tenant", "acme", "--json", "nobody", env=env)
    assert (unknown.returncode, json.loads(unknown.stdout)["hops"]) == (0, [])
    for tenant, message in (("a:b", "must match"), ("*", "must match"), ("changes", "reserved")):
        bad = cli("explain", "--tenant", tenant, "x", env=env)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
