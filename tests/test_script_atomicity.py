"""No Lua script can fail after its first write (Redis keeps what a failed script wrote).

For each write commit.lua makes (HSET, XACK, XADD to either stream, XTRIM of either), a batch
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

from resolver.scripts import LINK_RULES_LUA
from tests.helpers import DEAD, INPUT, OUTPUT
from worker.scripts import COMMIT_LUA

pytestmark = pytest.mark.redis_server

ROOT = Path(__file__).resolve().parent.parent
WRITES = {"HSET", "HDEL", "DEL", "SET", "XACK", "XADD", "XTRIM", "XDEL", "XGROUP", "XCLAIM"}
ALIAS = "alias:acme"
LAST_ID = "18446744073709551615-18446744073709551615"
Batch = dict[str, Any]


def _writes(source: str) -> list[str]:
    return [c.upper() for c in re.findall(r"redis\.call\('(\w+)'", source) if c.upper() in WRITES]


def _snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def _batch(client: redis.Redis) -> Batch:
    """A pending batch of three: a link (the script's first write), an event that resolves
    through it, and an entry to dead-letter; as the worker would send them."""
    ids = [client.xadd(INPUT, {"tenant": "acme", "event": f"e{k}"}).decode() for k in range(3)]
    client.xgroup_create(INPUT, "stitch", id="0")
    client.xreadgroup("stitch", "c1", {INPUT: ">"})
    payload = ["tenant", "acme", "event", "e"]
    entries = [
        [ids[0], "l", 0, 1, "anon", "real", "?"],
        [ids[1], "r", len(payload), *payload, 1, "anon"],
        [ids[2], "d", len(payload), *payload, "event_not_json: x", "event_not_json"],
    ]
    keys = [INPUT, OUTPUT, DEAD, ALIAS, ALIAS + ":heights"]
    return {"keys": keys, "fixed": ["stitch", 100, 100, 32], "entries": entries}


def _run(client: redis.Redis, batch: Batch) -> Any:
    entries = [value for entry in batch["entries"] for value in entry]
    args = [*batch["fixed"], 0, len(batch["entries"]), *entries]
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


def _alias_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET: WRONGTYPE
    client.set(ALIAS, "x")


def _heights_not_hash(client: redis.Redis, batch: Batch) -> None:  # HSET/HDEL heights
    client.set(ALIAS + ":heights", "x")


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
    ("HSET", _alias_not_hash, "WRONGTYPE"),
    ("HDEL", _heights_not_hash, "WRONGTYPE"),
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
    """The batch the faults start from is valid: link, emit and dead letter all land."""
    reply = _run(real_redis, _batch(real_redis))
    assert reply[:3] == [1, 1, 1]
    assert real_redis.hgetall(ALIAS) == {b"anon": b"real"}
    assert real_redis.xpending(INPUT, "stitch")["pending"] == 0


def test_every_write_of_commit_lua_has_a_fault_case() -> None:
    """A new write command in the script needs a new case above (and a check before it)."""
    assert set(_writes(COMMIT_LUA)) == {write for write, _, _ in FAULTS}


def test_single_write_scripts_write_last() -> None:
    """delconsumer.lua writes once, and nothing but a return follows the write; link.lua's
    writes all happen in the shared rules' write_staged, its last step before returning."""
    lines = (ROOT / "worker/lua/delconsumer.lua").read_text().strip().splitlines()
    writes = [n for n, line in enumerate(lines) if _writes(line)]
    assert len(writes) == 1
    rest = [line.strip() for line in lines[writes[0] + 1 :]]
    assert all(line.startswith(("return", "end")) for line in rest), rest
    link = (ROOT / "resolver/lua/link.lua").read_text().strip().splitlines()
    assert not _writes("\n".join(link))
    [staged] = [n for n, line in enumerate(link) if "write_staged(" in line]
    assert all(line.strip().startswith(("return", "end")) for line in link[staged + 1 :])
    writer = LINK_RULES_LUA.index("local function write_staged")
    assert not _writes(LINK_RULES_LUA[:writer])  # the rules read; only write_staged writes
    assert "\nlocal function" not in LINK_RULES_LUA[writer + 1 :]


def test_link_script_fails_at_its_read_or_its_only_write(real_redis: redis.Redis) -> None:
    """A wrong-type alias key fails at HGET and OOM at the HSET: either way nothing written."""
    link = real_redis.register_script(LINK_RULES_LUA + (ROOT / "resolver/lua/link.lua").read_text())
    real_redis.set(ALIAS, "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        link(keys=[ALIAS, ALIAS + ":heights"], args=[32, "anon", "real"])
    real_redis.delete(ALIAS)
    real_redis.config_set("maxmemory-policy", "noeviction")
    real_redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match=r"OOM|used memory"):
            link(keys=[ALIAS, ALIAS + ":heights"], args=[32, "anon", "real"])
    finally:
        real_redis.config_set("maxmemory", 0)
    assert real_redis.exists(ALIAS) == 0


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
