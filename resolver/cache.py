"""Bounded, path-compressed alias cache shared by the worker and downstream readers.

Two generations keep memory flat without per-hit bookkeeping: lookups hit the young
generation first and promote from the old one; when the young generation reaches half
the cap it becomes the old one and the previous old one is dropped whole. The total
never exceeds ``max_entries`` and every operation is O(1).

An entry ``id -> target`` states a fact learned from Redis: ``target`` lies on ``id``'s
chain (path compression stores the farthest known node). ``id -> id`` means "``id`` had
no outgoing link when last checked"; callers must verify such roots before trusting them.
"""

from __future__ import annotations

__all__ = ["AliasCache"]

TenantMap = dict[str, str]


class AliasCache:
    __slots__ = ("_half", "_old", "_young", "_young_size", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be at least 2")
        self.max_entries = max_entries
        self._half = max_entries // 2
        self._young: dict[str, TenantMap] = {}
        self._old: dict[str, TenantMap] = {}
        self._young_size = 0

    def get(self, tenant: str, uid: str) -> str | None:
        young = self._young.get(tenant)
        if young is not None:
            target = young.get(uid)
            if target is not None:
                return target
        old = self._old.get(tenant)
        if old is not None:
            target = old.pop(uid, None)
            if target is not None:
                self._insert(tenant, uid, target)
                return target
        return None

    def put(self, tenant: str, uid: str, target: str) -> None:
        young = self._young.get(tenant)
        if young is not None and uid in young:
            young[uid] = target
            return
        old = self._old.get(tenant)
        if old is not None:
            old.pop(uid, None)
        self._insert(tenant, uid, target)

    def _insert(self, tenant: str, uid: str, target: str) -> None:
        if self._young_size >= self._half:
            self._old = self._young
            self._young = {}
            self._young_size = 0
        young = self._young.get(tenant)
        if young is None:
            young = self._young[tenant] = {}
        young[uid] = target
        self._young_size += 1

    def forget_tenant(self, tenant: str) -> None:
        """Drop everything known about one tenant (after a link removal, say)."""
        removed = self._young.pop(tenant, None)
        if removed:
            self._young_size -= len(removed)
        self._old.pop(tenant, None)

    def clear(self) -> None:
        self._young = {}
        self._old = {}
        self._young_size = 0

    def __len__(self) -> int:
        return self._young_size + sum(len(m) for m in self._old.values())
