"""Why an entry was dead-lettered: a stable ``error_code`` and its one human message."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["MESSAGES", "DeadLetter"]


class DeadLetter(StrEnum):
    MISSING_TENANT = "missing_tenant"
    INVALID_TENANT = "invalid_tenant"
    RESERVED_TENANT = "reserved_tenant"
    WRONG_SHARD = "wrong_shard"
    MISSING_EVENT = "missing_event"
    EVENT_TOO_LARGE = "event_too_large"
    EVENT_TOO_DEEP = "event_too_deep"
    ENTRY_TOO_LARGE = "entry_too_large"
    TOO_MANY_FIELDS = "too_many_fields"
    ID_TOO_LONG = "id_too_long"
    EVENT_NOT_UTF8 = "event_not_utf8"
    EVENT_NOT_JSON = "event_not_json"
    EVENT_NOT_OBJECT = "event_not_object"
    MISSING_USER_ID = "missing_user_id"
    INVALID_USER_ID = "invalid_user_id"
    MISSING_EVENT_FAMILY = "missing_event_family"
    INVALID_EVENT_FAMILY = "invalid_event_family"
    MISSING_EVENT_NAME = "missing_event_name"
    INVALID_EVENT_NAME = "invalid_event_name"
    IDENTIFY_NOT_SYSTEM = "identify_not_system"
    MISSING_PREVIOUS_USER_ID = "missing_previous_user_id"
    INVALID_PREVIOUS_USER_ID = "invalid_previous_user_id"
    MAX_DELIVERIES_EXCEEDED = "max_deliveries_exceeded"
    COMMIT_FAILED = "commit_failed"
    INVALID_EVENT = "invalid_event"


MESSAGES: dict[DeadLetter, str] = {
    DeadLetter.MISSING_TENANT: "entry has no 'tenant' field",
    DeadLetter.INVALID_TENANT: "tenant must match [A-Za-z0-9_.-]{{1,64}}",
    DeadLetter.RESERVED_TENANT: "tenant '{tenant}' is reserved: its alias key is the change feed",
    DeadLetter.WRONG_SHARD: (
        "tenant '{tenant}' belongs to shard {shard}: write its events to {stream}"
    ),
    DeadLetter.MISSING_EVENT: "entry has no 'event' field",
    DeadLetter.EVENT_TOO_LARGE: "event is {size} bytes, limit {limit}",
    DeadLetter.EVENT_TOO_DEEP: "event nests {depth} levels, limit {limit}",
    DeadLetter.ENTRY_TOO_LARGE: "entry is {size} bytes, limit {limit}",
    DeadLetter.TOO_MANY_FIELDS: "entry has {fields} fields, limit {limit}",
    DeadLetter.ID_TOO_LONG: "'{field}' is {size} bytes, limit {limit}",
    DeadLetter.EVENT_NOT_UTF8: "event is not UTF-8 ({reason} at {start})",
    DeadLetter.EVENT_NOT_JSON: "event is not JSON ({error})",
    DeadLetter.EVENT_NOT_OBJECT: "event is a JSON {kind}",
    DeadLetter.MISSING_USER_ID: "'user_id' is missing",
    DeadLetter.INVALID_USER_ID: "'user_id' {problem}",
    DeadLetter.MISSING_EVENT_FAMILY: "'event_family' is missing",
    DeadLetter.INVALID_EVENT_FAMILY: "'event_family' {problem}",
    DeadLetter.MISSING_EVENT_NAME: "'event_name' is missing",
    DeadLetter.INVALID_EVENT_NAME: "'event_name' {problem}",
    DeadLetter.IDENTIFY_NOT_SYSTEM: "identify requires event_family 'system'",
    DeadLetter.MISSING_PREVIOUS_USER_ID: "'previous_user_id' is missing",
    DeadLetter.INVALID_PREVIOUS_USER_ID: "'previous_user_id' {problem}",
    DeadLetter.MAX_DELIVERIES_EXCEEDED: "delivered {delivered} times, limit {limit}",
    DeadLetter.COMMIT_FAILED: "redis refused the commit: {error}",
    DeadLetter.INVALID_EVENT: "event failed validation for an unknown reason",
}
"""``error`` is ``"<code>: <message>"``, the message filled with the entry's particulars."""
