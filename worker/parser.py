"""The input wire format: classify one stream entry as an event, an identify, or invalid.

Valid events take a fast path (msgspec decodes only the four fields we read, skipping
properties without building objects); anything unusual is re-examined on a slow path
that names exactly what is wrong, with a stable machine-readable code.
"""

from __future__ import annotations

import re
from enum import IntEnum
from itertools import accumulate
from typing import Any

import msgspec

from .config import ENTRY_OVERHEAD, Settings
from .deadletters import MESSAGES, DeadLetter
from .placement import Placement
from .tenants import TENANT_RE, Tenants

__all__ = ["TENANT_RE", "Entry", "Kind", "Parser"]

F_TENANT = b"tenant"
F_EVENT = b"event"
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
BRACKETS = bytes.maketrans(b"[{]}", b"(())")
NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
STEP = [0] * 256
STEP[ord("(")], STEP[ord(")")] = 1, -1


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
    previous_user_id: Any = None
    """Untyped here: only an identify needs it to be a string (checked there); any other
    event may carry whatever it likes under that name."""


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

    def reject(
        self, code: DeadLetter, *, keep_payload: bool = True, **particulars: object
    ) -> Entry:
        """Mark invalid; without ``keep_payload`` the dead letter carries none of the fields
        (the payload itself is the problem: too large, too many fields, or it failed a commit).
        """
        self.kind = Kind.INVALID
        self.error_code = code
        self.error = f"{code}: {MESSAGES[code].format(**particulars)}"
        if not keep_payload:
            self.fields = []
        return self


