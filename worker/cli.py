"""``lehnz-stitch``: run the daemon, resolve or explain ids, run the embedded demo, operate it.

The only place that turns errors into exit codes: 0 done, 2 bad configuration,
3 Redis unavailable past the give-up time, 1 anything unexpected (and 130 from an operator
command stopped by Ctrl-C between two pages: worker/ops/commands.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import redis

from resolver import Resolver

from . import ops
from .acl import ADMIN_USER, acl_lines
from .app import EXIT_OK, run
from .config import Settings, env_name
from .connection import connect, redact
from .deadletters import DeadLetter
from .errors import BadArgumentError, ConfigError, RedisUnavailableError
from .explaining import explain as explain_id
from .logs import configure_logging, get_logger
from .ops import auditing, moving, quarantining, removal, routing

__all__ = ["build_parser", "dead_letters", "main", "settings_from"]

EXIT_CONFIG, EXIT_REDIS = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lehnz-stitch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the stitching daemon")
    run.add_argument(
        "--drain",
        action="store_true",
        help="exit 0 once nothing new or claimable is left (backfills, benchmarks)",
    )
    resolve = commands.add_parser("resolve", help="print the resolved id of each ID")
    resolve.add_argument("--tenant", required=True)
    resolve.add_argument("--chain", action="store_true", help="print the whole path")
    resolve.add_argument("ids", nargs="+", metavar="ID")
    explain = commands.add_parser(
        "explain", help="show ID's chain with each link's provenance, and refused identifies"
    )
    explain.add_argument("--tenant", required=True)
    explain.add_argument("--json", action="store_true", help="one JSON object, for tools")
    explain.add_argument("id", metavar="ID")
    demo = commands.add_parser("demo", help="run the real worker on an embedded Redis and a sample")
    demo.add_argument("--sample", help="JSON-lines sample to feed (default: the shipped one)")
    acl = commands.add_parser("acl", help="print the ACL SETUSER lines for the configured keys")
    operators = [
        *_operator_commands(commands),
        *ops.transfer_commands(commands),
        *_removal_commands(commands),
        *quarantining.quarantine_commands(commands),
        auditing.audit_command(commands),
        *routing.route_commands(commands),
    ]
    for sub in (run, resolve, explain, demo, acl, *operators):
        _add_setting_flags(sub)
    return parser


ADMIN_URL = f"STITCH_REDIS_URL=redis://{ADMIN_USER}:PASSWORD@redis:6379/0"
STATUS_EXAMPLE = f"""example:
  {ADMIN_URL} lehnz-stitch status --watch 5

Reads the group and its consumers (XINFO), the three streams, HLEN of every alias map, and
the whole dead-letter stream (XRANGE in pages, at most STITCH_DEAD_MAXLEN entries) to count
dead letters by error_code; --watch then reads only the dead letters added since.
Needs the {ADMIN_USER} ACL user; exit codes: 0 done (also on Ctrl-C under --watch),
2 bad configuration or a user without the rights, 3 Redis unreachable."""
DEAD_LETTERS_EXAMPLE = f"""examples:
  {ADMIN_URL} lehnz-stitch dead-letters list --code event_not_json --tenant acme
  lehnz-stitch dead-letters redrive --code id_too_long --dry-run
  lehnz-stitch dead-letters redrive --code id_too_long
  lehnz-stitch dead-letters purge --before 2026-01-31T00:00:00Z --code event_not_json

