"""Hostile entries (issue 16): each is dead-lettered with its own code, and no neighbour is lost."""

from __future__ import annotations

import json

import pytest
import redis

from tests.helpers import DEAD, INPUT, add, drain, event, identify, output
from worker.config import Settings
from worker.errors import ConfigError

pytestmark = pytest.mark.redis_server


def _dead(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(DEAD)]


def _assert_clean(client: redis.Redis, before: str, after: str) -> None:
    assert [e["source_id"] for e in output(client)] == [before, after]
    assert client.xpending(INPUT, "stitch")["pending"] == 0


def test_entry_with_5000_extra_fields_is_dead_lettered_not_lost(real_redis: redis.Redis) -> None:
    """Regression: it was acked, then the script died at XADD (Lua's unpack limit) and the
    worker exited; now it is dead-lettered as too_many_fields, without its payload."""
    before = add(real_redis, "acme", event("anon-before"))
    extra = {f"f{k}": "x" for k in range(5_000)}
    bad = real_redis.xadd(INPUT, {"tenant": "acme", "event": json.dumps(event("u")), **extra})
    after = add(real_redis, "acme", event("anon-after"))
    worker = drain(real_redis)
    [dead] = _dead(real_redis)
    assert dead[b"error_code"] == b"too_many_fields"
    assert dead[b"source_id"] == bad
    assert set(dead) == {b"error", b"error_code", b"source_id"}  # the payload stays in INPUT
    assert b"5002 fields, limit 64" in dead[b"error"]
    _assert_clean(real_redis, before, after)
    assert worker.totals["dead:too_many_fields"] == 1


def test_30000_level_nested_event_is_dead_lettered_not_a_crash(real_redis: redis.Redis) -> None:
    """Regression: 60 KB of brackets (under the event limit) raised RecursionError in msgspec."""
    deep = '{"user_id": "u", "event_family": "a", "event_name": "b", "p": ' + (
        "[" * 30_000 + "]" * 30_000 + "}"
    )
    before = add(real_redis, "acme", event("anon-before"))
    bad = add(real_redis, "acme", deep)
    after = add(real_redis, "acme", event("anon-after"))
    drain(real_redis)
    [dead] = _dead(real_redis)
    assert dead[b"error_code"] == b"event_too_deep"
    assert dead[b"error"] == b"event_too_deep: event nests 30001 levels, limit 256"
    assert dead[b"source_id"].decode() == bad
    assert dead[b"event"] == deep.encode()  # within the entry bound: carried for triage
    _assert_clean(real_redis, before, after)


def test_60000_char_previous_user_id_never_becomes_an_alias_field(real_redis: redis.Redis) -> None:
    """Regression: ids had no bound, so one identify could write a 60 KB hash field."""
    before = add(real_redis, "acme", event("anon-before"))
    bad = add(real_redis, "acme", identify("real-1", "a" * 60_000))
    after = add(real_redis, "acme", event("anon-after"))
    drain(real_redis)
    [dead] = _dead(real_redis)
    assert dead[b"error_code"] == b"id_too_long"
    assert dead[b"error"] == b"id_too_long: 'previous_user_id' is 60000 bytes, limit 256"
    assert dead[b"source_id"].decode() == bad
    assert real_redis.hlen("alias:acme") == 0
    _assert_clean(real_redis, before, after)


@pytest.mark.parametrize(
    ("code", "fields", "keeps_payload"),
    [
        ("id_too_long", {"tenant": "acme", "event": json.dumps(event("é" * 129))}, True),
        ("id_too_long", {"tenant": "acme", "event": json.dumps(identify("r" * 257, "a"))}, True),
        ("entry_too_large", {"tenant": "acme", "event": "{}", "pad": "x" * 70_000}, False),
        ("entry_too_large", {"tenant": "x" * 70_000, "event": "{}"}, False),
        ("entry_too_large", {"event": "x" * 70_000, "tenant": "acme"}, False),
        ("event_too_deep", {"tenant": "acme", "event": "[" * 257 + "]" * 257}, True),
        ("event_too_deep", {"tenant": "acme", "event": "[" * 5000}, True),  # truncated, too
    ],
    ids=["multibyte-user", "long-user", "extra-field", "tenant", "event-first", "array", "open"],
)
def test_bounds_dead_letter_with_their_code(
    real_redis: redis.Redis, code: str, fields: dict[str, str], keeps_payload: bool
) -> None:
    """Each bound has its code; an entry too large to copy is dead-lettered without payload."""
    before = add(real_redis, "acme", event("anon-before"))
    real_redis.xadd(INPUT, fields)  # type: ignore[arg-type]
    after = add(real_redis, "acme", event("anon-after"))
    drain(real_redis, max_event_bytes=60_000, max_entry_bytes=61_024)
    [dead] = _dead(real_redis)
    assert dead[b"error_code"] == code.encode()
    assert (b"tenant" in dead) is keeps_payload
    _assert_clean(real_redis, before, after)


def test_ids_at_the_bound_and_deep_events_within_it_flow(real_redis: redis.Redis) -> None:
    """Exactly max_id_bytes (multi-byte too) and exactly max_json_depth are still valid."""
    uid = "é" * 128  # 256 bytes in UTF-8
    nested = event(uid, p=json.loads("[" * 255 + "]" * 255))  # 256 levels with the object
    many = event("u2", items=[{"sku": k} for k in range(400)])  # many brackets, shallow
    ids = [add(real_redis, "acme", nested), add(real_redis, "acme", many)]
    drain(real_redis)
    assert [e["source_id"] for e in output(real_redis)] == ids
    assert output(real_redis)[0]["resolved_user_id"] == uid
    assert real_redis.xlen(DEAD) == 0


def test_bounds_are_settings_validated_together() -> None:
    """The entry bound must leave room for the event; no stream may look like an alias hash."""
    defaults = Settings.from_env({})
    assert (defaults.max_id_bytes, defaults.max_json_depth) == (256, 256)
    assert (defaults.max_fields, defaults.max_entry_bytes) == (64, 131_072)
    with pytest.raises(ConfigError, match="STITCH_MAX_ENTRY_BYTES"):
        Settings.from_env({"STITCH_MAX_EVENT_BYTES": "200000"})
    with pytest.raises(ConfigError, match="STITCH_MAX_FIELDS"):
        Settings.from_env({"STITCH_MAX_FIELDS": "5000"})
    with pytest.raises(ConfigError, match="STITCH_ALIAS_PREFIX"):
        Settings.from_env({"STITCH_OUTPUT_STREAM": "alias:out"})
