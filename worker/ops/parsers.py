"""The ``export`` and ``import`` command lines (kept here so that cli.py stays short)."""

from __future__ import annotations

import argparse
from typing import Any

from ..acl import ADMIN_USER
from .export_writers import FORMATS
from .import_rows import Format

__all__ = ["transfer_commands"]

ADMIN_URL = f"STITCH_REDIS_URL=redis://{ADMIN_USER}:PASSWORD@redis:6379/0"
EXPORT_EXAMPLE = f"""examples:
  {ADMIN_URL} lehnz-stitch export --tenant acme --format parquet -o acme.parquet
  lehnz-stitch export --tenant acme --format csv | gzip > acme.csv.gz

Columns: previous_user_id, user_id, root, source_id, applied_at (null or empty for a link
without provenance). Reads the map with HSCAN in pages of 1,000 (constant memory): every
link present when the export starts is in it; one added meanwhile may or may not be, and a
row may appear twice if the hash was resized during the scan (dedupe on previous_user_id).
The summary on stderr names the change feed's last id before the scan: follow the feed from
after it to keep the table current. Parquet needs pyarrow (pip install
'lehnz-stitch[export]'). Needs the {ADMIN_USER} ACL user; exit codes: 0 done, 2 bad
configuration or argument, 3 Redis unreachable, 130 stopped by Ctrl-C (no file written)."""
IMPORT_EXAMPLE = f"""examples:
  {ADMIN_URL} lehnz-stitch import --tenant acme links.csv --dry-run
  lehnz-stitch import --tenant acme links.csv
  lehnz-stitch import --tenant acme --format jsonl posthog-persons.jsonl

Rows: previous_user_id,user_id[,timestamp] (a header row naming the columns is optional;
JSON lines: objects with those keys); the timestamp, milliseconds or ISO 8601, becomes the
link's applied_at. Each row goes through the worker's link rules in file order (first link
wins; cycles, over-deep chains and placeholders refused, links past the size cap held in
the quarantine), 1,000 rows per Lua script, applied
whole or not at all, each applied link with its provenance (source id
import:<file sha256>:<line>) and a change-feed entry. Re-running a file changes nothing.
Rows that do not parse are reported on stderr by line. --dry-run decides every row against
the map as it is now, each seeing the earlier rows' links, and writes nothing to the map.
Needs the {ADMIN_USER} ACL user; exit codes: 0 done (bad rows included), 2 bad
configuration or argument, 3 Redis unreachable, 130 stopped by Ctrl-C between two chunks
(run it again to continue)."""


def transfer_commands(commands: Any) -> list[argparse.ArgumentParser]:
    raw = argparse.RawDescriptionHelpFormatter
    export = commands.add_parser(
        "export",
        help="write a tenant's alias map as a join table (csv, jsonl, parquet)",
        description="Write a tenant's alias map as the join table warehouses load.",
        epilog=EXPORT_EXAMPLE,
        formatter_class=raw,
    )
    export.add_argument("--tenant", required=True)
    export.add_argument("--format", choices=FORMATS, default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    load = commands.add_parser(
        "import",
        help="bulk-load links through the worker's link rules",
        description="Bulk-load links (previous_user_id,user_id[,timestamp]) into a tenant.",
        epilog=IMPORT_EXAMPLE,
        formatter_class=raw,
    )
    load.add_argument("--tenant", required=True)
    load.add_argument(
        "--format",
        choices=[str(f) for f in Format],
        help="default: jsonl for .jsonl/.ndjson/.json files, else csv",
    )
    load.add_argument("--dry-run", action="store_true", help="decide every row, write nothing")
    load.add_argument("file", metavar="FILE")
    leaves = [export, load]
    for sub in leaves:  # the usage line shows the command's own options, not every setting
        own = " ".join(sub.format_usage().removeprefix("usage: ").split())
        sub.usage = own + " [--SETTING VALUE ...]"
    return leaves