redrive puts each matching dead letter's original fields (error, error_code and source_id
removed) back on the input stream and deletes the dead letter in the same Lua script, one
page at a time: each is re-driven at most once, even if the command is killed and run again.
Dead letters without payload (too_many_fields, entry_too_large, commit_failed) are re-driven
from their source entry while the input stream still holds it. Needs the {ADMIN_USER} ACL
user; exit codes: 0 done, 2 bad configuration or a user without the rights, 3 Redis
unreachable, 130 stopped by Ctrl-C between two pages (run it again to continue)."""


def _operator_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """``status`` and ``dead-letters list|redrive|purge``: their parsers, for the setting flags."""
    raw = argparse.RawDescriptionHelpFormatter
    status = commands.add_parser(
        "status",
        help="group lag, consumers, dead letters by code, links per tenant, last commit",
        description="Group lag, consumers, dead letters by code, links per tenant, last commit.",
        epilog=STATUS_EXAMPLE,
        formatter_class=raw,
    )
    status.add_argument("--json", action="store_true", help="one JSON object per reading")
    status.add_argument(
        "--watch", type=_seconds, metavar="SECONDS", help="read again every SECONDS until Ctrl-C"
    )
    dead = commands.add_parser(
        "dead-letters",
        help="list, re-drive or purge dead letters",
        epilog=DEAD_LETTERS_EXAMPLE,
        formatter_class=raw,
    )
    actions = dead.add_subparsers(dest="action", required=True)
    listing = _action(actions, "list", "print dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    listing.add_argument("--limit", type=_positive, metavar="N", help="print at most N")
    redrive = _action(actions, "redrive", "put dead letters back on the input stream")
    for sub in (listing, redrive):
        sub.add_argument("--code", type=_code, help="only dead letters with this error_code")
        sub.add_argument("--tenant", help="only dead letters of this tenant")
    purge = _action(actions, "purge", "delete dead letters older than an entry id")
    purge.add_argument(
        "--before",
        required=True,
        type=_before,
        metavar="ENTRY_ID",
        help="an entry id (1700000000000-0) or an ISO time (UTC unless it names a zone)",
    )
    purge.add_argument("--code", type=_code, help="only dead letters with this error_code")
    for sub in (redrive, purge):
        sub.add_argument("--dry-run", action="store_true", help="count, change nothing")
    leaves = [status, listing, redrive, purge]
    for sub in leaves:  # the usage line shows the command's own options, not every setting
        own = " ".join(sub.format_usage().removeprefix("usage: ").split())
        sub.usage = own + " [--SETTING VALUE ...]"
    return leaves


def _removal_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """``unlink`` and ``forget`` (README: Correcting and erasing identities)."""
    unlink = commands.add_parser(
        "unlink", help="remove PREV's outgoing link (a wrong merge); --block: for good"
    )
    unlink.add_argument("id", metavar="PREV")
    unlink.add_argument("--block", action="store_true", help="never make this link again")
    forget = commands.add_parser(
        "forget", help="erase ID's person: its whole component, with tombstones (GDPR)"
    )
    forget.add_argument("id", metavar="ID")
    for sub in (unlink, forget):
        sub.add_argument("--tenant", required=True)
        sub.add_argument(
            "--dry-run", action="store_true", help="print what changes, change nothing"
        )
        sub.add_argument("--reason", default="", help="recorded in the change feed")
        sub.add_argument("--json", action="store_true", help="one JSON object, for tools")
    return [unlink, forget]


def _action(actions: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=DEAD_LETTERS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _code(text: str) -> str:
    if text not in {str(code) for code in DeadLetter}:
        codes = ", ".join(sorted(DeadLetter))
        raise argparse.ArgumentTypeError(f"{text!r} is not an error_code; the codes: {codes}")
    return text


def _before(text: str) -> str:
    try:
        return ops.parse_before(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for field in msgspec.structs.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f"setting_{field.name}",
            metavar="VALUE",
            help=f"overrides {env_name(field.name)}",
        )


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The settings: ``STITCH_*`` variables, then the flags ``args`` carries on top."""
    overrides = {
        k.removeprefix("setting_"): v for k, v in vars(args).items() if k.startswith("setting_")
    }
    return Settings.from_env(env, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"lehnz-stitch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    try:
        return routing.for_command(settings, args, lambda own: _dispatch(own, args, settings))
    except RedisUnavailableError as exc:
        get_logger().error("giving up", error=str(exc))
        return EXIT_REDIS
    except ConfigError as exc:
        print(f"lehnz-stitch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BadArgumentError as exc:
        print(f"lehnz-stitch: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _dispatch(settings: Settings, args: argparse.Namespace, base: Settings) -> int:
    """The command, with the key names it needs (one shard's when STITCH_SHARDS > 1;
    ``base``: the unsharded ones)."""
    if args.command == "run":
        return run(settings, drain=args.drain)
    if args.command == "resolve":
        return resolve(settings, args.tenant, args.ids, chain=args.chain)
    if args.command == "explain":
        print(explain_id(settings, args.tenant, args.id, as_json=args.json))
        return EXIT_OK
    if args.command == "acl":
        print(acl_lines(settings))
        return EXIT_OK
    if args.command == "status":
        return ops.status(settings, as_json=args.json, watch=args.watch)
    if args.command == "dead-letters":
        return dead_letters(settings, args, base)
    if args.command == "export":
        return ops.export_map(settings, tenant=args.tenant, fmt=args.format, output=args.output)
    if args.command == "import":
        return ops.import_links(
            settings, tenant=args.tenant, path=args.file, fmt=args.format, dry_run=args.dry_run
        )
    if args.command in ("unlink", "forget"):
        return _removal(settings, args)
    if args.command == "quarantine":
        return quarantining.quarantine(settings, args)
    if args.command == "audit":
        return auditing.audit(settings, args)
    if args.command == "route":
        return routing.route_command(settings, args)
    if args.command == "move-tenant":
        return moving.move_tenant(base, args)
    from .demo import run_demo  # imports fakeredis lazily: only the demo needs it

    return run_demo(settings, args.sample)


def dead_letters(settings: Settings, args: argparse.Namespace, base: Settings) -> int:
    if args.action == "list":
        return ops.list_dead_letters(
            settings, code=args.code, tenant=args.tenant, as_json=args.json, limit=args.limit
        )
    if args.action == "redrive":
        return ops.redrive(
            settings, code=args.code, tenant=args.tenant, dry_run=args.dry_run, base=base
        )
    return ops.purge(settings, before=args.before, code=args.code, dry_run=args.dry_run)


def _removal(settings: Settings, args: argparse.Namespace) -> int:
    how = {"reason": args.reason, "dry_run": args.dry_run, "as_json": args.json}
    if args.command == "unlink":
        return removal.unlink(settings, args.tenant, args.id, block=args.block, **how)
    return removal.forget(settings, args.tenant, args.id, **how)


def resolve(settings: Settings, tenant: str, ids: list[str], *, chain: bool) -> int:
    resolver = Resolver(
        connect(settings), key_prefix=settings.alias_prefix, max_depth=settings.max_chain_depth
    )
    try:
        if chain:
            for uid in ids:
                print(" -> ".join(resolver.chain(tenant, uid)))
        else:
            for uid, root in zip(ids, resolver.resolve_many(tenant, ids), strict=True):
                print(f"{uid}\t{root}")
    except redis.ConnectionError as exc:
        raise RedisUnavailableError(
            f"{env_name('redis_url')}={redact(settings.redis_url)}: {exc}"
        ) from None
    return EXIT_OK
