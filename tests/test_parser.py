"""The input wire format: raw XREADGROUP entries to events, identifies and dead letters."""

from __future__ import annotations

import json
import string
from typing import Any, NamedTuple

import pytest

from worker.config import Settings
from worker.deadletters import MESSAGES, DeadLetter
from worker.parser import Kind, Parser

LIMIT = 200
"""max_event_bytes of the parser under test: small, so event_too_large is cheap to hit."""


def body(**event: Any) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def view(user_id: Any = "u1", **extra: Any) -> bytes:
    return body(event_family="commerce", event_name="product_view", user_id=user_id, **extra)


def identify(user_id: Any = "u1", previous_user_id: Any = "anon-1", **extra: Any) -> bytes:
    return body(
        event_family="system",
        event_name="identify",
        user_id=user_id,
        previous_user_id=previous_user_id,
        **extra,
    )


def entry(event: bytes, tenant: bytes = b"acme") -> list[bytes]:
    """Fields in the ingestion API's order: the parser's fast path."""
    return [b"tenant", tenant, b"event", event]


class Valid(NamedTuple):
    fields: list[bytes]
    kind: Kind
    user_id: str
    previous_user_id: str


VALID: dict[str, Valid] = {
    "event, fast path": Valid(entry(view()), Kind.EVENT, "u1", ""),
    "event, fast path, extra field after": Valid(
        [*entry(view()), b"domain", b"shop.example"], Kind.EVENT, "u1", ""
    ),
    "event, slow path: event before tenant": Valid(
        [b"event", view(), b"tenant", b"acme"], Kind.EVENT, "u1", ""
    ),
    "event, slow path: extra field first": Valid(
        [b"domain", b"shop.example", *entry(view())], Kind.EVENT, "u1", ""
    ),
    "event, slow path: extra field between": Valid(
        [b"tenant", b"acme", b"domain", b"tenant", b"event", view()], Kind.EVENT, "u1", ""
    ),
    "event with unread properties and unicode": Valid(
        entry(view("ü-1", properties={"sku": "SKU-1", "nested": [1, {"a": None}]})),
        Kind.EVENT,
        "ü-1",
        "",
    ),
    "event carrying a string previous_user_id is still an event": Valid(
        entry(view(previous_user_id="old")), Kind.EVENT, "u1", ""
    ),
    "identify, fast path": Valid(entry(identify()), Kind.IDENTIFY, "u1", "anon-1"),
    "identify, slow path": Valid(
        [b"event", identify(), b"x", b"y", b"tenant", b"acme"], Kind.IDENTIFY, "u1", "anon-1"
    ),
    "identify with a placeholder id is still an identify (the planner refuses it)": Valid(
        entry(identify(previous_user_id="null")), Kind.IDENTIFY, "u1", "null"
    ),
}


@pytest.mark.parametrize("case", VALID.values(), ids=list(VALID))
def test_valid_entries(case: Valid) -> None:
    """Valid entries get their kind, tenant and ids whatever their field order or extras."""
    parsed = Parser(LIMIT).parse(b"1-0", case.fields)
    assert (parsed.kind, parsed.tenant, parsed.user_id, parsed.previous_user_id) == (
        case.kind,
        "acme",
        case.user_id,
        case.previous_user_id,
    )
    assert parsed.id == b"1-0"
    assert parsed.fields is case.fields
    assert parsed.error == ""


class Invalid(NamedTuple):
    fields: list[bytes]
    code: DeadLetter
    error: str
    """The whole ``error`` field: "<code>: <message with the particulars filled>"."""


def sized(total: int) -> bytes:
    """A valid event padded to exactly ``total`` bytes."""
    bare = len(view(pad=""))
    return view(pad="x" * (total - bare))


