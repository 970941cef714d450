"""Operator commands: ``status``, ``dead-letters``, ``export`` and ``import``, run as the
``stitch-admin`` user.

``dead_letters`` (records, the exactly-once re-drive script, purge) and ``status`` (one
read-only reading) hold the Redis side; ``commands`` prints and returns exit codes;
``status_view`` and ``terminal`` format for people. ``transfer`` runs ``export`` (pages from
``exporting``, written by ``export_writers``) and ``import`` (rows from ``import_rows``,
applied by ``importing`` through ``worker/lua/import.lua``); ``parsers`` holds their command
lines.
"""

from .commands import list_dead_letters, parse_before, purge, redrive, status
from .parsers import transfer_commands
from .transfer import export_map, import_links

__all__ = [
    "export_map",
    "import_links",
    "list_dead_letters",
    "parse_before",
    "purge",
    "redrive",
    "status",
    "transfer_commands",
]
