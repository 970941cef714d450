"""Every kind of invalid entry is dead-lettered with a stable code; its neighbours still flow."""

from __future__ import annotations

import json

import pytest
import redis

from tests.helpers import DEAD, INPUT, add, drain, event, identify, metric, output

GOOD = json.dumps(event("anon-ok"))

CASES: list[tuple[str, dict[str, bytes | str]]] = [
    ("missing_event", {"tenant": "acme"}),
    ("event_not_utf8", {"tenant": "acme", "event": b'{"user_id": "\xff\xfe"}'}),
    ("event_not_json", {"tenant": "acme", "event": "{nope"}),
    ("event_not_object", {"tenant": "acme", "event": "[1, 2]"}),
    ("event_not_object", {"tenant": "acme", "event": '"a string"'}),
    ("event_too_large", {"tenant": "acme", "event": json.dumps(event("u", pad="x" * 5000))}),
    ("missing_tenant", {"event": GOOD}),
    ("invalid_tenant", {"tenant": "acme corp", "event": GOOD}),
    ("invalid_tenant", {"tenant": "a" * 65, "event": GOOD}),
    ("invalid_tenant", {"tenant": "", "event": GOOD}),
    ("invalid_tenant", {"tenant": "alias:x", "event": GOOD}),
    (
        "missing_user_id",
        {"tenant": "acme", "event": json.dumps({"event_family": "a", "event_name": "b"})},
    ),
    ("invalid_user_id", {"tenant": "acme", "event": json.dumps(event(""))}),
    ("invalid_user_id", {"tenant": "acme", "event": json.dumps({**event("u"), "user_id": 42})}),
    (
        "missing_event_family",
        {"tenant": "acme", "event": json.dumps({"event_name": "b", "user_id": "u"})},
    ),
    (
        "invalid_event_family",
        {"tenant": "acme", "event": json.dumps({**event("u"), "event_family": ["x"]})},
    ),
    (
        "missing_event_name",
        {"tenant": "acme", "event": json.dumps({"event_family": "a", "user_id": "u"})},
    ),
    (
        "invalid_event_name",
        {"tenant": "acme", "event": json.dumps({**event("u"), "event_name": ""})},
    ),
    (
        "identify_not_system",
        {"tenant": "acme", "event": json.dumps({**identify("r", "a"), "event_family": "track"})},
    ),
    (
        "missing_previous_user_id",
        {
            "tenant": "acme",
            "event": json.dumps(
                {"event_family": "system", "event_name": "identify", "user_id": "r"}
            ),
        },
    ),
    ("invalid_previous_user_id", {"tenant": "acme", "event": json.dumps(identify("r", ""))}),
    (
        "invalid_previous_user_id",
        {
            "tenant": "acme",
            "event": json.dumps({**identify("r", "a"), "previous_user_id": {"id": 1}}),
        },
    ),
]


@pytest.mark.parametrize(
    ("code", "fields"), CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)]
)
def test_invalid_entry_is_dead_lettered_and_neighbours_flow(
    client: redis.Redis, code: str, fields: dict[str, bytes | str]
) -> None:
    """The bad entry lands in the dead-letter stream with its code, fields and source id."""
    before = add(client, "acme", event("anon-before"))
    bad = client.xadd(INPUT, fields).decode()  # type: ignore[arg-type]
    after = add(client, "acme", event("anon-after"))
    drain(client, max_event_bytes=4096)
    [(_, dead)] = client.xrange(DEAD)
    assert dead[b"error_code"] == code.encode()
    assert dead[b"error"].startswith(code.encode() + b": ")
    assert dead[b"source_id"] == bad.encode()
    for name, value in fields.items():
        assert dead[name.encode()] == (value if isinstance(value, bytes) else value.encode())
    assert [e["source_id"] for e in output(client)] == [before, after]
    assert client.xpending(INPUT, "stitch")["pending"] == 0


def test_dead_letter_counts_by_reason(client: redis.Redis) -> None:
    """The worker's totals and metrics count dead letters by reason code."""
    add(client, "acme", "{nope")
    add(client, "acme", "{nope")
    add(client, "acme", "[]")
    worker = drain(client)
    assert worker.totals["dead:event_not_json"] == 2
    assert worker.totals["dead:event_not_object"] == 1
    assert metric(worker, "stitch_dead_letters_total", reason="event_not_json") == 2


def test_fields_in_any_order_are_understood(client: redis.Redis) -> None:
    """Producers other than the ingestion API may write event before tenant, or add fields."""
    first = client.xadd(INPUT, {"domain": "x", "event": GOOD, "tenant": "acme"}).decode()
    drain(client)
    [out] = output(client)
    assert out["source_id"] == first and out["resolved_user_id"] == "anon-ok"
