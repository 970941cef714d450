"""Run a :class:`~worker.batch.Plan` through the commit script and read its verdict."""

from __future__ import annotations

from typing import Any, NamedTuple

import redis

from resolver.links import LinkOutcome

from .batch import Plan
from .config import Settings
from .scripts import COMMIT_LUA, Script

__all__ = ["Committed", "Committer", "Stale"]


class Committed(NamedTuple):
    emitted: int
    dead_lettered: int
    duplicates: list[int]
    """0-based indexes (in plan order) of entries that were already acked: not re-emitted."""
    outcomes: list[LinkOutcome]


class Stale(NamedTuple):
    """Assumptions the script found stale; nothing was written."""

    roots: list[tuple[int, str, str]]
    """(alias key index, id, its current target): roots that are linked now."""
    links: list[int]
    """0-based indexes of links whose predicted outcome was wrong."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Committer:
    __slots__ = ("_fixed", "_keys", "_script")

    def __init__(self, settings: Settings) -> None:
        self._script = Script(COMMIT_LUA)
        self._keys = [settings.input_stream, settings.output_stream, settings.dead_stream]
        self._fixed = [
            settings.group,
            settings.output_maxlen,
            settings.dead_maxlen,
            settings.max_chain_depth,
        ]

    def commit(self, client: redis.Redis, plan: Plan) -> Committed | Stale:
        reply = self._script(
            client,
            [*self._keys, *plan.alias_keys],
            [
                *self._fixed,
                plan.n_verify,
                plan.n_links,
                plan.n_entries,
                *plan.verify,
                *plan.links,
                *plan.entries,
            ],
        )
        if reply[0] == 1:
            return Committed(
                int(reply[1]),
                int(reply[2]),
                [int(n) - 1 for n in reply[3]],
                [LinkOutcome(_text(o)) for o in reply[4]],
            )
        roots = [(int(k), _text(uid), _text(cur)) for k, uid, cur in reply[1]]
        return Stale(roots, [int(n) - 1 for n, _ in reply[2]])
