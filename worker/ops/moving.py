"""``lehnz-stitch move-tenant``: a tenant with data moved to another shard while the workers
run (README: Scaling past one Redis, Moving one tenant).

1. fence     ``moving:T`` -> B in the override table: the workers take T for B's at once
             (their next refresh), so A's workers dead-letter T's new entries
             (``wrong_shard``); the producers still write to A (``route`` reads T's own field)
2. settle    every worker has re-read the table; T's entries pending on A (taken before the
             fence) are committed or dead-lettered
3. copy      every key of T on A to B's names (DUMP, RESTORE REPLACE, compared), then
             ``moved:T`` -> A: from here on B's copy is the live one
4. re-drive  T's ``wrong_shard`` letters on A to B's input, in order (shard_redrive.py)
5. switch    ``T`` -> B, then ``moving:T`` removed: the producers follow within their refresh
6. re-drive  after another settle, what producers wrote to A meanwhile
7. delete    T's keys on A, then ``moved:T``

Each step is safe to repeat, and the table's two fields say which were done: run again after
a crash at any point, the command carries on where it stood.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import redis

from resolver.heights import _glob_escape
from resolver.sharding import MOVED_PREFIX, MOVING_PREFIX, OVERRIDES_KEY
from resolver.sharding import shard_of as table_shard

from ..config import Settings, env_name
from ..connection import connect
from ..deadletters import DeadLetter
from ..errors import BadArgumentError, ConfigError
from ..explaining import check_tenant
from ..placement import OVERRIDES_REFRESH_S
from .commands import redis_errors
from .dead_letters import DeadLetters
from .shard_redrive import ShardRedrive, read_table

__all__ = ["PENDING_POLL_S", "SETTLE_S", "TenantMove", "move_tenant", "tenant_keys"]

SETTLE_S = 3 * OVERRIDES_REFRESH_S
"""Every worker's (and producer's) refresh of the table, plus a batch in flight."""
PENDING_POLL_S = 1.0
PAGE = 1_000


def tenant_keys(client: redis.Redis, alias_key: str) -> list[str]:
    """The tenant's alias hash and every key beside it (``<alias key>:*``), the hash last."""
    beside = client.scan_iter(match=_glob_escape(alias_key) + ":*", count=PAGE)
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in beside)
    return [*keys, alias_key] if client.exists(alias_key) else keys


