"""Routing and key layout for STITCH_SHARDS (resolver/sharding.py, Settings): pure functions,
pinned with fixed vectors because producers and workers of different versions must agree."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot as redis_key_slot

import resolver
from resolver.sharding import (
    CLUSTER_SLOTS,
    DEFAULT_KEYS,
    key_slot,
    parse_overrides,
    parse_subset,
    route,
    shard_keys,
    shard_of,
    shard_tag,
    workers_view,
)
from worker.acl import worker_rules
from worker.config import Settings
from worker.errors import ConfigError
from worker.fleet import FleetHealth
from worker.health import Health
from worker.metrics import GroupStats, Metrics
from worker.parser import Kind, Parser
from worker.placement import Overrides, Placement

TAGS_8 = ["s0.10", "s1.3", "s2.3", "s3.10", "s4.3", "s5.11", "s6.11", "s7.3"]


def test_the_slot_is_redis_clusters_crc16() -> None:
    assert key_slot("123456789") == 0x31C3 % CLUSTER_SLOTS  # the CRC16/XMODEM check value
    for name in ["events", "alias:acme", *TAGS_8]:
        assert key_slot(name) == redis_key_slot(name.encode())


def test_tags_are_fixed_and_each_lies_in_its_part_of_the_slot_range() -> None:
    assert [shard_tag(s, 8) for s in range(8)] == TAGS_8
    assert [shard_tag(s, 3) for s in range(3)] == ["s0.0", "s1.1", "s2.1"]
    assert shard_tag(0, 1) == "s0.0"
    for shards in (2, 3, 8, 16, 100, 1024):
        width = CLUSTER_SLOTS / shards
        for shard in range(shards):
            assert int(key_slot(shard_tag(shard, shards)) // width) == shard


def test_a_tenants_shard_is_crc32_of_its_name_unless_overridden() -> None:
    assert {t: shard_of(t, 8) for t in ["acme", "globex", "initech", "a"]} == {
        "acme": 6,
        "globex": 2,
        "initech": 0,
        "a": 3,
    }
    assert shard_of("acme", 8, {"acme": 1}) == 1
    assert shard_of("acme", 8, {"other": 1}) == 6
    assert shard_of("acme", 1, {"acme": 5}) == 0  # one shard: nothing to choose


def test_one_shard_keeps_todays_names_and_more_put_every_key_under_the_shards_tag() -> None:
    assert shard_keys(DEFAULT_KEYS, 0, 1) == DEFAULT_KEYS.__class__(
        "events", "events:enriched", "events:dead", "alias:", "alias:changes"
    )
    keys = shard_keys(DEFAULT_KEYS, 3, 8)
    assert keys.input_stream == "events:{s3.10}"
    assert keys.output_stream == "events:enriched:{s3.10}"
    assert keys.dead_stream == "events:dead:{s3.10}"
    assert keys.alias_prefix == "alias:{s3.10}:"
    assert keys.changes_stream == "alias:{s3.10}:changes"
    settings = Settings(consumer="c", shards=8, changes_stream="feed")
    assert shard_keys(settings, 3, 8).changes_stream == "feed:{s3.10}"
    slots = {redis_key_slot(getattr(keys, name).encode()) for name in keys.__slots__}
    slots.add(redis_key_slot(keys.alias_key("acme").encode()))
    slots.add(redis_key_slot((keys.alias_key("acme") + ":heights").encode()))
    assert slots == {key_slot("s3.10")}  # one slot: every commit script stays single-slot


def test_route_is_what_the_command_prints_and_the_library_exposes() -> None:
    assert resolver.route is route
    assert route("acme", 8).as_dict() == {
        "shard": 6,
        "input_stream": "events:{s6.11}",
        "output_stream": "events:enriched:{s6.11}",
        "dead_stream": "events:dead:{s6.11}",
        "alias_key": "alias:{s6.11}:acme",
    }
    assert route("acme", 8, {"acme": 0}).alias_key == "alias:{s0.10}:acme"


def test_settings_for_shard_and_the_subset() -> None:
    settings = Settings.from_env({"STITCH_SHARDS": "8", "STITCH_SHARD_SUBSET": "0, 2-4,7"})
    assert settings.shard_numbers == (0, 2, 3, 4, 7)
    own = settings.for_shard(2)
    assert (own.input_stream, own.changes_key, own.reserved_tenant) == (
        "events:{s2.3}",
        "alias:{s2.3}:changes",
        "changes",
    )
    assert Settings.from_env({"STITCH_SHARDS": "8"}).shard_numbers == tuple(range(8))
    single = Settings.from_env({})
    assert single.for_shard(0) is single
    assert parse_subset("", 2) == (0, 1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STITCH_SHARDS": "0"}, "STITCH_SHARDS: Expected `int` >= 1"),
        ({"STITCH_SHARDS": "1025"}, "STITCH_SHARDS: Expected `int` <= 1024"),
        ({"STITCH_SHARDS": "8", "STITCH_SHARD_SUBSET": "8"}, "STITCH_SHARD_SUBSET: '8' is not"),
        ({"STITCH_SHARDS": "8", "STITCH_SHARD_SUBSET": "3-1"}, "STITCH_SHARD_SUBSET: '3-1'"),
        ({"STITCH_SHARDS": "8", "STITCH_SHARD_SUBSET": "x"}, "STITCH_SHARD_SUBSET: 'x' is not"),
        ({"STITCH_SHARD_SUBSET": "1"}, "STITCH_SHARD_SUBSET: '1' is not within 0..0"),
    ],
)
def test_bad_shard_settings_are_refused_naming_the_setting(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        Settings.from_env(env)


def test_a_name_with_a_brace_or_shard_settings_sharded_twice_are_refused() -> None:
    braced = Settings.from_env({"STITCH_SHARDS": "2", "STITCH_DEAD_STREAM": "{x}dead"})
    with pytest.raises(ConfigError, match=r"^STITCH_DEAD_STREAM: holds a brace"):
        braced.for_shard(0)
    own = Settings.from_env({"STITCH_SHARDS": "2"}).for_shard(1)
    with pytest.raises(ConfigError, match=r"^STITCH_INPUT_STREAM: holds a brace"):
        own.for_shard(0)
    with pytest.raises(ConfigError, match=r"^STITCH_SHARD_SUBSET: shard 2 does not exist"):
        Settings.from_env({"STITCH_SHARDS": "2"}).for_shard(2)


def test_the_override_table_must_name_existing_shards() -> None:
    assert parse_overrides({b"acme": b"3"}, 8) == {"acme": 3}
    for bad in (b"8", b"-1", b"x", b""):
        with pytest.raises(ValueError, match="stitch:shards: tenant 'acme' is placed on shard"):
            parse_overrides({b"acme": bad}, 8)


def test_the_acl_rules_name_every_shards_keys_and_only_read_the_override_table() -> None:
    rules = worker_rules(Settings(consumer="c", shards=2))
    assert "~events:{s0.0}" in rules
    assert "~alias:{s1.0}:*" in rules
    assert "(+hgetall %R~stitch:shards)" in rules
    assert "~events" not in rules
    assert "stitch:shards" not in " ".join(worker_rules(Settings(consumer="c")))


class _Table:
    """An override table that a test changes, as an operator's ``route set`` would."""

    def __init__(self) -> None:
        self.table: dict[bytes, bytes] = {}

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        assert key == "stitch:shards"
        return dict(self.table)