INVALID: dict[str, Invalid] = {
    "no tenant": Invalid(
        [b"event", view()], DeadLetter.MISSING_TENANT, "missing_tenant: entry has no 'tenant' field"
    ),
    "no fields at all": Invalid(
        [], DeadLetter.MISSING_TENANT, "missing_tenant: entry has no 'tenant' field"
    ),
    **{
        f"tenant {tenant!r}": Invalid(
            entry(view(), tenant),
            DeadLetter.INVALID_TENANT,
            "invalid_tenant: tenant must match [A-Za-z0-9_.-]{1,64}",
        )
        for tenant in (b"", b"a b", b"a:b", b"t\n", b"\xc3\xa9", b"x" * 65)
    },
    "no event": Invalid(
        [b"tenant", b"acme"], DeadLetter.MISSING_EVENT, "missing_event: entry has no 'event' field"
    ),
    "dangling event name, no value": Invalid(
        [b"tenant", b"acme", b"event"],
        DeadLetter.MISSING_EVENT,
        "missing_event: entry has no 'event' field",
    ),
    "event one byte over the limit": Invalid(
        entry(sized(LIMIT + 1)),
        DeadLetter.EVENT_TOO_LARGE,
        f"event_too_large: event is {LIMIT + 1} bytes, limit {LIMIT}",
    ),
    "event not UTF-8": Invalid(
        entry(b"\xff"),
        DeadLetter.EVENT_NOT_UTF8,
        "event_not_utf8: event is not UTF-8 (invalid start byte at 0)",
    ),
    "user_id not UTF-8": Invalid(
        entry(b'{"user_id":"\xe9"}'),
        DeadLetter.EVENT_NOT_UTF8,
        "event_not_utf8: event is not UTF-8 (invalid continuation byte at 12)",
    ),
    "event truncated": Invalid(
        entry(b"{"),
        DeadLetter.EVENT_NOT_JSON,
        "event_not_json: event is not JSON (Input data was truncated)",
    ),
    "event with trailing bytes": Invalid(
        entry(b'{"a":1}x'),
        DeadLetter.EVENT_NOT_JSON,
        "event_not_json: event is not JSON (JSON is malformed: trailing characters (byte 8))",
    ),
    "event is an array": Invalid(
        entry(b"[1]"), DeadLetter.EVENT_NOT_OBJECT, "event_not_object: event is a JSON list"
    ),
    "event is a string": Invalid(
        entry(b'"s"'), DeadLetter.EVENT_NOT_OBJECT, "event_not_object: event is a JSON str"
    ),
    # The kind is Python's type name, so JSON null reads "NoneType".
    "event is null": Invalid(
        entry(b"null"), DeadLetter.EVENT_NOT_OBJECT, "event_not_object: event is a JSON NoneType"
    ),
    "no user_id": Invalid(
        entry(body(event_family="commerce", event_name="v")),
        DeadLetter.MISSING_USER_ID,
        "missing_user_id: 'user_id' is missing",
    ),
    "user_id null": Invalid(
        entry(view(None)), DeadLetter.MISSING_USER_ID, "missing_user_id: 'user_id' is missing"
    ),
    "user_id a number": Invalid(
        entry(view(42)),
        DeadLetter.INVALID_USER_ID,
        "invalid_user_id: 'user_id' must be a string, got int",
    ),
    "user_id empty": Invalid(
        entry(view("")), DeadLetter.INVALID_USER_ID, "invalid_user_id: 'user_id' is empty"
    ),
    "no event_family": Invalid(
        entry(body(event_name="v", user_id="u1")),
        DeadLetter.MISSING_EVENT_FAMILY,
        "missing_event_family: 'event_family' is missing",
    ),
    "event_family an object": Invalid(
        entry(body(event_family={}, event_name="v", user_id="u1")),
        DeadLetter.INVALID_EVENT_FAMILY,
        "invalid_event_family: 'event_family' must be a string, got dict",
    ),
    "event_family empty": Invalid(
        entry(body(event_family="", event_name="v", user_id="u1")),
        DeadLetter.INVALID_EVENT_FAMILY,
        "invalid_event_family: 'event_family' is empty",
    ),
    "no event_name": Invalid(
        entry(body(event_family="commerce", user_id="u1")),
        DeadLetter.MISSING_EVENT_NAME,
        "missing_event_name: 'event_name' is missing",
    ),
    "event_name a list": Invalid(
        entry(body(event_family="commerce", event_name=["v"], user_id="u1")),
        DeadLetter.INVALID_EVENT_NAME,
        "invalid_event_name: 'event_name' must be a string, got list",
    ),
    "event_name empty": Invalid(
        entry(body(event_family="commerce", event_name="", user_id="u1")),
        DeadLetter.INVALID_EVENT_NAME,
        "invalid_event_name: 'event_name' is empty",
    ),
    "user_id checked before event_family": Invalid(
        entry(body(event_family=1, event_name=2, user_id=3)),
        DeadLetter.INVALID_USER_ID,
        "invalid_user_id: 'user_id' must be a string, got int",
    ),
    "identify outside system, fast path": Invalid(
        entry(body(event_family="commerce", event_name="identify", user_id="u1")),
        DeadLetter.IDENTIFY_NOT_SYSTEM,
        "identify_not_system: identify requires event_family 'system'",
    ),
    "identify outside system, slow path": Invalid(
        entry(
            body(event_family="commerce", event_name="identify", user_id="u1", previous_user_id=5)
        ),
        DeadLetter.IDENTIFY_NOT_SYSTEM,
        "identify_not_system: identify requires event_family 'system'",
    ),
    "identify without previous_user_id": Invalid(
        entry(body(event_family="system", event_name="identify", user_id="u1")),
        DeadLetter.MISSING_PREVIOUS_USER_ID,
        "missing_previous_user_id: 'previous_user_id' is missing",
    ),
    "identify with previous_user_id null": Invalid(
        entry(identify(previous_user_id=None)),
        DeadLetter.MISSING_PREVIOUS_USER_ID,
        "missing_previous_user_id: 'previous_user_id' is missing",
    ),
    "identify with previous_user_id a number": Invalid(
        entry(identify(previous_user_id=7)),
        DeadLetter.INVALID_PREVIOUS_USER_ID,
        "invalid_previous_user_id: 'previous_user_id' must be a string, got int",
    ),
    "identify with previous_user_id empty": Invalid(
        entry(identify(previous_user_id="")),
        DeadLetter.INVALID_PREVIOUS_USER_ID,
        "invalid_previous_user_id: 'previous_user_id' is empty",
    ),
    "identify with an empty user_id": Invalid(
        entry(identify(user_id="")),
        DeadLetter.INVALID_USER_ID,
        "invalid_user_id: 'user_id' is empty",
    ),
    # The typed fast path rejects the first user_id, the dict of the slow path keeps the
    # last: neither names a problem, so the entry falls back to the catch-all code.
    "duplicate user_id keys, a number then a string": Invalid(
        entry(b'{"event_family":"c","event_name":"v","user_id":5,"user_id":"u1"}'),
        DeadLetter.INVALID_EVENT,
        "invalid_event: event failed validation for an unknown reason",
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=list(INVALID))
def test_invalid_entries(case: Invalid) -> None:
    """Each malformed entry is INVALID with its stable code and the filled-in message."""
    parsed = Parser(LIMIT).parse(b"7-1", case.fields)
    assert (parsed.kind, parsed.error_code, parsed.error) == (Kind.INVALID, case.code, case.error)
    assert parsed.error.startswith(f"{parsed.error_code}: ")
    assert parsed.fields is case.fields


def test_one_field_over_the_bound_is_dead_lettered_without_its_payload() -> None:
    """65 fields against the default 64: too_many_fields, and the dead letter drops the payload
    (copying thousands of fields is what the bound prevents)."""
    fields = [*entry(view()), *(value for k in range(63) for value in (b"f%d" % k, b"v"))]
    parsed = Parser(LIMIT).parse(b"1-0", fields)
    assert (parsed.kind, parsed.error_code, parsed.fields) == (
        Kind.INVALID,
        DeadLetter.TOO_MANY_FIELDS,
        [],
    )
    assert parsed.error == "too_many_fields: entry has 65 fields, limit 64"
    assert Parser(LIMIT).parse(b"1-1", fields[:-2]).kind is Kind.EVENT


BOUNDS_ELSEWHERE = {
    DeadLetter.EVENT_TOO_DEEP,
    DeadLetter.ENTRY_TOO_LARGE,
    DeadLetter.ID_TOO_LONG,
}
"""Bounds that need entries far past LIMIT: tests/test_hostile_entries.py has their cases."""


def test_every_parser_code_has_a_case() -> None:
    """The tables cover every DeadLetter code but the ones recovery and the committer assign
    and the size bounds pinned with large entries in test_hostile_entries.py."""
    covered = {case.code for case in INVALID.values()}
    assigned_elsewhere = {
        DeadLetter.MAX_DELIVERIES_EXCEEDED,
        DeadLetter.COMMIT_FAILED,
        DeadLetter.RESERVED_TENANT,  # depends on the settings: its own test
        DeadLetter.WRONG_SHARD,  # depends on STITCH_SHARDS: test_sharding.py
    }
    bounded = BOUNDS_ELSEWHERE | {DeadLetter.TOO_MANY_FIELDS}
    assert covered == set(DeadLetter) - assigned_elsewhere - bounded


def test_the_tenant_named_by_the_change_feed_is_reserved() -> None:
    """The tenant whose alias key would be the change feed (``alias:changes``) is refused with
    its own code; any other valid tenant, and that name under another feed, are not."""
    parser = Parser.from_settings(Settings(consumer="x"))
    parsed = parser.parse(b"1-0", entry(view(), b"changes"))
    assert parsed.error_code is DeadLetter.RESERVED_TENANT
    assert parsed.error == (
        "reserved_tenant: tenant 'changes' is reserved: its alias key is the change feed"
    )
    assert parser.parse(b"1-1", entry(view(), b"changes2")).kind is Kind.EVENT
    elsewhere = Parser.from_settings(Settings(consumer="x", changes_stream="feed"))
    assert elsewhere.parse(b"1-2", entry(view(), b"changes")).kind is Kind.EVENT


def test_size_limit_is_inclusive() -> None:
    """An event of exactly max_event_bytes is accepted; one byte more is refused."""
    parser = Parser(LIMIT)
    assert parser.parse(b"1-0", entry(sized(LIMIT))).kind is Kind.EVENT
    assert parser.parse(b"1-1", entry(sized(LIMIT + 1))).error_code is DeadLetter.EVENT_TOO_LARGE


def test_entry_deleted_while_pending_is_gone() -> None:
    """An id whose payload Redis lost (None fields) is GONE, with no error to dead-letter."""
    parsed = Parser(LIMIT).parse(b"3-0", None)
    assert (parsed.kind, parsed.id, parsed.fields, parsed.error, parsed.tenant) == (
        Kind.GONE,
        b"3-0",
        None,
        "",
        "",
    )


def test_tenant_is_kept_on_entries_rejected_after_it() -> None:
    """Once the tenant is valid it is recorded, even when the event is then refused."""
    parsed = Parser(LIMIT).parse(b"1-0", entry(b"[]", b"shop-1.eu_2"))
    assert (parsed.kind, parsed.tenant) == (Kind.INVALID, "shop-1.eu_2")


def test_tenant_alphabet_edges() -> None:
    """Every character of [A-Za-z0-9_.-] is accepted, up to exactly 64 of them."""
    parser = Parser(LIMIT)
    alphabet = (string.ascii_letters + string.digits + "_.-").encode()
    for tenant in (alphabet[:64], alphabet[64:], b"x" * 64, b"-", b"."):
        parsed = parser.parse(b"1-0", entry(view(), tenant))
        assert (parsed.kind, parsed.tenant) == (Kind.EVENT, tenant.decode())


def test_parser_is_reusable_across_entries() -> None:
    """One parser reused for a mixed sequence classifies each entry on its own."""
    parser = Parser(LIMIT)
    kinds = [
        parser.parse(b"1-0", fields).kind
        for fields in (entry(view()), entry(b"{"), None, entry(identify()), entry(view(), b"a b"))
    ]
    assert kinds == [Kind.EVENT, Kind.INVALID, Kind.GONE, Kind.IDENTIFY, Kind.INVALID]
    assert parser.parse(b"2-0", entry(view(), b"a b")).error_code is DeadLetter.INVALID_TENANT


def test_non_identify_event_ignores_previous_user_id_type() -> None:
    """previous_user_id only matters on identify: an ordinary event carrying a number there
    is still a valid event (README: only identify needs a usable previous_user_id)."""
    parsed = Parser(LIMIT).parse(b"1-0", entry(view(previous_user_id=5)))
    assert (parsed.kind, parsed.error) == (Kind.EVENT, "")


def test_invalid_utf8_anywhere_in_the_event_is_dead_lettered() -> None:
    """An event that is not UTF-8 is refused wherever the bad bytes sit (README: event_not_utf8
    when `event` is not UTF-8), not only inside the fields the parser reads."""
    raw = b'{"event_family":"c","event_name":"v","user_id":"u1","properties":"\xff"}'
    parsed = Parser(LIMIT).parse(b"1-0", entry(raw))
    assert parsed.error_code is DeadLetter.EVENT_NOT_UTF8


PARTICULARS: dict[str, object] = {
    "size": 70_000,
    "limit": 65_536,
    "reason": "invalid start byte",
    "start": 0,
    "error": "Input data was truncated",
    "kind": "list",
    "problem": "is empty",
    "delivered": 6,
    "depth": 300,
    "fields": 65,
    "field": "user_id",
    "tenant": "changes",
    "shard": 3,
    "stream": "events-3",
}


@pytest.mark.parametrize("code", list(DeadLetter))
def test_every_code_has_a_message_that_formats(code: DeadLetter) -> None:
    """Each DeadLetter member has a non-empty message whose placeholders all get filled."""
    text = MESSAGES[code].format(**PARTICULARS)
    assert text
    assert "{" not in text.replace("{1,64}", "")
    assert set(MESSAGES) == set(DeadLetter)


def test_messages_with_particulars_read_exactly() -> None:
    """The messages with particulars read exactly as operators see them in `error`."""
    assert MESSAGES[DeadLetter.EVENT_TOO_LARGE].format(size=10, limit=5) == (
        "event is 10 bytes, limit 5"
    )
    assert MESSAGES[DeadLetter.MAX_DELIVERIES_EXCEEDED].format(delivered=6, limit=5) == (
        "delivered 6 times, limit 5"
    )
    assert MESSAGES[DeadLetter.INVALID_TENANT].format() == "tenant must match [A-Za-z0-9_.-]{1,64}"
