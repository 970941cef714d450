"""No Lua script can fail after its first write (Redis keeps what a failed script wrote).

For each write commit.lua makes (HSET, XACK, XADD to any of its streams, XTRIM of any), a batch
is built that would make exactly that write fail; the script must refuse it before writing
anything, so every key dumps the same before and after. link.lua and delconsumer.lua write
once, as their last step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from resolver.scripts import AUDIT_LUA, LINK_RULES_LUA, UNLINK_LUA
from tests.helpers import DEAD, INPUT, OUTPUT
from worker.ops.shard_redrive import REDRIVE_TO_LUA
from worker.scripts import COMMIT_LUA

pytestmark = pytest.mark.redis_server

ROOT = Path(__file__).resolve().parent.parent
WRITES = {"HSET", "HDEL", "DEL", "SET", "XACK", "XADD", "XTRIM", "XDEL", "XGROUP", "XCLAIM"}
WRITES |= {"ZADD", "ZREM", "HINCRBY", "HSETNX"}
ALIAS = "alias:acme"
CHANGES, PROVENANCE, REFUSALS = "alias:changes", ALIAS + ":provenance", ALIAS + ":refusals"
REMOVALS, CHILDREN = ALIAS + ":removals", ALIAS + ":children"
SIZES, QUARANTINE, PROTECTION = ALIAS + ":sizes", ALIAS + ":quarantine", ALIAS + ":protection"
LAST_ID = "18446744073709551615-18446744073709551615"
Batch = dict[str, Any]


def _writes(source: str) -> list[str]:
    return [c.upper() for c in re.findall(r"redis\.call\('(\w+)'", source) if c.upper() in WRITES]


def _snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def _batch(client: redis.Redis) -> Batch:
    """A pending batch of four: a link (the script's first write), an event that resolves
    through it, an entry to dead-letter and a placeholder identify (a refusal to log); as the
    worker would send them."""
    ids = [client.xadd(INPUT, {"tenant": "acme", "event": f"e{k}"}).decode() for k in range(4)]
    client.xgroup_create(INPUT, "stitch", id="0")
    client.xreadgroup("stitch", "c1", {INPUT: ">"})
    payload = ["tenant", "acme", "event", "e"]
    entries = [
        [ids[0], "l", 0, 1, "anon", "real", "?", "", ""],
        [ids[1], "r", len(payload), *payload, 1, "anon"],
        [ids[2], "d", len(payload), *payload, "event_not_json: x", "event_not_json"],
        [ids[3], "p", 0, 1, "null", "real"],
    ]
    keys = [INPUT, OUTPUT, DEAD, CHANGES, ALIAS, ALIAS + ":heights", PROVENANCE, REFUSALS]
    keys += [REMOVALS, CHILDREN, SIZES, QUARANTINE, PROTECTION]
    fixed = ["stitch", 100, 100, 32, 100, 100, "c1", "alias:", "drop", 1000, 100]
    return {"keys": keys, "fixed": fixed, "entries": entries}


def _run(client: redis.Redis, batch: Batch) -> Any:
    entries = [value for entry in batch["entries"] for value in entry]
    args = [*batch["fixed"], 0, len(batch["entries"]), "0", *entries]
    return client.register_script(COMMIT_LUA)(keys=batch["keys"], args=args)


def _many_fields(client: redis.Redis, batch: Batch) -> None:  # XADD: unpack() limit
    values = [f"v{k}" for k in range(5_000)]
    batch["entries"][1] = [batch["entries"][1][0], "r", len(values), *values, 1, "anon"]


def _odd_fields(client: redis.Redis, batch: Batch) -> None:  # XADD: wrong number of args
    entry = batch["entries"][2]
    batch["entries"][2] = [entry[0], "d", 3, "tenant", "acme", "event", *entry[-2:]]


def _input_not_stream(client: redis.Redis, batch: Batch) -> None:  # XACK: WRONGTYPE
    client.delete(INPUT)
    client.set(INPUT, "x")


def _output_not_stream(client: redis.Redis, batch: Batch) -> None:  # XADD output: WRONGTYPE
    client.hset(OUTPUT, "a", "b")


def _dead_not_stream(client: redis.Redis, batch: Batch) -> None:  # XADD dead: WRONGTYPE
    client.rpush(DEAD, "x")


def _output_out_of_ids(client: redis.Redis, batch: Batch) -> None:  # XADD '*': no id left
    client.xadd(OUTPUT, {"a": "b"}, id=LAST_ID)


def _dead_out_of_ids(client: redis.Redis, batch: Batch) -> None:
    client.xadd(DEAD, {"a": "b"}, id=LAST_ID)


def _bad_out_maxlen(client: redis.Redis, batch: Batch) -> None:  # XTRIM output
    batch["fixed"][1] = "ten"


def _bad_dead_maxlen(client: redis.Redis, batch: Batch) -> None:  # XTRIM dead
    batch["fixed"][2] = "-1"


def _changes_not_stream(client: redis.Redis, batch: Batch) -> None:  # XADD feed: WRONGTYPE
    client.set(CHANGES, "x")


def _changes_out_of_ids(client: redis.Redis, batch: Batch) -> None:
    client.xadd(CHANGES, {"a": "b"}, id=LAST_ID)


def _refusals_not_stream(client: redis.Redis, batch: Batch) -> None:  # XADD refusal log
    client.hset(REFUSALS, "a", "b")


def _refusals_out_of_ids(client: redis.Redis, batch: Batch) -> None:
    client.xadd(REFUSALS, {"a": "b"}, id=LAST_ID)


def _provenance_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET provenance
    client.xadd(PROVENANCE, {"a": "b"})


def _children_not_zset(client: redis.Redis, batch: Batch) -> None:  # ZADD children index
    client.hset(CHILDREN, "a", "b")


def _removals_not_hash(client: redis.Redis, batch: Batch) -> None:  # HMGET generation
    client.set(REMOVALS, "x")


def _bad_changes_maxlen(client: redis.Redis, batch: Batch) -> None:  # XTRIM feed
    batch["fixed"][4] = "1e6"


def _bad_refusals_maxlen(client: redis.Redis, batch: Batch) -> None:  # XTRIM refusal log
    batch["fixed"][5] = ""


def _alias_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET: WRONGTYPE
    client.set(ALIAS, "x")


def _heights_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET/HDEL heights
    client.set(ALIAS + ":heights", "x")


def _sizes_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET/HDEL sizes
    client.set(SIZES, "x")


def _quarantine_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSETNX a held link
    client.hset(SIZES, "", 1)  # the tenant's cap: 1 id, so the link is held
    client.set(QUARANTINE, "x")


def _protection_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET a rate window
    client.set(PROTECTION, "x")


def _held_tally_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET held:rate
    client.hset(SIZES, "", 1)  # held, so the write is the tally's
    client.rpush(PROTECTION, "x")


def _out_of_memory(client: redis.Redis, batch: Batch) -> None:  # the first write: OOM
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)


FAULTS: list[tuple[str, Callable[[redis.Redis, Batch], None], str]] = [
    ("XADD", _many_fields, "has 5000 field values"),
    ("XADD", _odd_fields, "has 3 field values"),
    ("XACK", _input_not_stream, "WRONGTYPE events holds a string"),
    ("XADD", _output_not_stream, "WRONGTYPE events:enriched holds a hash"),
    ("XADD", _dead_not_stream, "WRONGTYPE events:dead holds a list"),
    ("XADD", _output_out_of_ids, "events:enriched has handed out the last possible id"),
    ("XADD", _dead_out_of_ids, "events:dead has handed out the last possible id"),
    ("XTRIM", _bad_out_maxlen, "maxlen arguments must be digits"),
    ("XTRIM", _bad_dead_maxlen, "maxlen arguments must be digits"),
    ("XADD", _changes_not_stream, "WRONGTYPE alias:changes holds a string"),
    ("XADD", _changes_out_of_ids, "alias:changes has handed out the last possible id"),
    ("XADD", _refusals_not_stream, "WRONGTYPE alias:acme:refusals holds a hash"),
    ("XADD", _refusals_out_of_ids, "alias:acme:refusals has handed out the last possible id"),
    ("HSET", _provenance_not_hash, "WRONGTYPE alias:acme:provenance holds a stream"),
    ("ZADD", _children_not_zset, "WRONGTYPE alias:acme:children holds a hash"),
    ("HSET", _removals_not_hash, "WRONGTYPE"),
    ("XTRIM", _bad_changes_maxlen, "maxlen arguments must be digits"),
    ("XTRIM", _bad_refusals_maxlen, "maxlen arguments must be digits"),
    ("HSET", _alias_not_hash, "WRONGTYPE"),
    ("HDEL", _heights_not_hash, "WRONGTYPE"),
    ("HSET", _sizes_not_hash, "WRONGTYPE"),
    ("HSETNX", _quarantine_not_hash, "WRONGTYPE alias:acme:quarantine holds a string"),
    ("HSET", _protection_not_hash, "WRONGTYPE"),
    ("HSET", _held_tally_not_hash, "WRONGTYPE"),
    ("HSET", _out_of_memory, "command not allowed when used memory"),
]


@pytest.mark.parametrize(
    ("write", "fault", "message"), FAULTS, ids=[f.__name__.strip("_") for _, f, _ in FAULTS]
)
def test_commit_refused_whole_before_any_write(
    real_redis: redis.Redis, write: str, fault: Callable[[redis.Redis, Batch], None], message: str
) -> None:
    """A batch that would fail at a write is refused before the first one: nothing changes."""
    batch = _batch(real_redis)
    fault(real_redis, batch)
    before = _snapshot(real_redis)
    try:
        with pytest.raises(redis.ResponseError, match=message):
            _run(real_redis, batch)
        assert _snapshot(real_redis) == before
    finally:
        real_redis.config_set("maxmemory", 0)
    assert write in _writes(COMMIT_LUA)


def test_the_same_batch_commits_whole_without_the_fault(real_redis: redis.Redis) -> None:
    """The batch the faults start from is valid: link (with its provenance and feed entry),
    emit, dead letter and the logged refusal all land."""
    batch = _batch(real_redis)
    reply = _run(real_redis, batch)
    assert reply[:3] == [1, 1, 1]
    assert real_redis.hgetall(ALIAS) == {b"anon": b"real"}
    assert real_redis.zrange(CHILDREN, 0, -1) == [b"4:realanon"]
    source, ms, consumer = real_redis.hget(PROVENANCE, "anon").decode().split(" ")
    assert (source, consumer) == (batch["entries"][0][0], "c1") and int(ms) > 0
    [(_, change)] = real_redis.xrange(CHANGES)
    assert change[b"op"] == b"link" and change[b"root"] == b"real"
    [(_, refusal)] = real_redis.xrange(REFUSALS)
    assert refusal[b"outcome"] == b"placeholder"
    assert refusal[b"source_id"].decode() == batch["entries"][3][0]
    assert real_redis.xpending(INPUT, "stitch")["pending"] == 0


def test_every_write_of_commit_lua_has_a_fault_case() -> None:
    """A new write command in the script needs a new case above (and a check before it)."""
    assert set(_writes(COMMIT_LUA)) == {write for write, _, _ in FAULTS}


def test_single_write_scripts_write_last() -> None:
    """delconsumer.lua writes once, and nothing but a return follows the write; link.lua's
    writes come last: the shared rules' write_staged, then its provenance and feed entry."""
    lines = (ROOT / "worker/lua/delconsumer.lua").read_text().strip().splitlines()
    writes = [n for n, line in enumerate(lines) if _writes(line)]
    assert len(writes) == 1
    rest = [line.strip() for line in lines[writes[0] + 1 :]]
    assert all(line.startswith(("return", "end")) for line in rest), rest
    link = (ROOT / "resolver/lua/link.lua").read_text().strip().splitlines()
    [clock] = [n for n, line in enumerate(link) if "now_ms()" in line]
    assert not _writes("\n".join(link[:clock]))  # every check comes before the clock,
    assert "write_staged(" in "\n".join(link[clock:])  # every write after it
    writer = LINK_RULES_LUA.index("local function write_staged")
    assert not _writes(LINK_RULES_LUA[:writer])  # the rules read; only write_staged writes
    assert "\nlocal function" not in LINK_RULES_LUA[writer + 1 :]


LINK_ARGS = [32, "anon", "real", "", "", "op-1", "test", 100, "acme", 1000, 100]
LINK_KEYS = [ALIAS, ALIAS + ":heights", "alias:acme:removals", "alias:acme:children"]
LINK_KEYS += ["alias:acme:provenance", "alias:changes", SIZES, QUARANTINE, PROTECTION]


def test_link_script_fails_at_its_read_or_its_only_write(real_redis: redis.Redis) -> None:
    """A wrong-type alias key fails at HGET and OOM at the HSET: either way nothing written."""
    link = real_redis.register_script(LINK_RULES_LUA + (ROOT / "resolver/lua/link.lua").read_text())
    real_redis.set(ALIAS, "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        link(keys=LINK_KEYS, args=LINK_ARGS)
    real_redis.delete(ALIAS)
    real_redis.config_set("maxmemory-policy", "noeviction")
    real_redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match=r"OOM|used memory"):
            link(keys=LINK_KEYS, args=LINK_ARGS)
    finally:
        real_redis.config_set("maxmemory", 0)
    assert real_redis.exists(ALIAS) == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("alias:acme:provenance", "x", "WRONGTYPE alias:acme:provenance holds a string"),
        ("alias:changes", "x", "WRONGTYPE alias:changes holds a string"),
        ("alias:acme:children", "x", "WRONGTYPE alias:acme:children holds a string"),
        (PROTECTION, "x", "WRONGTYPE"),
    ],
)
def test_library_link_refused_before_its_first_write(
    real_redis: redis.Redis, key: str, value: str, message: str
) -> None:
    """The library's link writes the link, its provenance and its feed entry, or nothing."""
    link = real_redis.register_script(LINK_RULES_LUA + (ROOT / "resolver/lua/link.lua").read_text())
    real_redis.set(key, value)
    with pytest.raises(redis.ResponseError, match=message):
        link(keys=LINK_KEYS, args=LINK_ARGS)
    assert sorted(real_redis.keys("*")) == [key.encode()]


