"""``dead-letters redrive`` with STITCH_SHARDS > 1: a dead letter whose tenant belongs to
another shard now (a ``wrong_shard`` letter, or any letter of a tenant moved since) goes to
that shard's input stream, exactly once.

The letter and its target are in two slots (maybe on two nodes), so no one script can add
the copy and delete the letter. ``redrive_to.lua`` adds the copy on the target together
with a marker naming the letter (``<source shard>/<letter id>``) in the target's marker
hash; then the letter is deleted on its shard, then the marker. A run killed in between
leaves a marker: the next run (``finish_interrupted``, before anything else) deletes the
letter it names and then the marker, so the letter is never added twice. Two re-drives of
the same shard running at once are not covered (one run at a time, as an operator does).
"""

from __future__ import annotations

import redis

from resolver.scripts import CHECKS_LUA, load_lua
from resolver.sharding import OVERRIDES_KEY, parse_overrides, shard_of

from ..config import Settings
from ..connection import connect
from ..errors import ConfigError
from ..tenants import TENANT_RE
from .dead_letters import MAX_VALUES, DeadLetterRecord, Outcome

__all__ = ["MARKERS_NAME", "REDRIVE_TO_LUA", "ShardRedrive", "markers_key", "read_table"]

MARKERS_NAME = ":redriven"
"""Beside a shard's alias maps: ``alias:{tag}::redriven``. No tenant's key can be named so
(a tenant holds no ':'), the ACL key patterns already cover it, and map scans skip it."""
REDRIVE_TO_LUA = (
    f"local MAX_VALUES = {MAX_VALUES}\n" + CHECKS_LUA + load_lua("worker", "redrive_to.lua")
)


def read_table(client: redis.Redis, shards: int) -> dict[str, int]:
    """The override table, every field of it (a move's too); a bad one is a ConfigError."""
    try:
        return parse_overrides(client.hgetall(OVERRIDES_KEY), shards)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def markers_key(own: Settings) -> str:
    """The marker hash of the shard whose key names ``own`` holds."""
    return own.alias_prefix + MARKERS_NAME


class ShardRedrive:
    """Where each dead letter of shard ``source`` goes, and the cross-shard re-drive."""

    __slots__ = ("_base", "_clients", "_overrides", "_scripts", "_source", "source")

    def __init__(self, base: Settings, source: int, overrides: dict[str, int]) -> None:
        self._base = base
        self.source = source
        self._source = base.for_shard(source)
        self._overrides = overrides
        self._clients: dict[int, redis.Redis] = {}
        self._scripts: dict[int, str] = {}

    @classmethod
    def read(cls, base: Settings, source: int) -> ShardRedrive:
        """With the override table as it is now (the shards tenants belong to today)."""
        return cls(base, source, read_table(connect(base, route_key=OVERRIDES_KEY), base.shards))

    def target(self, record: DeadLetterRecord) -> int:
        """The shard of the letter's tenant; its own shard for a letter without a valid one."""
        tenant = record.tenant
        if tenant is None or not TENANT_RE.match(tenant.encode()):
            return self.source
        if tenant == self._base.reserved_tenant:
            return self.source
        return shard_of(tenant, self._base.shards, self._overrides)

    def input_stream(self, shard: int) -> str:
        return self._base.for_shard(shard).input_stream

    def finish_interrupted(self) -> int:
        """Delete the letters an interrupted run already added elsewhere; their markers
        after. Returns how many markers were found."""
        found = 0
        prefix = f"{self.source}/"
        for shard in range(self._base.shards):
            if shard == self.source:
                continue
            client, markers = self._client(shard), markers_key(self._base.for_shard(shard))
            names = [_text(name) for name in client.hkeys(markers)]
            names = [name for name in names if name.startswith(prefix)]
            if names:
                self._finish(shard, names)
                found += len(names)
        return found

    def redrive(self, shard: int, records: list[DeadLetterRecord]) -> list[Outcome]:
        """Add each record's fields to ``shard``'s input (at most once), then delete them
        here; records that cannot be re-driven are left, with their reason."""
        outcomes = [record.expected() for record in records]
        movable = [r for r, o in zip(records, outcomes, strict=True) if o is Outcome.REDRIVEN]
        if movable:
            own = self._base.for_shard(shard)
            keys = [own.input_stream, markers_key(own)]
            sha, pipe = self._script(shard), self._client(shard).pipeline(transaction=False)
            for record in movable:
                pipe.evalsha(sha, len(keys), *keys, self._marker(record.id), *record.fields)
            pipe.execute()
            self._finish(shard, [self._marker(record.id) for record in movable])
        return outcomes

    def _marker(self, letter_id: str) -> str:
        return f"{self.source}/{letter_id}"

    def _finish(self, shard: int, markers: list[str]) -> None:
        """XDEL the letters the markers name, here; then HDEL the markers there."""
        ids = [marker.partition("/")[2] for marker in markers]
        self._client(self.source).xdel(self._source.dead_stream, *ids)
        self._client(shard).hdel(markers_key(self._base.for_shard(shard)), *markers)

    def _client(self, shard: int) -> redis.Redis:
        if shard not in self._clients:
            own = self._base.for_shard(shard)
            self._clients[shard] = connect(own, route_key=own.input_stream)
        return self._clients[shard]

    def _script(self, shard: int) -> str:
        """The script's SHA, loaded on the shard's node (a pipeline cannot load it)."""
        if shard not in self._scripts:
            self._scripts[shard] = self._client(shard).script_load(REDRIVE_TO_LUA)
        return self._scripts[shard]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