class TenantMove:
    """One tenant's move to shard ``target``; ``say`` prints a progress line."""

    def __init__(
        self,
        base: Settings,
        tenant: str,
        target: int,
        *,
        settle_s: float = SETTLE_S,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.base = base
        self.tenant = tenant
        self.target = target
        self.settle_s = settle_s
        self._say = say
        self._table = connect(base, route_key=OVERRIDES_KEY)

    def read_table(self) -> dict[str, int]:
        return read_table(self._table, self.base.shards)

    def source(self, table: dict[str, int]) -> int:
        """Where T's keys are: the shard a copy came from, else T's shard for producers."""
        moved = table.get(MOVED_PREFIX + self.tenant)
        return moved if moved is not None else table_shard(self.tenant, self.base.shards, table)

    def run(self, wait_s: float) -> None:
        table = self.read_table()
        moving = table.get(MOVING_PREFIX + self.tenant)
        if MOVED_PREFIX + self.tenant in table and moving is None:
            moving = table_shard(self.tenant, self.base.shards, table)  # switched already
        if moving is not None and moving != self.target:
            raise BadArgumentError(
                f"move-tenant: {self.tenant!r} is being moved to shard {moving}: finish that "
                f"move first (move-tenant --tenant {self.tenant} --to {moving})"
            )
        source = self.source(table)
        if moving is None and MOVED_PREFIX + self.tenant not in table:
            if source == self.target:
                self.say(f"already on shard {self.target}: nothing to do")
                return
            self.fence(source)
        if MOVED_PREFIX + self.tenant not in table:
            self.settle()
            self.wait_pending(source, wait_s)
            self.copy(source)
        if MOVING_PREFIX + self.tenant in self.read_table():
            self.redrive(source, "4/7")
            self.switch()
        self.settle()
        self.redrive(source, "6/7")
        self.delete(source)

    def plan(self) -> None:
        """``--dry-run``: where it stands and what a run would move; nothing written."""
        table = self.read_table()
        source = self.source(table)
        own = self.base.for_shard(source)
        client = connect(own, route_key=own.input_stream)
        keys = tenant_keys(client, own.alias_prefix + self.tenant)
        letters = DeadLetters(client, own).pages(code=DeadLetter.WRONG_SHARD, tenant=self.tenant)
        waiting = sum(len(records) for _, records in letters)
        stage = [f for f in (MOVING_PREFIX, MOVED_PREFIX) if f + self.tenant in table]
        self.say(
            f"from shard {source} to shard {self.target}: {len(keys)} keys, {waiting} "
            f"wrong_shard dead letters on shard {source}; under way: {', '.join(stage) or 'no'}"
        )

    def say(self, line: str) -> None:
        self._say(f"move-tenant {self.tenant!r}: {line}")

    def fence(self, source: int) -> None:
        self._refuse_data(self.target)
        self._table.hset(OVERRIDES_KEY, MOVING_PREFIX + self.tenant, str(self.target))
        self.say(f"1/7 fenced: workers take it for shard {self.target}'s, not {source}'s")

    def settle(self) -> None:
        self.say(f"waiting {self.settle_s:g} s for every worker and producer to re-read the table")
        time.sleep(self.settle_s)

    def wait_pending(self, source: int, wait_s: float) -> None:
        own = self.base.for_shard(source)
        client = connect(own, route_key=own.input_stream)
        deadline = time.monotonic() + wait_s
        while pending := _pending_of(client, own, self.tenant):
            if time.monotonic() > deadline:
                raise BadArgumentError(
                    f"move-tenant: {pending} entries of {self.tenant!r} still pending on "
                    f"{own.input_stream} after {wait_s:g} s (a worker down?); run again"
                )
            self.say(f"2/7 {pending} entries still pending on {own.input_stream}")
            time.sleep(PENDING_POLL_S)
        self.say(f"2/7 settled: nothing of it pending on {own.input_stream}")

    def copy(self, source: int) -> None:
        old, new = self.base.for_shard(source), self.base.for_shard(self.target)
        src = connect(old, route_key=old.input_stream)
        dst = connect(new, route_key=new.input_stream)
        keys = tenant_keys(src, old.alias_prefix + self.tenant)
        for key in keys:
            _copy_key(src, dst, key, new.alias_prefix + key.removeprefix(old.alias_prefix))
        self._table.hset(OVERRIDES_KEY, MOVED_PREFIX + self.tenant, str(source))
        self.say(f"3/7 copied {len(keys)} keys from shard {source} to shard {self.target}")

    def redrive(self, source: int, step: str) -> None:
        own = self.base.for_shard(source)
        mover = ShardRedrive(self.base, source, {self.tenant: self.target})
        mover.finish_interrupted()
        letters = DeadLetters(connect(own, route_key=own.dead_stream), own)
        done = 0
        for _, records in letters.pages(code=DeadLetter.WRONG_SHARD, tenant=self.tenant):
            done += len(mover.redrive(self.target, records))
        self.say(f"{step} re-drove {done} dead letters from shard {source} to shard {self.target}")

    def switch(self) -> None:
        self._table.hset(OVERRIDES_KEY, self.tenant, str(self.target))
        self._table.hdel(OVERRIDES_KEY, MOVING_PREFIX + self.tenant)
        self.say(f"5/7 switched: producers write to shard {self.target} (fence lifted)")

    def delete(self, source: int) -> None:
        own = self.base.for_shard(source)
        client = connect(own, route_key=own.input_stream)
        keys = tenant_keys(client, own.alias_prefix + self.tenant)
        for key in keys:  # the alias hash last: what is left is still recognisably T's
            client.unlink(key)
        self._table.hdel(OVERRIDES_KEY, MOVED_PREFIX + self.tenant)
        self.say(f"7/7 done: deleted {len(keys)} keys on shard {source}")

    def _refuse_data(self, shard: int) -> None:
        own = self.base.for_shard(shard)
        client = connect(own, route_key=own.input_stream)
        found = tenant_keys(client, own.alias_prefix + self.tenant)
        if found:
            raise BadArgumentError(
                f"move-tenant: shard {shard} already holds keys of {self.tenant!r} "
                f"({found[0]}): it would be overwritten"
            )


def move_tenant(base: Settings, args: argparse.Namespace) -> int:
    """The command: checks, then the move (or its plan); exit codes as the CLI's."""
    if base.shards == 1:
        raise BadArgumentError(f"move-tenant: {env_name('shards')} is 1, there is one shard")
    check_tenant(base, args.tenant)
    if not 0 <= args.to < base.shards:
        raise BadArgumentError(f"--to {args.to}: not within 0..{base.shards - 1}")
    move = TenantMove(base, args.tenant, args.to, settle_s=args.settle)
    with redis_errors(base):
        if args.dry_run:
            move.plan()
        else:
            move.run(args.wait)
    return 0


def _copy_key(src: redis.Redis, dst: redis.Redis, key: str, to: str) -> None:
    """DUMP and RESTORE REPLACE (any type, byte for byte, its TTL kept), then the sizes
    compared (not the DUMPs: a large hash's order differs between two servers' hash seeds)."""
    payload = src.dump(key)
    if payload is None:  # a scratch hash that expired meanwhile
        return
    ttl = max(int(src.pttl(key)), 0)
    dst.restore(to, ttl, payload, replace=True)
    if _size(src, key) != _size(dst, to):
        raise ConfigError(f"move-tenant: the copy of {key} as {to} differs; run again")


SIZE_COMMANDS = {"hash": "HLEN", "zset": "ZCARD", "stream": "XLEN"}
"""The types a tenant's keys have (alias and beside it), and how to count their members."""


def _size(client: redis.Redis, key: str) -> tuple[str, int]:
    kind = _text(client.type(key))
    size = SIZE_COMMANDS.get(kind)
    return kind, int(client.execute_command(size, key)) if size else 0  # type: ignore[no-untyped-call]


def _pending_of(client: redis.Redis, own: Settings, tenant: str) -> int:
    """Entries of ``tenant`` delivered to ``own``'s group and not yet acknowledged."""
    wanted, start, found = tenant.encode(), "-", 0
    while True:
        try:
            page = client.xpending_range(own.input_stream, own.group, start, "+", PAGE)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise
        pipe = client.pipeline(transaction=False)
        for row in page:
            pipe.xrange(own.input_stream, row["message_id"], row["message_id"])
        for found_entry in pipe.execute():
            found += sum(1 for _, fields in found_entry if fields.get(b"tenant") == wanted)
        if len(page) < PAGE:
            return found
        start = "(" + _text(page[-1]["message_id"])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
