"""STITCH_SHARDS > 1 for the command line: ``route`` (where a tenant lives; ``route set`` places
a tenant before it has data), and every other command given its shard's key names: a tenant's
commands that shard's, ``status`` and ``dead-letters`` each shard of STITCH_SHARD_SUBSET."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from resolver.heights import _glob_escape
from resolver.sharding import (
    MOVED_PREFIX,
    MOVING_PREFIX,
    OVERRIDES_KEY,
    Route,
    route,
)
from resolver.sharding import shard_of as hashed_shard

from ..acl import ADMIN_USER
from ..config import Settings, env_name
from ..connection import connect
from ..errors import BadArgumentError
from ..explaining import check_tenant
from .commands import redis_errors
from .moving import SETTLE_S
from .shard_redrive import read_table

__all__ = ["TENANT_COMMANDS", "for_command", "route_command", "route_commands"]

TENANT_COMMANDS = (
    "resolve",
    "explain",
    "export",
    "import",
    "unlink",
    "forget",
    "quarantine",
    "audit",
)
"""Commands about one tenant: they run against its shard's keys."""
EACH_SHARD_COMMANDS = ("status", "dead-letters")
PAGE = 1_000
MOVE_EXAMPLE = f"""example:
  STITCH_REDIS_URL=redis://{ADMIN_USER}:PASSWORD@redis:6379/0 STITCH_SHARDS=8 \\
    lehnz-stitch move-tenant --tenant bigco --to 5

Fences the tenant (the workers take it for the target's; its entries on the old shard are
dead-lettered as wrong_shard), waits for the table refreshes and its pending entries, copies
its keys (DUMP, RESTORE), re-drives its dead letters to the target, switches the producers,
re-drives what they wrote meanwhile and deletes the old keys. Run it again after a crash: it
carries on where it stood. Exit codes: 0 done, 2 bad configuration or argument (or pending
entries past --wait), 3 Redis unreachable."""
ROUTE_EXAMPLE = f"""examples:
  STITCH_SHARDS=8 lehnz-stitch route --tenant acme --tenant globex --json
  STITCH_REDIS_URL=redis://{ADMIN_USER}:PASSWORD@redis:6379/0 STITCH_SHARDS=8 \\
    lehnz-stitch route set --tenant bigco --shard 5

route prints each tenant's shard and keys (the override table {OVERRIDES_KEY} first, else
CRC-32 of the name mod STITCH_SHARDS). route set places a tenant that has no data yet (no
alias hash, no entry waiting on its current shard's input stream); a tenant with data is
moved with move-tenant (README.md: Scaling past one Redis). Workers pick the change up
within their override refresh (10 s). Exit codes: 0 done, 2 bad configuration or argument
(a tenant with data included), 3 Redis unreachable."""