def test_over_memory_a_batch_that_acks_first_commits_whole(real_redis: redis.Redis) -> None:
    """Redis refuses an over-memory script only at its first write, and only if that write can
    grow memory. A batch without links writes an XACK first (it frees memory): Redis lets the
    whole script run, so it commits whole, never partly (the link case, refused whole before
    its first write, is ``out_of_memory`` above)."""
    batch = _batch(real_redis)
    batch["entries"] = batch["entries"][1:]  # the event and the dead letter: no link
    batch["entries"][0][-2:] = [1, "real"]
    _out_of_memory(real_redis, batch)
    try:
        reply = _run(real_redis, batch)
    finally:
        real_redis.config_set("maxmemory", 0)
    assert reply[:3] == [1, 1, 1]
    assert real_redis.xlen(OUTPUT) == 1 and real_redis.xlen(DEAD) == 1
    assert real_redis.xpending(INPUT, "stitch")["pending"] == 1  # the link's entry, not sent
    assert real_redis.exists(ALIAS) == 0


AUDIT_KEYS = [ALIAS, ALIAS + ":heights", PROVENANCE, REMOVALS, CHILDREN, SIZES, QUARANTINE]
AUDIT_KEYS += [CHANGES, PROTECTION]
AUDIT_ARGS = ["op-1", "acme", 100, 32, 1, "anon", "real", "audit:placeholder", "", ""]
AUDIT_SOURCE = (ROOT / "resolver/lua/audit.lua").read_text()
AUDIT_SOURCE += (ROOT / "resolver/lua/unlinking.lua").read_text()


