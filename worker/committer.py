"""Run a :class:`~worker.planner.Plan` through the commit script and read its verdict."""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.exceptions import NoScriptError, ResponseError

from resolver.links import LinkOutcome

from .config import Settings
from .planner import Plan
from .scripts import COMMIT_LUA, Script
from .wire import RoundTrip, pack

__all__ = ["Committed", "Committer", "Stale"]


class Committed(NamedTuple):
    emitted: int
    dead_lettered: int
    duplicates: list[int]
    """0-based indexes (in plan order) of entries that were already acked: not re-emitted."""
    outcomes: list[LinkOutcome]
    """One per link of the plan, in order."""
    depths: list[int]
    """Chain depth of each id the script resolved; -1 where it met a cycle."""
    learned: list[tuple[int, str, str | None]]
    """(alias key index, id, target or None) for every link the script read."""


class Stale(NamedTuple):
    """Link predictions the script found stale (another replica linked first); nothing
    was written. Moved roots are not stale: the script follows them itself."""

    links: list[int]
    """0-based indexes of links whose predicted outcome was wrong."""
    too_deep: list[int] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    """Those of ``links`` the script refused as too deep (the planner remembers them)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Committer:
    __slots__ = ("_fixed", "_keys", "script")

    def __init__(self, settings: Settings) -> None:
        self.script = Script(COMMIT_LUA)
        self._keys = [settings.input_stream, settings.output_stream, settings.dead_stream]
        self._fixed = [
            settings.group,
            settings.output_maxlen,
            settings.dead_maxlen,
            settings.max_chain_depth,
        ]

    def command(self, plan: Plan) -> list[Any]:
        """The EVALSHA command for ``plan``, to send on its own or pipelined with a read."""
        keys = [*self._keys, *plan.alias_keys]
        return [
            "EVALSHA", self.script.sha, len(keys), *keys, *self._fixed,
            plan.n_verify, plan.n_entries, *plan.verify, *plan.entries,
        ]  # fmt: skip

    def pack(self, plan: Plan) -> Plan:
        """Pack the plan's command ahead of time (see Plan.packed)."""
        plan.packed = pack(self.command(plan))
        return plan

    def verdict(self, wire: RoundTrip, plan: Plan, reply: Any) -> Committed | Stale:
        """Interpret a reply; after a Redis restart (NOSCRIPT) load the script and run again."""
        if isinstance(reply, NoScriptError):
            wire.call("SCRIPT", "LOAD", self.script.source)
            reply = wire.request(self.command(plan))
        if isinstance(reply, ResponseError):
            raise reply
        if reply[0] == 1:
            learned = reply[6]
            return Committed(
                int(reply[1]),
                int(reply[2]),
                [int(n) - 1 for n in reply[3]],
                [LinkOutcome(_text(o)) for o in reply[4]],
                [int(d) for d in reply[5][1::2]],
                [
                    (
                        int(learned[k]),
                        _text(learned[k + 1]),
                        learned[k + 2] and _text(learned[k + 2]),
                    )
                    for k in range(0, len(learned), 3)
                ],
            )
        stale = reply[1]
        return Stale(
            [int(s[0]) - 1 for s in stale],
            [int(s[0]) - 1 for s in stale if _text(s[2]) == LinkOutcome.TOO_DEEP],
        )

    def commit(self, wire: RoundTrip, plan: Plan) -> Committed | Stale:
        return self.verdict(wire, plan, wire.request(self.command(plan)))