def route_commands(commands: Any) -> list[argparse.ArgumentParser]:
    parser: argparse.ArgumentParser = commands.add_parser(
        "route",
        help="print each tenant's shard and keys; 'route set' places a new tenant",
        description="Print each tenant's shard and keys; 'route set' places a new tenant.",
        epilog=ROUTE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", nargs="?", choices=["set"], help="place --tenant on --shard")
    parser.add_argument("--tenant", action="append", required=True, help="repeatable")
    parser.add_argument("--shard", type=int, help="with 'set': the shard to place it on")
    parser.add_argument("--json", action="store_true", help="one JSON object, for tools")
    parser.usage = "lehnz-stitch route [set] --tenant T [--tenant T2 ...] [--shard S] [--json] "
    parser.usage += "[--SETTING VALUE ...]"
    return [parser, _move_command(commands)]


def _move_command(commands: Any) -> argparse.ArgumentParser:
    move: argparse.ArgumentParser = commands.add_parser(
        "move-tenant",
        help="move a tenant that has data to another shard, while the workers run",
        description="Move a tenant that has data to another shard (fenced cut-over).",
        epilog=MOVE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    move.add_argument("--tenant", required=True)
    move.add_argument("--to", type=int, required=True, metavar="SHARD")
    move.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    move.add_argument("--settle", type=float, default=SETTLE_S, metavar="SECONDS",
                      help=f"wait for table refreshes (default {SETTLE_S:g})")  # fmt: skip
    move.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                      help="give up waiting for pending entries (default 300)")  # fmt: skip
    move.usage = "lehnz-stitch move-tenant --tenant T --to SHARD [--dry-run] [--SETTING VALUE ...]"
    return move


def for_command(
    settings: Settings, args: argparse.Namespace, dispatch: Callable[[Settings], int]
) -> int:
    """Run ``dispatch`` with the key names the command needs."""
    if settings.shards == 1:
        return dispatch(settings)
    if args.command in TENANT_COMMANDS:
        check_tenant(settings, args.tenant)
        return dispatch(tenant_settings(settings, args.tenant))
    if args.command in EACH_SHARD_COMMANDS:
        return _each_shard(settings, args, dispatch)
    return dispatch(settings)


def tenant_settings(settings: Settings, tenant: str) -> Settings:
    overrides = read_overrides(settings)
    if MOVING_PREFIX + tenant in overrides:
        raise BadArgumentError(
            f"tenant {tenant!r} is being moved to shard {overrides[MOVING_PREFIX + tenant]}: "
            "run this once move-tenant has finished"
        )
    return settings.for_shard(hashed_shard(tenant, settings.shards, overrides))


def read_overrides(settings: Settings) -> dict[str, int]:
    with redis_errors(settings):
        return read_table(connect(settings, route_key=OVERRIDES_KEY), settings.shards)


def _each_shard(
    settings: Settings, args: argparse.Namespace, dispatch: Callable[[Settings], int]
) -> int:
    shards = settings.shard_numbers
    if getattr(args, "watch", None) is not None and len(shards) > 1:
        raise BadArgumentError(
            f"status --watch reads one shard: add --shard-subset N ({env_name('shards')}="
            f"{settings.shards})"
        )
    worst = 0
    for shard in shards:
        own = settings.for_shard(shard)
        print(f"== shard {shard}: {own.input_stream}", file=sys.stderr, flush=True)
        worst = max(worst, dispatch(own))
    return worst


def route_command(settings: Settings, args: argparse.Namespace) -> int:
    for tenant in args.tenant:
        check_tenant(settings, tenant)
    if args.action == "set":
        return _place(settings, args)
    if args.shard is not None:
        raise BadArgumentError("--shard: only with 'route set'")
    overrides = read_overrides(settings) if settings.shards > 1 else {}
    routes = [route(t, settings.shards, overrides, settings) for t in args.tenant]
    if args.json:
        print(json.dumps({r.tenant: r.as_dict() for r in routes}))
    else:
        for r in routes:
            print("\t".join([r.tenant, str(r.shard), r.keys.input_stream, r.alias_key]))
    return 0


def _place(settings: Settings, args: argparse.Namespace) -> int:
    if settings.shards == 1:
        raise BadArgumentError(f"route set: {env_name('shards')} is 1, there is one shard")
    if len(args.tenant) != 1 or args.shard is None:
        raise BadArgumentError("route set: one --tenant and --shard")
    tenant, shard = args.tenant[0], args.shard
    if not 0 <= shard < settings.shards:
        raise BadArgumentError(f"--shard {shard}: not within 0..{settings.shards - 1}")
    overrides = read_overrides(settings)
    if MOVING_PREFIX + tenant in overrides or MOVED_PREFIX + tenant in overrides:
        raise BadArgumentError(f"route set: tenant {tenant!r} is being moved (move-tenant)")
    current = route(tenant, settings.shards, overrides, settings)
    if current.shard != shard:
        _refuse_if_data(settings, current, "its current shard")
        _refuse_if_data(settings, route(tenant, settings.shards, {tenant: shard}, settings), "")
    client = connect(settings, route_key=OVERRIDES_KEY)
    with redis_errors(settings):
        client.hset(OVERRIDES_KEY, tenant, str(shard))
    print(f"tenant {tenant!r}: shard {current.shard} -> {shard}")
    return 0


def _refuse_if_data(settings: Settings, where: Route, what: str) -> None:
    """A tenant with an alias hash, or entries not yet processed on the input stream, has
    data there: placing it elsewhere would split its map or strand its events."""
    own = settings.for_shard(where.shard)
    client = connect(own, route_key=own.input_stream)
    with redis_errors(own):
        found = _has_alias_keys(client, where.alias_key) or _waiting(client, own, where.tenant)
    if found:
        raise BadArgumentError(
            f"route set: tenant {where.tenant!r} has {found} on shard {where.shard}"
            f"{' (' + what + ')' if what else ''}; move it with lehnz-stitch move-tenant "
            "(README.md, Scaling past one Redis: Moving one tenant)"
        )


def _has_alias_keys(client: redis.Redis, alias_key: str) -> str:
    if client.exists(alias_key):
        return f"an alias hash ({alias_key})"
    for key in client.scan_iter(match=_glob_escape(alias_key) + ":*", count=1000):
        return f"keys beside its alias map ({key.decode()})"
    return ""


def _waiting(client: redis.Redis, settings: Settings, tenant: str) -> str:
    """Entries of ``tenant`` the group has not acknowledged: from its oldest pending entry,
    or else after its last delivered one, to the end of the stream."""
    start = _first_unacked(client, settings)
    wanted = tenant.encode()
    while start is not None:
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            settings.input_stream, start, "+", count=PAGE
        )
        if any(fields.get(b"tenant") == wanted for _, fields in page):
            return f"entries waiting on {settings.input_stream}"
        start = "(" + page[-1][0].decode() if len(page) == PAGE else None
    return ""


def _first_unacked(client: redis.Redis, settings: Settings) -> str | None:
    if not client.exists(settings.input_stream):
        return None
    for group in client.xinfo_groups(settings.input_stream):
        if _text(group["name"]) == settings.group:
            pending = client.xpending(settings.input_stream, settings.group)
            if pending["pending"]:
                return _text(pending["min"])
            return "(" + _text(group["last-delivered-id"])
    return "-"  # no group yet: every entry is waiting


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
