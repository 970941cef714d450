"""``audit --tenant T [--apply] [--json]``: the tenant's existing links that break the
current rules, held in the quarantine with ``--apply`` (see resolver/auditing.py).

Findings go to stdout as they are found (one line each, or one JSON object each), progress
and warnings to stderr, and the summary last to stdout. Needs the stitch-admin ACL user.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from resolver.auditing import PAGE, Finding, component_findings, hold, map_findings
from resolver.erasing import new_op_id
from resolver.heights import accounted, sync
from resolver.ids import decode_id
from resolver.links import LinkRules
from resolver.removals import TombstoneKeyMissingError

from ..acl import ADMIN_USER
from ..config import Settings, env_name
from ..connection import connect
from ..errors import ConfigError
from ..explaining import check_tenant
from .commands import EXIT_INTERRUPTED, redis_errors
from .quarantining import CONSUMER
from .terminal import Progress, capture_interrupt, table

__all__ = ["EXIT_FOUND", "audit", "audit_command"]

EXIT_FOUND = 1
"""Links that break a rule are left in the map: found without --apply, or left by it."""
AUDIT_EXAMPLE = f"""examples:
  lehnz-stitch audit --tenant acme
  lehnz-stitch audit --tenant acme --apply --json > held.jsonl

Lists the links that break the rules as they are now: a placeholder on either side
(STITCH_EXTRA_PLACEHOLDERS too), a blocked link, an erased id, a previous_user_id deeper than
STITCH_MAX_CHAIN_DEPTH, and, in a component over the tenant's size cap, the links the size
rule would have held had the cap been in force (replayed in provenance order; approved links
always kept). --apply holds each in the quarantine (reason audit:<rule>) as unlink removes
it, one Lua script per page of {PAGE}; review them with `quarantine list|approve|reject`.
Needs the {ADMIN_USER} ACL user; exit codes: 0 nothing (left) to hold, 1 links found and
left in the map, 2 bad configuration or argument, 3 Redis unreachable, 130 stopped by
Ctrl-C between two pages (run it again to continue)."""


def audit_command(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="list existing links that break the current rules; --apply: hold them",
        description="List a tenant's existing links that break the current link rules.",
        epilog=AUDIT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--apply", action="store_true", help="hold them in the quarantine")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    own = " ".join(parser.format_usage().removeprefix("usage: ").split())
    parser.usage = own + " [--SETTING VALUE ...]"  # not every setting's flag
    return parser


class _Run:
    """One audit: where findings go, what was counted."""

    __slots__ = ("alias_key", "args", "client", "found", "op_id", "settings", "tally")

    def __init__(self, settings: Settings, client: redis.Redis, args: argparse.Namespace):
        self.settings, self.client, self.args = settings, client, args
        self.alias_key = settings.alias_prefix + args.tenant
        self.op_id = new_op_id()
        self.found: set[bytes] = set()
        self.tally: Counter[tuple[str, str]] = Counter()

    def report(self, findings: Sequence[Finding]) -> None:
        fresh = [f for f in findings if f.previous_user_id not in self.found]
        if not fresh:
            return
        self.found.update(f.previous_user_id for f in fresh)
        statuses = ["found"] * len(fresh)
        if self.args.apply:
            statuses = hold(
                self.client,
                self.alias_key,
                self.args.tenant,
                fresh,
                op_id=self.op_id,
                changes_key=self.settings.changes_key,
                changes_maxlen=self.settings.changes_maxlen,
                max_depth=self.settings.max_chain_depth,
                tombstone_key=self.settings.tombstone_key.encode() or None,
            )
        for finding, status in zip(fresh, statuses, strict=True):
            self.tally[str(finding.reason), status] += 1
            if self.args.json:
                print(json.dumps({"kind": "link", **finding.as_json(status)}, ensure_ascii=False))
            else:
                prev, user = decode_id(finding.previous_user_id), decode_id(finding.user_id)
                print(f"  {prev} -> {user}  {finding.reason}  {status}")

    def left(self) -> int:
        """Links found that stay in the map."""
        return sum(
            n for (_, status), n in self.tally.items() if status in ("found", "already_held")
        )


def audit(settings: Settings, args: argparse.Namespace) -> int:
    check_tenant(settings, args.tenant)
    client = connect(settings)
    run = _Run(settings, client, args)
    with redis_errors(settings), capture_interrupt() as stop:
        progress = Progress("audit", int(client.hlen(run.alias_key)))
        if args.apply:
            sync(client, run.alias_key, settings.max_chain_depth)
        elif not accounted(client, run.alias_key):
            print(
                "warning: the map's heights and sizes do not account for every link (written "
                "by another program?): the depth and size rules use them as stored; --apply "
                "or a worker's start measures them first",
                file=sys.stderr,
            )
        rules = LinkRules(settings.placeholders)
        tombstone_key = settings.tombstone_key.encode() or None
        for scanned, findings in _map_pages(run, rules.is_placeholder, tombstone_key):
            run.report(findings)
            progress.advance(scanned, f"{len(run.found):,} found")
            if stop.is_set():
                break
        else:
            _components(run, stop.is_set)
        progress.finish(f"{len(run.found):,} found")
    print(_summary(run), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"kind": "summary", **_counts(run)}))
    if stop.is_set():
        print("interrupted: what was held stays so; run again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FOUND if run.left() else 0


def _map_pages(
    run: _Run, is_placeholder: Any, tombstone_key: bytes | None
) -> Iterator[tuple[int, list[Finding]]]:
    try:
        yield from map_findings(run.client, run.alias_key, is_placeholder, tombstone_key)
    except TombstoneKeyMissingError:
        raise ConfigError(
            f"tenant {run.args.tenant!r} has tombstones (erased ids): set "
            f"{env_name('tombstone_key')} to the key `lehnz-stitch forget` used to check them"
        ) from None


def _components(run: _Run, stopped: Any) -> None:
    for findings in component_findings(
        run.client,
        run.alias_key,
        max_depth=run.settings.max_chain_depth,
        default_cap=run.settings.max_component_size,
        approved_by=CONSUMER,
        skip=run.found,
    ):
        for first in range(0, len(findings), PAGE):
            run.report(findings[first : first + PAGE])
            if stopped():
                return


def _counts(run: _Run) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    for (reason, status), n in run.tally.items():
        by_reason[reason] += n
        by_status[status] += n
    return {
        "tenant": run.args.tenant,
        "applied": run.args.apply,
        "op_id": run.op_id if run.args.apply else None,
        "found": sum(by_reason.values()),
        "by_reason": dict(sorted(by_reason.items())),
        "by_status": dict(sorted(by_status.items())),
    }


def _summary(run: _Run) -> str:
    counts = _counts(run)
    verb = "held" if run.args.apply else "found (nothing changed; --apply holds them)"
    head = f"tenant {run.args.tenant!r}: {counts['found']:,} links break the current rules"
    if not run.tally:
        return head
    rows = [(reason, status, n) for (reason, status), n in sorted(run.tally.items())]
    return f"{head}; {verb}\n" + table(("reason", "status", "links"), rows)
