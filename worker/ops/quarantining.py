"""``quarantine list|approve|reject|set-limit``: review the links merge protection held.

The Redis side is the library's (resolver/quarantine.py, lua/quarantine.lua): approve
re-checks every rule but the size cap (placeholders here, the rest atomically) and applies
the link; reject drops it, ``--block`` refusing it for good. Needs the stitch-admin ACL user.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from resolver.erasing import new_op_id
from resolver.links import LinkRules
from resolver.quarantine import decide, held_links, rate_limit, set_limit, size_cap

from ..config import Settings
from ..connection import connect
from ..errors import BadArgumentError
from ..explaining import check_tenant
from .commands import redis_errors

__all__ = ["CONSUMER", "quarantine", "quarantine_commands"]

CONSUMER = "lehnz-stitch-quarantine"
"""The ``consumer`` field of an approved link's provenance (its source id is the op id)."""
EXIT_REFUSED = 1


def quarantine_commands(commands: Any) -> list[argparse.ArgumentParser]:
    parser = commands.add_parser(
        "quarantine",
        help="review links held by the size cap or the rate rule: list, approve, reject, set-limit",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the tenant's held links, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    approve = actions.add_parser("approve", help="apply PREV's held link (other rules re-checked)")
    approve.add_argument("id", metavar="PREV")
    reject = actions.add_parser("reject", help="drop PREV's held link")
    reject.add_argument("id", metavar="PREV")
    reject.add_argument("--block", action="store_true", help="never make this link again")
    # --max-component-size N is the setting's own flag (every command has them): given here,
    # it becomes the tenant's cap rather than this process's default
    limit = actions.add_parser(
        "set-limit",
        help="the tenant's own max component size (--max-component-size N) and/or max links "
        "per root per hour (--max-links-per-hour N, 0: no rate rule)",
    )
    limit.add_argument("--max-links-per-hour", type=int, metavar="N", dest="links_per_hour")
    leaves = [listing, approve, reject, limit]
    for sub in leaves:
        sub.add_argument("--tenant", required=True)
    return leaves


def quarantine(settings: Settings, args: argparse.Namespace) -> int:
    check_tenant(settings, args.tenant)
    client = connect(settings)
    alias_key = settings.alias_prefix + args.tenant
    with redis_errors(settings):
        if args.action == "list":
            return _list(client, settings, alias_key, as_json=args.json)
        if args.action == "set-limit":
            return _set_limit(client, settings, args, alias_key)
        mode = "approve" if args.action == "approve" else "reject"
        if args.action == "reject" and args.block:
            mode = "reject-block"
        done = decide(
            client,
            alias_key,
            args.tenant,
            args.id,
            mode,
            op_id=new_op_id(),
            consumer=CONSUMER,
            changes_key=settings.changes_key,
            changes_maxlen=settings.changes_maxlen,
            max_depth=settings.max_chain_depth,
            tombstone_key=settings.tombstone_key.encode() or None,
            is_placeholder=LinkRules(settings.placeholders).is_placeholder,
        )
    if done.outcome == "missing":
        print(f"nothing held for {args.id!r} in tenant {args.tenant!r}")
        return EXIT_REFUSED
    if done.outcome in ("applied", "noop"):
        print(f"approved {args.id} -> {done.user_id} (now resolves to {done.root})")
        return 0
    if done.outcome == "rejected":
        blocked = " and blocked it" if mode == "reject-block" else ""
        print(f"rejected {args.id} -> {done.user_id}{blocked}")
        return 0
    print(f"refused: {args.id} -> {done.user_id} is now {done.outcome}; still held")
    return EXIT_REFUSED


def _set_limit(client: Any, settings: Settings, args: argparse.Namespace, alias_key: str) -> int:
    size = None
    if getattr(args, "setting_max_component_size", None) is not None:
        size = settings.max_component_size
    rate = args.links_per_hour
    if size is None and rate is None:
        raise BadArgumentError(
            "quarantine set-limit needs --max-component-size N and/or --max-links-per-hour N"
        )
    if rate is not None and rate < 0:
        raise BadArgumentError("--max-links-per-hour must be 0 (no rate rule) or more")
    set_limit(client, alias_key, size, links_per_hour=rate)
    if size is not None:
        print(f"tenant {args.tenant!r}: max component size {size}")
    if rate is not None:
        print(f"tenant {args.tenant!r}: max links per root per hour {rate}")
    return 0


def _list(client: Any, settings: Settings, alias_key: str, *, as_json: bool) -> int:
    held = held_links(client, alias_key)
    if as_json:
        for link in held:
            print(json.dumps(link.as_json(), ensure_ascii=False))
        return 0
    cap = size_cap(client, alias_key, settings.max_component_size)
    rate = rate_limit(client, alias_key, settings.max_links_per_root_per_hour)
    print(f"{len(held)} held links (max component size {cap}, max links per root per hour {rate}):")
    for link in held:
        print(
            f"  {link.previous_user_id} -> {link.user_id}  {link.reason}  "
            f"source {link.source_id}  held at {link.held_at_ms}"
        )
    return 0
