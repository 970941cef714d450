"""``lehnz-stitch``: run the daemon, resolve or explain ids, or run the embedded demo.

The only place that turns errors into exit codes: 0 done, 2 bad configuration,
3 Redis unavailable past the give-up time, 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import msgspec
import redis

from resolver import Resolver

from .acl import acl_lines
from .app import EXIT_OK, run
from .config import Settings, env_name
from .connection import connect, redact
from .errors import BadArgumentError, ConfigError, RedisUnavailableError
from .explaining import explain as explain_id
from .logs import configure_logging, get_logger

__all__ = ["build_parser", "main", "settings_from"]

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
    for sub in (run, resolve, explain, demo, acl):
        _add_setting_flags(sub)
    return parser


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
        from .demo import run_demo  # imports fakeredis lazily: only the demo needs it

        return run_demo(settings, args.sample)
    except RedisUnavailableError as exc:
        get_logger().error("giving up", error=str(exc))
        return EXIT_REDIS
    except ConfigError as exc:
        print(f"lehnz-stitch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BadArgumentError as exc:
        print(f"lehnz-stitch: {exc}", file=sys.stderr)
        return EXIT_CONFIG


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