def _audited_map(client: redis.Redis) -> None:
    """A map of one link with its index entry, height, size and provenance."""
    client.hset(ALIAS, "anon", "real")
    client.zadd(CHILDREN, {"4:realanon": 0})
    client.hset(ALIAS + ":heights", mapping={"real": 1, "": 1})
    client.hset(SIZES, "real", 2)
    client.hset(PROVENANCE, "anon", "1-0 1700000000000 c1")


def _wrong_type(key: str) -> Callable[[redis.Redis, list[Any]], None]:
    def fault(client: redis.Redis, args: list[Any]) -> None:
        client.delete(key)
        client.set(key, "x")

    return fault


def _bad_field(key: str, field: str) -> Callable[[redis.Redis, list[Any]], None]:
    def fault(client: redis.Redis, args: list[Any]) -> None:
        client.hset(key, field, "x")

    return fault


def _bad_arg(index: int, value: Any) -> Callable[[redis.Redis, list[Any]], None]:
    def fault(client: redis.Redis, args: list[Any]) -> None:
        args[index] = value

    return fault


def _feed_out_of_ids(client: redis.Redis, args: list[Any]) -> None:
    client.xadd(CHANGES, {"a": "b"}, id=LAST_ID)


AUDIT_FAULTS: list[tuple[str, Callable[[redis.Redis, list[Any]], None], str]] = [
    ("HDEL", _wrong_type(ALIAS), "WRONGTYPE alias:acme holds a string"),
    ("HSET", _wrong_type(ALIAS + ":heights"), "WRONGTYPE alias:acme:heights holds a string"),
    ("HDEL", _wrong_type(PROVENANCE), "WRONGTYPE alias:acme:provenance holds a string"),
    ("HINCRBY", _wrong_type(REMOVALS), "WRONGTYPE alias:acme:removals holds a string"),
    ("ZREM", _wrong_type(CHILDREN), "WRONGTYPE alias:acme:children holds a string"),
    ("HSET", _wrong_type(SIZES), "WRONGTYPE alias:acme:sizes holds a string"),
    ("HSET", _wrong_type(QUARANTINE), "WRONGTYPE alias:acme:quarantine holds a string"),
    ("HSET", _wrong_type(PROTECTION), "WRONGTYPE alias:acme:protection holds a string"),
    ("XADD", _wrong_type(CHANGES), "WRONGTYPE alias:changes holds a string"),
    ("XADD", _feed_out_of_ids, "alias:changes has handed out the last possible id"),
    ("XTRIM", _bad_arg(2, "1e6"), "maxlen arguments must be digits"),
    ("HINCRBY", _bad_field(REMOVALS, ""), "not a count"),
    ("HSET", _bad_field(ALIAS + ":heights", ""), "not a count"),
    ("HSET", _bad_arg(7, "audit:nonsense"), "unknown reason audit:nonsense"),
    ("HSET", _bad_arg(4, 2), "n x 5 link fields"),
]


