"""A batch the commit script refuses is committed in halves, down to the entry at fault.

The script writes nothing when it refuses a batch (commit.lua rules out every error a write
could raise before its first write), so halves can be planned and committed again as if the
batch had never been sent. Bisecting finds one bad entry in about 2 * log2(batch) commits; it
is dead-lettered as ``commit_failed`` with Redis's error text and its neighbours go through.

Errors that say something about Redis rather than about the batch (NOSCRIPT, NOGROUP, BUSY,
LOADING, OOM, READONLY, a key of the wrong type, ...) are not split: every piece would fail
the same way, and dead-lettering a whole stream because Redis is unwell would lose it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from .deadletters import DeadLetter
from .parser import Entry
from .planner import Plan
from .server_state import SERVER_STATE_CODES, error_code

if TYPE_CHECKING:
    from .committer import Committed

__all__ = ["Splitter", "entries_at_fault"]

SERVER_STATE_ERRORS = (
    AskError,  # MOVED too: the slot is served elsewhere now
    AuthenticationError,
    BusyLoadingError,
    ClusterError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
"""The same for the codes redis-py turns into classes of their own."""

Attempt = Callable[[list[Entry]], "tuple[Plan, Committed]"]
Finish = Callable[[list[Entry], Plan, "Committed"], None]


def entries_at_fault(exc: ResponseError) -> bool:
    """False when the error is about Redis's state (splitting would not help)."""
    if isinstance(exc, SERVER_STATE_ERRORS):
        return False
    return error_code(exc) not in SERVER_STATE_CODES


class Splitter:
    """Commits entries whole if Redis takes them, else in halves (see the module docstring)."""

    __slots__ = ("_attempt", "_finish", "_log")

    def __init__(self, attempt: Attempt, finish: Finish, log: Any) -> None:
        self._attempt = attempt
        """Plan and commit entries (stale predictions retried); raises what Redis refused."""
        self._finish = finish
        """Learn and account a committed piece."""
        self._log = log

    def commit(self, entries: list[Entry]) -> None:
        try:
            plan, result = self._attempt(entries)
        except ResponseError as exc:
            if not entries_at_fault(exc):
                raise
            self.split(entries, exc)
            return
        self._finish(entries, plan, result)

    def split(self, entries: list[Entry], error: ResponseError) -> None:
        """``entries`` were refused with ``error`` and nothing was written: commit them in
        halves, in stream order, so links still apply before the events after them."""
        if len(entries) == 1:
            self._dead_letter(entries[0], error)
            return
        middle = len(entries) // 2
        self.commit(entries[:middle])
        self.commit(entries[middle:])

    def _dead_letter(self, entry: Entry, error: ResponseError) -> None:
        # without its payload: the payload may be what Redis refused
        entry.reject(DeadLetter.COMMIT_FAILED, keep_payload=False, error=error)
        self._log.error(
            "commit refused, entry dead-lettered", entry_id=entry.id.decode(), error=str(error)
        )
        plan, result = self._attempt([entry])  # refused again: not this entry's fault, raise
        self._finish([entry], plan, result)