def test_a_misplaced_tenant_is_dead_lettered_naming_its_shard_and_rechecked_on_change() -> None:
    settings = Settings(consumer="c", shards=8)
    table = _Table()
    overrides = Overrides(table, 8, Metrics(), _Log())  # type: ignore[arg-type]
    placement = Placement(settings, shard_of("acme", 8), overrides)
    parser = Parser.from_settings(settings.for_shard(6), placement)
    body = b'{"user_id":"u","event_family":"f","event_name":"n"}'
    assert parser.parse(b"1-0", [b"tenant", b"acme", b"event", body]).kind is Kind.EVENT
    wrong = parser.parse(b"1-1", [b"tenant", b"globex", b"event", body])
    assert wrong.kind is Kind.INVALID
    assert wrong.error == (
        "wrong_shard: tenant 'globex' belongs to shard 2: write its events to events:{s2.3}"
    )
    table.table = {b"acme": b"1"}
    overrides.refresh()
    assert placement.changed()
    parser.tenants.forget()
    moved = parser.parse(b"1-2", [b"tenant", b"acme", b"event", body])
    assert moved.error_code == "wrong_shard"
    assert "shard 1: write its events to events:{s1.3}" in moved.error
    table.table = {b"acme": b"9"}  # a bad table is logged and the last good one kept
    overrides.refresh()
    assert overrides.table == {"acme": 1}
    assert not placement.changed()


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **_: object) -> None:
        self.lines.append(event)

    warning = error = info


def test_the_group_gauges_carry_the_shard() -> None:
    metrics = Metrics()
    metrics.watch_group(lambda: GroupStats(5, 2, [("c", 2, 1.5)]), 0)
    metrics.watch_group(lambda: GroupStats(None, 1, []), 3)
    sample = metrics.registry.get_sample_value
    assert sample("stitch_group_lag", {"shard": "0"}) == 5
    assert sample("stitch_group_lag", {"shard": "3"}) is None  # NULL lag: absent, not 0
    assert sample("stitch_group_pending", {"shard": "3"}) == 1
    assert sample("stitch_consumer_pending", {"shard": "0", "consumer": "c"}) == 2

    def down() -> GroupStats:
        raise ConnectionError

    metrics.watch_group(down, 3)  # one shard's node down: the others are still scraped
    assert sample("stitch_group_pending", {"shard": "0"}) == 2
    assert sample("stitch_group_pending", {"shard": "3"}) is None


def test_the_process_is_live_and_ready_only_while_every_shard_is() -> None:
    shards = [Health(30.0), Health(30.0)]
    for part in shards:
        part.connected = part.group_ready = True
    health = FleetHealth(shards)
    assert health.live
    assert health.ready
    shards[1].progress_at -= 31  # one shard's loop stalled: the others beating hide nothing
    assert not health.live
    shards[1].beat()
    shards[0].in_outage = True
    assert health.live
    assert not health.ready


def test_the_workers_take_a_tenant_being_moved_for_its_targets_and_producers_do_not() -> None:
    """move-tenant's fence: ``moving:T`` places T for the workers only; ``moved:T`` is
    bookkeeping that places nothing."""
    table = {"acme": 1, "moving:acme": 5, "moved:globex": 2, "globex": 3}
    assert workers_view(table) == {"acme": 5, "globex": 3}
    assert shard_of("acme", 8, table) == 1  # a producer keeps writing to the old shard
    assert shard_of("acme", 8, workers_view(table)) == 5
