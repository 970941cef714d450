"""What the planner knows of each tenant's removals: the generation its cache was built under
and whether the tenant has tombstones (then its ids travel with their HMACs).

Both change only with an unlink or forget, which bumps the generation: the commit script
compares the generation each batch names with the tenant's current one, and on a mismatch
writes nothing and reports the current ones (see worker/lua/commit.lua, step 0).
"""

from __future__ import annotations

from resolver.removals import tombstone

from .config import env_name
from .errors import ConfigError

__all__ = ["NEVER_REMOVED", "Generations"]

NEVER_REMOVED = "0"
"""The generation of a tenant that never had an unlink or forget: assumed until the commit
script says otherwise, so a cold start costs nothing extra."""


class Generations:
    __slots__ = ("current", "key", "tombstoned")

    def __init__(self, tombstone_key: bytes | None) -> None:
        self.key = tombstone_key
        self.current: dict[str, str] = {}
        """Per tenant whose generation is not NEVER_REMOVED."""
        self.tombstoned: set[str] = set()

    def adopt(self, tenant: str, generation: str, has_tombstones: bool) -> None:
        if has_tombstones and self.key is None:
            raise ConfigError(
                f"tenant {tenant!r} has tombstones (erased ids): set {env_name('tombstone_key')} "
                "to the key `lehnz-stitch forget` used, so the worker can keep them out"
            )
        self.current[tenant] = generation
        if has_tombstones:
            self.tombstoned.add(tenant)
        else:
            self.tombstoned.discard(tenant)

    def mac(self, tenant: str, uid: str) -> str:
        """The id's tombstone HMAC for a tenant with tombstones, else '' (nothing to check)."""
        if tenant not in self.tombstoned or self.key is None:
            return ""
        return tombstone(self.key, uid)