@pytest.mark.parametrize(
    ("write", "fault", "message"),
    AUDIT_FAULTS,
    ids=[f"{w}-{m.split()[0]}-{k}" for k, (w, _, m) in enumerate(AUDIT_FAULTS)],
)
def test_audit_refused_whole_before_any_write(
    real_redis: redis.Redis,
    write: str,
    fault: Callable[[redis.Redis, list[Any]], None],
    message: str,
) -> None:
    """An audit page that would fail at a write is refused before the first one."""
    _audited_map(real_redis)
    args = list(AUDIT_ARGS)
    fault(real_redis, args)
    before = _snapshot(real_redis)
    with pytest.raises(redis.ResponseError, match=message):
        real_redis.register_script(AUDIT_LUA)(keys=AUDIT_KEYS, args=args)
    assert _snapshot(real_redis) == before
    assert write in _writes(AUDIT_SOURCE)


def test_every_write_of_audit_lua_has_a_fault_case() -> None:
    """A new write command in audit.lua or unlinking.lua needs a case above."""
    assert set(_writes(AUDIT_SOURCE)) == {write for write, _, _ in AUDIT_FAULTS}


def test_an_audit_page_over_memory_holds_whole(real_redis: redis.Redis) -> None:
    """The page's first write (HDEL) cannot grow memory, so Redis lets the whole script run
    over maxmemory: the link is held whole (removed, held, both feed entries), never partly."""
    _audited_map(real_redis)
    _out_of_memory(real_redis, {})
    try:
        reply = real_redis.register_script(AUDIT_LUA)(keys=AUDIT_KEYS, args=AUDIT_ARGS)
    finally:
        real_redis.config_set("maxmemory", 0)
    assert reply == [b"held"]
    assert real_redis.exists(ALIAS, PROVENANCE, CHILDREN, SIZES) == 0
    assert real_redis.hget(QUARANTINE, "anon").split(b" ")[::3] == [b"real", b"audit:placeholder"]
    assert [f[b"op"] for _, f in real_redis.xrange(CHANGES)] == [b"unlink", b"quarantine"]
    assert real_redis.hget(ALIAS + ":heights", "") == b"0"


