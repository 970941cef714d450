"""Operator commands: ``status`` and ``dead-letters``, run as the ``stitch-admin`` user.

``dead_letters`` (records, the exactly-once re-drive script, purge) and ``status`` (one
read-only reading) hold the Redis side; ``commands`` prints and returns exit codes;
``status_view`` and ``terminal`` format for people.
"""

from .commands import list_dead_letters, parse_before, purge, redrive, status

__all__ = ["list_dead_letters", "parse_before", "purge", "redrive", "status"]
