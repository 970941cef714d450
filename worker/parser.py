"""The input wire format: classify one stream entry as an event, an identify, or invalid.

Valid events take a fast path (msgspec decodes only the four fields we read, skipping
properties without building objects); anything unusual is re-examined on a slow path
that names exactly what is wrong, with a stable machine-readable code.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import msgspec

from .deadletters import MESSAGES, DeadLetter

__all__ = ["Entry", "Kind", "Parser"]

TENANT_RE = re.compile(rb"[A-Za-z0-9_.-]{1,64}\Z")
"""The tenant becomes part of a key name, so it is held to a safe alphabet."""

F_TENANT = b"tenant"
F_EVENT = b"event"


class Kind(IntEnum):
    EVENT = 0
    IDENTIFY = 1
    INVALID = 2
    GONE = 3
    """Deleted or trimmed while pending: Redis returned the id without a payload."""


class _Fields(msgspec.Struct):
    user_id: str | None = None
    event_family: str | None = None
    event_name: str | None = None
    previous_user_id: str | None = None


class Entry:
    """One input entry and what the parser made of it."""

    __slots__ = (
        "error",
        "error_code",
        "fields",
        "id",
        "kind",
        "previous_user_id",
        "tenant",
        "user_id",
    )

    def __init__(self, entry_id: bytes, fields: list[bytes] | None) -> None:
        self.id = entry_id
        self.fields = fields
        self.kind = Kind.INVALID
        self.tenant = ""
        self.user_id = ""
        self.previous_user_id = ""
        self.error_code = DeadLetter.INVALID_EVENT
        self.error = ""

    def reject(self, code: DeadLetter, **particulars: object) -> Entry:
        self.kind = Kind.INVALID
        self.error_code = code
        self.error = f"{code}: {MESSAGES[code].format(**particulars)}"
        return self


class Parser:
    """Turns raw XREADGROUP entries into :class:`Entry` objects."""

    __slots__ = ("_decode", "_tenants", "max_event_bytes")

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._decode = msgspec.json.Decoder(_Fields).decode
        self._tenants: dict[bytes, str] = {}

    def parse(self, entry_id: bytes, fields: list[bytes] | None) -> Entry:
        entry = Entry(entry_id, fields)
        if fields is None:
            entry.kind = Kind.GONE
            return entry
        raw_tenant: bytes | None
        raw: bytes | None
        if len(fields) >= 4 and fields[0] == F_TENANT and fields[2] == F_EVENT:
            raw_tenant, raw = fields[1], fields[3]  # the ingestion API's order: no dict needed
        else:
            it = iter(fields)
            pairs = dict(zip(it, it, strict=False))
            raw_tenant, raw = pairs.get(F_TENANT), pairs.get(F_EVENT)
        tenant = self._tenant(raw_tenant)
        if tenant is None:
            if raw_tenant is None:
                return entry.reject(DeadLetter.MISSING_TENANT)
            return entry.reject(DeadLetter.INVALID_TENANT)
        entry.tenant = tenant
        if raw is None:
            return entry.reject(DeadLetter.MISSING_EVENT)
        if len(raw) > self.max_event_bytes:
            return entry.reject(
                DeadLetter.EVENT_TOO_LARGE, size=len(raw), limit=self.max_event_bytes
            )
        try:
            event = self._decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return _classify_slowly(entry, raw)
        user_id, family, name = event.user_id, event.event_family, event.event_name
        if not (user_id and family and name):
            return _classify_slowly(entry, raw)
        entry.user_id = user_id
        if name != "identify":
            entry.kind = Kind.EVENT
            return entry
        if family != "system":
            return entry.reject(DeadLetter.IDENTIFY_NOT_SYSTEM)
        if not event.previous_user_id:
            return _classify_slowly(entry, raw)
        entry.previous_user_id = event.previous_user_id
        entry.kind = Kind.IDENTIFY
        return entry

    def _tenant(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        known = self._tenants.get(raw)
        if known is not None:
            return known
        if not TENANT_RE.match(raw):
            return None
        if len(self._tenants) < 100_000:
            self._tenants[raw] = raw.decode("ascii")
        return raw.decode("ascii")


def _classify_slowly(entry: Entry, raw: bytes) -> Entry:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return entry.reject(DeadLetter.EVENT_NOT_UTF8, reason=exc.reason, start=exc.start)
    try:
        event: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return entry.reject(DeadLetter.EVENT_NOT_JSON, error=exc)
    if not isinstance(event, dict):
        return entry.reject(DeadLetter.EVENT_NOT_OBJECT, kind=type(event).__name__)
    for field in ("user_id", "event_family", "event_name"):
        problem = _string_problem(event, field)
        if problem:
            return entry.reject(problem[0], problem=problem[1])
    if event["event_name"] == "identify":
        if event["event_family"] != "system":
            return entry.reject(DeadLetter.IDENTIFY_NOT_SYSTEM)
        problem = _string_problem(event, "previous_user_id")
        if problem:
            return entry.reject(problem[0], problem=problem[1])
    return entry.reject(DeadLetter.INVALID_EVENT)


def _string_problem(event: dict[str, Any], field: str) -> tuple[DeadLetter, str] | None:
    """The code and the ``problem`` particular of a field that is not a non-empty string."""
    if field not in event or event[field] is None:
        return DeadLetter(f"missing_{field}"), ""
    value = event[field]
    if not isinstance(value, str):
        return DeadLetter(f"invalid_{field}"), f"must be a string, got {type(value).__name__}"
    if not value:
        return DeadLetter(f"invalid_{field}"), "is empty"
    return None
