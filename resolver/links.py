"""Link outcomes and the client-side half of the link rules (placeholders, self-links).

The server-side half (first link stands, no cycles, no chain deeper than the cap) lives in
``lua/link_rules.lua`` so
that the check and the write are one atomic step however many replicas race.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .placeholders import PlaceholderRule

__all__ = ["LinkOutcome", "LinkRules"]


class LinkOutcome(StrEnum):
    APPLIED = "applied"
    NOOP = "noop"
    """previous_user_id == user_id, or the same link again."""
    CONFLICT = "conflict"
    """previous_user_id already links elsewhere: the first link stands."""
    CYCLE = "cycle"
    """previous_user_id is reachable from user_id, or user_id leads into a foreign cycle."""
    TOO_DEEP = "too_deep"
    """The link would make some chain longer than the cap (``STITCH_MAX_CHAIN_DEPTH``)."""
    PLACEHOLDER = "placeholder"
    """Either side is a placeholder id such as "null" or "anonymous"."""
    BLOCKED = "blocked"
    """An operator unlinked this very link with ``--block``: it is never made again."""
    FORGOTTEN = "forgotten"
    """Either side is an erased id (``forget``): it is never linked again."""
    QUARANTINED = "quarantined"
    """The link would grow its target's component past the cap (``STITCH_MAX_COMPONENT_SIZE``
    or the tenant's own), or its root took more than ``STITCH_MAX_LINKS_PER_ROOT_PER_HOUR``
    links within the hour: held in the tenant's quarantine for an operator to decide."""


class LinkRules:
    __slots__ = ("is_placeholder",)

    def __init__(self, extra_placeholders: Iterable[str] = ()) -> None:
        self.is_placeholder = PlaceholderRule(extra_placeholders)