def test_unlink_refused_whole_when_the_feed_is_out_of_ids(real_redis: redis.Redis) -> None:
    """unlink's checks (shared with forget, approve and audit: first_error) see every key,
    not only the first: a feed without an id left is found before the link is removed."""
    _audited_map(real_redis)
    _feed_out_of_ids(real_redis, [])
    before = _snapshot(real_redis)
    keys = [ALIAS, ALIAS + ":heights", PROVENANCE, REMOVALS, CHILDREN, CHANGES, SIZES]
    with pytest.raises(redis.ResponseError, match="has handed out the last possible id"):
        real_redis.register_script(UNLINK_LUA)(
            keys=keys, args=["anon", "0", "op-1", "", "acme", 100, "0"]
        )
    assert _snapshot(real_redis) == before


REDRIVEN, TARGET = "alias:{s1.3}::redriven", "events:{s1.3}"
REDRIVE_TO_FAULTS = [
    ("XADD", lambda c: c.set(TARGET, "x"), ["1/1-0", "tenant", "acme"], "WRONGTYPE"),
    ("XADD", lambda c: c.xadd(TARGET, {"f": "v"}, id=LAST_ID), ["1/1-0", "a", "b"], "last"),
    ("XADD", lambda c: None, ["1/1-0", "tenant"], "name/value pairs"),
    ("XADD", lambda c: None, ["1/1-0", *["v"] * 8_000], "name/value pairs"),
    ("HSET", lambda c: c.set(REDRIVEN, "x"), ["1/1-0", "tenant", "acme"], "WRONGTYPE"),
]


@pytest.mark.parametrize(("write", "fault", "args", "message"), REDRIVE_TO_FAULTS)
def test_a_cross_shard_redrive_is_refused_before_its_first_write(
    real_redis: redis.Redis,
    write: str,
    fault: Callable[[redis.Redis], object],
    args: list[str],
    message: str,
) -> None:
    """redrive_to.lua adds the copy and its marker together or not at all."""
    fault(real_redis)
    before = _snapshot(real_redis)
    with pytest.raises(redis.ResponseError, match=message):
        real_redis.register_script(REDRIVE_TO_LUA)(keys=[TARGET, REDRIVEN], args=args)
    assert _snapshot(real_redis) == before
    assert write in _writes(REDRIVE_TO_LUA)


def test_every_write_of_redrive_to_lua_has_a_fault_case() -> None:
    """A new write command in redrive_to.lua needs a case above."""
    assert set(_writes(REDRIVE_TO_LUA)) == {write for write, _, _, _ in REDRIVE_TO_FAULTS}
