"""Dead letters as records: read in pages, filtered, re-driven exactly once, purged.

A scan never goes past the dead stream's last entry when it started, so entries that are
dead-lettered again while a re-drive runs (the fix did not help) are not re-driven again by
the same run, and a scan of a stream the worker keeps writing to ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from resolver.scripts import CHECKS_LUA, load_lua

from ..config import Settings
from ..stream import command

__all__ = [
    "MAX_VALUES",
    "PAGE",
    "DeadLetterRecord",
    "DeadLetters",
    "Outcome",
    "Payload",
    "error_code",
    "is_entry_id",
]

PAGE = 200
"""Dead letters per XRANGE and per re-drive script: one script re-drives a page atomically;
200 entries of at most 128 KiB keep each script's run well under Redis's busy threshold."""
MAX_VALUES = 7_900
"""Field values one XADD from Lua can carry (its unpack() fails past 8,000 values)."""
TRAILER = (b"error", b"error_code", b"source_id")
"""The fields the worker appends to a dead letter, always its last three pairs."""
REDRIVE_LUA = f"local MAX_VALUES = {MAX_VALUES}\n" + CHECKS_LUA + load_lua("worker", "redrive.lua")
_ENTRY_ID = re.compile(r"\d+-\d+")


def is_entry_id(text: str) -> bool:
    return _ENTRY_ID.fullmatch(text) is not None


class Payload(StrEnum):
    """Where a dead letter's original fields are."""

    CARRIED = "carried"
    """In the dead letter itself, before the three error fields."""
    SOURCE = "source"
    """Not carried (too_many_fields, entry_too_large, commit_failed); read from the source
    entry, still in the input stream."""
    TRIMMED = "trimmed"
    """Not carried, and the source entry is no longer in the input stream."""
    NONE = "none"
    """Not a dead letter: its fields do not end with error, error_code, source_id."""


class Outcome(StrEnum):
    """What re-driving one dead letter did (or, in a dry run, would do); see redrive.lua."""

    REDRIVEN = "redriven"
    GONE = "gone"
    SOURCE_TRIMMED = "source_trimmed"
    TOO_MANY_FIELDS = "too_many_fields"
    NOT_A_DEAD_LETTER = "not_a_dead_letter"


class DeadLetterRecord(NamedTuple):
    id: str
    error_code: str
    """Empty for an entry that is not a dead letter."""
    error: str
    source_id: str
    tenant: str | None
    """From the original fields; None when they are gone or hold no tenant."""
    payload: Payload
    fields: list[bytes]
    """The original fields, flat (names and values), as bytes: never decoded on the way back."""

    def expected(self) -> Outcome:
        """What the re-drive script will do with it, if nobody touches it first."""
        if self.payload is Payload.NONE:
            return Outcome.NOT_A_DEAD_LETTER
        if self.payload is Payload.TRIMMED:
            return Outcome.SOURCE_TRIMMED
        if len(self.fields) > MAX_VALUES:
            return Outcome.TOO_MANY_FIELDS
        return Outcome.REDRIVEN

    def as_dict(self) -> dict[str, Any]:
        """The ``dead-letters list --json`` line (invalid UTF-8 shown as U+FFFD)."""
        return {
            "id": self.id,
            "error_code": self.error_code,
            "error": self.error,
            "source_id": self.source_id,
            "tenant": self.tenant,
            "payload": str(self.payload),
            "fields": [_text(value) for value in self.fields],
        }


