"""Fuzzing the whole path on a real Redis: whatever lands on the input stream, the worker
drains it without an exception, emits every valid entry once, dead-letters every invalid one
once, and leaves nothing pending (issue 16).

Each generated entry says what it must become: ``emit``, ``dead``, or ``either`` for random
bytes, whose classification is the parser's business (tested on its own); the invariant
here is that they too come out exactly once, on one side.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import DEAD, INPUT, OUTPUT, make_worker
from tests.redis_proc import RedisServer

pytestmark = pytest.mark.redis_server

MAX_ID = 256
MAX_EVENT = 4096
Fields = list[tuple[bytes, bytes]]
Case = tuple[Fields, str]

PLACEHOLDERS = ["null", "undefined", "0", "anonymous", "[object Object]", "NaN", "guest", "None"]
tenants = st.sampled_from([b"acme", b"globex", b"t_1.x-y"])
names = st.binary(min_size=1, max_size=12).filter(lambda n: n not in (b"tenant", b"event"))


def _size(uid: str) -> int:
    return len(uid.encode())


text_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300)
ids = st.one_of(text_ids, st.sampled_from(PLACEHOLDERS), st.integers(1, 400).map(lambda n: "i" * n))
valid_ids = ids.filter(lambda u: _size(u) <= MAX_ID)
long_ids = st.integers(MAX_ID + 1, 2_000).map(lambda n: "x" * n)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _entry(tenant: bytes, body: dict[str, Any], extra: Fields | None = None) -> Fields:
    return [(b"tenant", tenant), (b"event", json.dumps(body).encode()), *(extra or [])]


@st.composite
def valid_entries(draw: st.DrawFn) -> Case:
    user = draw(valid_ids)
    body: dict[str, Any] = {"event_family": "commerce", "event_name": "view", "user_id": user}
    if draw(st.booleans()):
        prev = draw(valid_ids)
        body = {
            "event_family": "system",
            "event_name": "identify",
            "user_id": user,
            "previous_user_id": prev,
        }
    body["properties"] = draw(json_values)
    extra = draw(st.lists(st.tuples(names, st.binary(max_size=40)), max_size=5))
    return _entry(draw(tenants), body, extra), "emit"


@st.composite
def invalid_entries(draw: st.DrawFn) -> Case:
    tenant = draw(tenants)
    good = {"event_family": "a", "event_name": "b", "user_id": "u"}
    kind = draw(
        st.sampled_from(
            [
                "long_id",
                "long_prev",
                "deep",
                "fields",
                "large",
                "utf8",
                "no_tenant",
                "huge_deep",
                "huge_fields",
            ]
        )
    )
    if kind == "long_id":
        return _entry(tenant, {**good, "user_id": draw(long_ids)}), "dead"
    if kind == "long_prev":
        body = {
            "event_family": "system",
            "event_name": "identify",
            "user_id": "r",
            "previous_user_id": draw(long_ids),
        }
        return _entry(tenant, body), "dead"
    if kind == "deep":
        depth = draw(st.integers(257, 1_000))
        return [(b"tenant", tenant), (b"event", b"[" * depth + b"]" * depth)], "dead"
    if kind == "huge_deep":  # the case, within the event bound of the real default
        return [(b"tenant", tenant), (b"event", b"[" * 30_000)], "dead"
    if kind == "fields":
        extra = [(b"f%d" % k, b"v") for k in range(draw(st.integers(63, 200)))]
        return _entry(tenant, good, extra), "dead"
    if kind == "huge_fields":
        return _entry(tenant, good, [(b"f%d" % k, b"") for k in range(5_000)]), "dead"
    if kind == "large":
        return _entry(tenant, good, [(b"pad", b"x" * draw(st.integers(5_200, 9_000)))]), "dead"
    if kind == "utf8":
        return [(b"tenant", tenant), (b"event", b'{"user_id": "\xff\xfe", "x": 1}')], "dead"
    pairs = draw(st.lists(st.tuples(names, st.binary(max_size=30)), min_size=1, max_size=6))
    return pairs, "dead"


random_entries = st.tuples(
    st.lists(
        st.tuples(names | st.sampled_from([b"tenant", b"event"]), st.binary(max_size=200)),
        min_size=1,
        max_size=8,
    ),
    st.just("either"),
)
raw_events = st.tuples(
    st.builds(lambda t, b: [(b"tenant", t), (b"event", b)], tenants, st.binary(max_size=300)),
    st.just("either"),
)
batches = st.lists(
    st.one_of(valid_entries(), valid_entries(), invalid_entries(), random_entries, raw_events),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(cases=batches, batch_size=st.sampled_from([1, 3, 500]))
def test_worker_survives_anything_on_the_input_stream(
    redis_server: RedisServer, cases: list[Case], batch_size: int
) -> None:
    """Valid entries emitted once, invalid ones dead-lettered once, nothing pending."""
    client = redis_server.client()
    client.flushall()
    expected: dict[bytes, str] = {}
    for fields, fate in cases:
        entry_id = client.execute_command("XADD", INPUT, "*", *[v for kv in fields for v in kv])
        expected[entry_id] = fate
    make_worker(
        client,
        batch_size=batch_size,
        forward_identify=True,
        max_event_bytes=MAX_EVENT,
        max_entry_bytes=MAX_EVENT + 1_024,
        max_id_bytes=MAX_ID,
    ).run(drain=True)
    emitted = Counter(f[b"source_id"] for _, f in client.xrange(OUTPUT))
    dead = Counter(f[b"source_id"] for _, f in client.xrange(DEAD))
    assert set(emitted.values()) <= {1} and set(dead.values()) <= {1}
    assert not emitted.keys() & dead.keys()
    assert emitted.keys() | dead.keys() == expected.keys()
    assert {i for i, fate in expected.items() if fate == "emit"} <= emitted.keys()
    assert {i for i, fate in expected.items() if fate == "dead"} <= dead.keys()
    assert client.xpending(INPUT, "stitch")["pending"] == 0