class Parser:
    """Turns raw XREADGROUP entries into :class:`Entry` objects.

    Every size-dependent thing is bounded here, before an entry reaches Redis again: field
    count (Lua's unpack limit), entry and event bytes, JSON nesting (msgspec recurses once
    per level and raises RecursionError past CPython's limit), and id bytes (an id becomes
    an alias hash field).
    """

    __slots__ = (
        "_decode",
        "_deep_bytes",
        "_id_chars",
        "_max_values",
        "_tenants",
        "max_entry_bytes",
        "max_event_bytes",
        "max_id_bytes",
        "max_json_depth",
        "tenants",
    )

    def __init__(
        self,
        max_event_bytes: int,
        *,
        max_entry_bytes: int | None = None,
        max_fields: int = 64,
        max_id_bytes: int = 256,
        max_json_depth: int = 256,
        reserved_tenant: str | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_entry_bytes = max_entry_bytes or max_event_bytes + 64 * 1024
        if self.max_entry_bytes < max_event_bytes + ENTRY_OVERHEAD:
            raise ValueError("max_entry_bytes must leave ENTRY_OVERHEAD beside max_event_bytes")
        self._max_values = 2 * max_fields
        self.max_id_bytes = max_id_bytes
        self._id_chars = max_id_bytes // 4
        """A str this short fits in max_id_bytes whatever it holds: no need to encode it."""
        self.max_json_depth = max_json_depth
        self._deep_bytes = 2 * max_json_depth + 1
        """Valid JSON nesting deeper than the limit needs at least this many bytes."""
        self._decode = msgspec.json.Decoder(_Fields).decode
        self.tenants = Tenants(reserved_tenant, placement)
        self._tenants = self.tenants.known

    @classmethod
    def from_settings(cls, settings: Settings, placement: Placement | None = None) -> Parser:
        return cls(
            settings.max_event_bytes,
            max_entry_bytes=settings.max_entry_bytes,
            max_fields=settings.max_fields,
            max_id_bytes=settings.max_id_bytes,
            max_json_depth=settings.max_json_depth,
            reserved_tenant=settings.reserved_tenant,
            placement=placement,
        )

    def parse(self, entry_id: bytes, fields: list[bytes] | None) -> Entry:
        entry = Entry(entry_id, fields)
        if fields is None:
            entry.kind = Kind.GONE
            return entry
        n = len(fields)
        if n > self._max_values:
            return entry.reject(
                DeadLetter.TOO_MANY_FIELDS,
                keep_payload=False,
                fields=n // 2,
                limit=self._max_values // 2,
            )
        raw_tenant: bytes | None
        raw: bytes | None
        if n == 4 and fields[0] == F_TENANT and fields[2] == F_EVENT:
            # the ingestion API's shape: no dict, and no size to add up, as a known tenant
            # (64 bytes at most) and an event within max_event_bytes always fit the entry
            raw_tenant, raw = fields[1], fields[3]
        else:
            size = sum(map(len, fields))
            if size > self.max_entry_bytes:
                return _too_large(entry, size, self.max_entry_bytes)
            if n >= 4 and fields[0] == F_TENANT and fields[2] == F_EVENT:
                raw_tenant, raw = fields[1], fields[3]
            else:
                it = iter(fields)
                pairs = dict(zip(it, it, strict=False))
                raw_tenant, raw = pairs.get(F_TENANT), pairs.get(F_EVENT)
        tenant = self._tenants.get(raw_tenant) if raw_tenant is not None else None
        if tenant is None:
            if raw_tenant is None:
                return entry.reject(DeadLetter.MISSING_TENANT)
            if n == 4 and sum(map(len, fields)) > self.max_entry_bytes:
                return _too_large(entry, sum(map(len, fields)), self.max_entry_bytes)
            learnt = self.tenants.learn(raw_tenant)
            if not isinstance(learnt, str):
                return entry.reject(learnt[0], **learnt[1])
            tenant = learnt
        entry.tenant = tenant
        if raw is None:
            return entry.reject(DeadLetter.MISSING_EVENT)
        if len(raw) > self.max_event_bytes:
            if n == 4 and sum(map(len, fields)) > self.max_entry_bytes:
                return _too_large(entry, sum(map(len, fields)), self.max_entry_bytes)
            return entry.reject(
                DeadLetter.EVENT_TOO_LARGE, size=len(raw), limit=self.max_event_bytes
            )
        if not raw.isascii() and not _utf8(raw):  # msgspec skips the fields it does not read
            return _classify_slowly(entry, raw, self.max_json_depth)
        try:
            event = self._decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            return _classify_slowly(entry, raw, self.max_json_depth)
        except RecursionError:  # msgspec recursed past CPython's limit (about 1,000 levels)
            return _too_deep(entry, raw, self.max_json_depth)
        if len(raw) > self._deep_bytes and self._too_deep(raw):
            return _too_deep(entry, raw, self.max_json_depth)
        user_id, family, name = event.user_id, event.event_family, event.event_name
        if not (user_id and family and name):
            return _classify_slowly(entry, raw, self.max_json_depth)
        if len(user_id) > self._id_chars and self._too_long(user_id):
            return self._reject_id(entry, "user_id", user_id)
        entry.user_id = user_id
        if name != "identify":
            entry.kind = Kind.EVENT
            return entry
        if family != "system":
            return entry.reject(DeadLetter.IDENTIFY_NOT_SYSTEM)
        prev = event.previous_user_id
        if not prev or not isinstance(prev, str):
            return _classify_slowly(entry, raw, self.max_json_depth)
        if len(prev) > self._id_chars and self._too_long(prev):
            return self._reject_id(entry, "previous_user_id", prev)
        entry.previous_user_id = prev
        entry.kind = Kind.IDENTIFY
        return entry

    def _too_deep(self, raw: bytes) -> bool:
        """Two C scans (find is memchr; count is not: skip it when there is no '[')."""
        limit = self.max_json_depth
        opened = raw.count(b"{")
        if raw.find(b"[") >= 0:
            opened += raw.count(b"[")
        return opened > limit and json_depth(raw) > limit

    def _too_long(self, uid: str) -> bool:
        return len(uid.encode()) > self.max_id_bytes

    def _reject_id(self, entry: Entry, field: str, uid: str) -> Entry:
        size = len(uid.encode())
        return entry.reject(DeadLetter.ID_TOO_LONG, field=field, size=size, limit=self.max_id_bytes)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def json_depth(raw: bytes) -> int:
    """How deep brackets nest in ``raw``, outside JSON strings, without recursing.

    Only called when ``raw`` holds more brackets than the depth limit (an array of many
    objects, or an attack): a regex drops the strings, a translate keeps the brackets, and
    a running sum finds the deepest point, all in C loops.
    """
    brackets = JSON_STRING.sub(b"", raw).translate(None, NOT_BRACKETS).translate(BRACKETS)
    return max(accumulate(STEP[b] for b in brackets), default=0)


def _too_large(entry: Entry, size: int, limit: int) -> Entry:
    return entry.reject(DeadLetter.ENTRY_TOO_LARGE, keep_payload=False, size=size, limit=limit)


def _too_deep(entry: Entry, raw: bytes, limit: int) -> Entry:
    return entry.reject(DeadLetter.EVENT_TOO_DEEP, depth=json_depth(raw), limit=limit)


def _classify_slowly(entry: Entry, raw: bytes, max_depth: int) -> Entry:
    """Why the fast path refused ``raw``: the first problem found, as a stable code."""
    if raw.count(b"{") + raw.count(b"[") > max_depth and json_depth(raw) > max_depth:
        return _too_deep(entry, raw, max_depth)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return entry.reject(DeadLetter.EVENT_NOT_UTF8, reason=exc.reason, start=exc.start)
    try:
        event: Any = msgspec.json.decode(raw)
    except RecursionError:  # only when called deep in a stack: the depth limit is below it
        return _too_deep(entry, raw, max_depth)
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