class DeadLetters:
    """The dead-letter stream of ``settings``, and the input stream its entries came from."""

    __slots__ = ("_client", "_dead", "_input", "_redrive")

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        # a private client on the same pool: flat field lists (duplicates and order kept)
        self._client = redis.Redis(connection_pool=client.connection_pool)
        for name in ("XRANGE", "XREVRANGE"):
            self._client.set_response_callback(name, lambda response, **_: response)
        self._input = settings.input_stream
        self._dead = settings.dead_stream
        self._redrive = self._client.register_script(REDRIVE_LUA)

    def last_id(self) -> str | None:
        """The newest dead letter's id, None when there is none."""
        newest = command(self._client, "XREVRANGE", self._dead, "+", "-", "COUNT", 1)
        return newest[0][0].decode() if newest else None

    def pages(
        self,
        *,
        code: str | None = None,
        tenant: str | None = None,
        before: str | None = None,
        page: int = PAGE,
    ) -> Iterator[tuple[int, list[DeadLetterRecord]]]:
        """(entries scanned, the matching records) per page, oldest first, up to the last
        dead letter now, or up to (excluding) the id ``before``."""
        end = "(" + before if before is not None else self.last_id()
        if end is None:
            return
        for reply in self.scan("-", end, page):
            records = self._records(reply)
            yield len(reply), [r for r in records if _matches(r, code, tenant)]

    def scan(self, start: str, end: str, page: int = PAGE) -> Iterator[list[Any]]:
        """Raw XRANGE pages from ``start`` to ``end`` (``(`` marks an exclusive bound)."""
        while True:
            reply = command(self._client, "XRANGE", self._dead, start, end, "COUNT", page)
            if reply:
                yield reply
            if len(reply) < page:
                return
            start = "(" + reply[-1][0].decode()

    def _records(self, reply: list[Any]) -> list[DeadLetterRecord]:
        parsed = [_parse(eid.decode(), fields) for eid, fields in reply]
        missing = [r for r in parsed if r.payload is Payload.SOURCE and is_entry_id(r.source_id)]
        sources: dict[str, Any] = {}
        if missing:
            pipe = self._client.pipeline(transaction=False)
            for record in missing:
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "XRANGE", self._input, record.source_id, record.source_id
                )
            sources = dict(zip((r.id for r in missing), pipe.execute(), strict=True))
        return [_with_source(r, sources.get(r.id)) for r in parsed]

    def redrive(self, ids: list[str]) -> list[tuple[Outcome, str | None]]:
        """Re-drive these dead letters atomically (one script), each at most once ever."""
        reply = self._redrive(keys=[self._input, self._dead], args=ids)
        return [(Outcome(o.decode()), new.decode() if new else None) for o, new in reply]

    def trim_before(self, before: str) -> int:
        """Delete every dead letter older than the id ``before`` (XTRIM MINID, exact)."""
        return int(command(self._client, "XTRIM", self._dead, "MINID", before))

    def delete(self, ids: list[str]) -> int:
        return int(command(self._client, "XDEL", self._dead, *ids)) if ids else 0


def error_code(flat: list[bytes]) -> str | None:
    """The ``error_code`` of a dead letter's flat fields; None if it is not a dead letter."""
    if len(flat) < 6 or tuple(flat[-6::2]) != TRAILER:
        return None
    return _text(flat[-3])


def _parse(eid: str, flat: list[bytes]) -> DeadLetterRecord:
    if error_code(flat) is None:
        return DeadLetterRecord(eid, "", "", "", _tenant(flat), Payload.NONE, flat)
    error, code, source = (_text(v) for v in flat[-5::2])
    payload = flat[:-6]
    kind = Payload.CARRIED if payload else Payload.SOURCE
    return DeadLetterRecord(eid, code, error, source, _tenant(payload), kind, payload)


def _with_source(record: DeadLetterRecord, found: list[Any] | None) -> DeadLetterRecord:
    if record.payload is not Payload.SOURCE:
        return record
    if not found:
        return record._replace(payload=Payload.TRIMMED)
    fields: list[bytes] = found[0][1]
    return record._replace(fields=fields, tenant=_tenant(fields))


def _tenant(flat: list[bytes]) -> str | None:
    for k in range(0, len(flat) - 1, 2):
        if flat[k] == b"tenant":
            return _text(flat[k + 1])
    return None


def _matches(record: DeadLetterRecord, code: str | None, tenant: str | None) -> bool:
    return (code is None or record.error_code == code) and (
        tenant is None or record.tenant == tenant
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
