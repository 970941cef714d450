"""The tenants a parser has met: each checked once (name, reserved, shard), then cached."""

from __future__ import annotations

import re
from typing import Any

from .deadletters import DeadLetter
from .placement import Placement

__all__ = ["MAX_KNOWN", "TENANT_RE", "Tenants"]

TENANT_RE = re.compile(rb"[A-Za-z0-9_.-]{1,64}\Z")
"""The tenant becomes part of a key name, so it is held to a safe alphabet."""
MAX_KNOWN = 100_000
"""Past this many tenants, new ones are checked on every entry (memory stays bounded)."""


class Tenants:
    """``known`` maps a raw tenant to its name once it passed every check; the parser reads
    it directly on its fast path."""

    __slots__ = ("_placement", "_reserved", "known")

    def __init__(self, reserved: str | None = None, placement: Placement | None = None) -> None:
        self.known: dict[bytes, str] = {}
        self._reserved = reserved.encode() if reserved is not None else None
        """The tenant whose alias key is the change feed (see Settings.reserved_tenant)."""
        self._placement = placement
        """With STITCH_SHARDS > 1: only this shard's tenants are accepted."""

    def learn(self, raw: bytes) -> str | tuple[DeadLetter, dict[str, Any]]:
        """The tenant's name, or why its entry is dead-lettered (a code, its particulars)."""
        if raw == self._reserved:
            return DeadLetter.RESERVED_TENANT, {"tenant": raw.decode()}
        if not TENANT_RE.match(raw):
            return DeadLetter.INVALID_TENANT, {}
        tenant = raw.decode("ascii")
        if self._placement is not None:
            misplaced = self._placement.misplaced(tenant)
            if misplaced is not None:  # its alias map is on another shard: never split it
                return DeadLetter.WRONG_SHARD, misplaced
        if len(self.known) < MAX_KNOWN:
            self.known[raw] = tenant
        return tenant

    def forget(self) -> None:
        """The override table changed: every tenant's shard is checked again. Cleared in
        place: the parser holds this very dict."""
        self.known.clear()
