"""The planner: a batch resolved from the cache into one packed commit, and what it learns."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import pytest

from resolver import UNRESOLVED, AliasCache
from resolver.links import LinkOutcome, LinkRules
from tests.helpers import settings
from worker.committer import Committed
from worker.config import Settings
from worker.parser import Entry, Parser
from worker.planner import Plan, Planner
from worker.scripts import COMMIT_SHA, FIXED_KEYS, KEYS_PER_TENANT, CommitCommand

CacheContents = dict[str, dict[str, str]]
"""tenant -> {id: target}; ``id: id`` is a root."""


def make_planner(cache: CacheContents | None = None, **overrides: Any) -> Planner:
    """A planner wired like worker.Worker wires it, over a pre-filled cache."""
    s = settings(**overrides)
    alias_cache = AliasCache(1000)
    for tenant, links in (cache or {}).items():
        for uid, target in links.items():
            alias_cache.put(tenant, uid, target)
    return Planner(
        alias_cache,
        LinkRules(s.placeholders),
        CommitCommand(s),
        key_prefix=s.alias_prefix,
        forward_identify=s.forward_identify,
    )


_PARSER = Parser(65_536)


def ev(user: str, tenant: str = "t", n: int = 0) -> Entry:
    event = {"event_family": "commerce", "event_name": "view", "user_id": user}
    fields = [b"tenant", tenant.encode(), b"event", json.dumps(event).encode()]
    return _PARSER.parse(f"{n}-0".encode(), fields)


def ident(prev: str, user: str, tenant: str = "t", n: int = 0) -> Entry:
    event = {
        "event_family": "system",
        "event_name": "identify",
        "user_id": user,
        "previous_user_id": prev,
    }
    fields = [b"tenant", tenant.encode(), b"event", json.dumps(event).encode()]
    return _PARSER.parse(f"{n}-0".encode(), fields)


def numbered(entries: list[Entry]) -> list[Entry]:
    """Give the batch distinct stream ids 1-0, 2-0, ... in order."""
    for n, entry in enumerate(entries, 1):
        entry.id = f"{n}-0".encode()
    return entries


# --- the packed command, read back ----------------------------------------------------------


def resp_args(packed: bytes) -> list[bytes]:
    """The arguments of one RESP array of bulk strings (what hiredis.pack_command writes)."""
    assert packed.startswith(b"*")
    head, _, rest = packed.partition(b"\r\n")
    args: list[bytes] = []
    for _ in range(int(head[1:])):
        assert rest.startswith(b"$")
        size, _, rest = rest[1:].partition(b"\r\n")
        args.append(rest[: int(size)])
        assert rest[int(size) : int(size) + 2] == b"\r\n"
        rest = rest[int(size) + 2 :]
    assert rest == b"", "exactly one command"
    return args


EXTRA = {b"e": 2, b"d": 2, b"a": 0, b"r": 2, b"l": 6, b"L": 6, b"p": 3, b"P": 3, b"E": 4, b"R": 3}
"""Action arguments after the entry's fields, as commit.lua reads them."""


class Action(NamedTuple):
    id: bytes
    action: bytes
    fields: list[bytes]
    args: list[bytes]


class Commit(NamedTuple):
    keys: list[bytes]
    fixed_args: list[bytes]
    generations: list[bytes]
    verify: dict[int, set[bytes]]
    actions: list[Action]


def decode(plan: Plan) -> Commit:
    """Split plan.packed along commit.lua's KEYS/ARGV layout, checking the counts add up."""
    args = resp_args(plan.packed)
    assert args[:2] == [b"EVALSHA", COMMIT_SHA.encode()]
    n_keys = int(args[2])
    assert n_keys == FIXED_KEYS + KEYS_PER_TENANT * len(plan.tenants)
    keys, argv = args[3 : 3 + n_keys], args[3 + n_keys :]
    fixed, n_verify, n_entries = argv[:11], int(argv[11]), int(argv[12])
    generations = argv[13 : 13 + len(plan.tenants)]
    i = 13 + len(plan.tenants)
    verify: dict[int, set[bytes]] = {}
    for _ in range(n_verify):
        index, count = int(argv[i]), int(argv[i + 1])
        assert index not in verify
        verify[index] = set(argv[i + 2 : i + 2 + count])
        assert len(verify[index]) == count
        i += 2 + count
    actions = []
    for _ in range(n_entries):
        entry_id, action, n = argv[i], argv[i + 1], int(argv[i + 2])
        fields = argv[i + 3 : i + 3 + n]
        extra = argv[i + 3 + n : i + 3 + n + EXTRA[action]]
        actions.append(Action(entry_id, action, fields, extra))
        i += 3 + n + EXTRA[action]
    assert i == len(argv), "nothing after the last entry"
    return Commit(keys, fixed, generations, verify, actions)


def summary(plan: Plan) -> list[tuple[str, ...]]:
    """Each entry's action and arguments as text, the tenant ordinal as its tenant's name."""
    out = []
    for action in decode(plan).actions:
        args = [a.decode() for a in action.args]
        if action.action in (b"e", b"r"):
            tenant_at = 0 if action.action == b"r" else 1
            args[tenant_at] = plan.tenants[int(args[tenant_at]) - 1]
        elif action.action in (b"l", b"L", b"p", b"P"):
            args[0] = plan.tenants[int(args[0]) - 1]
            if action.action in (b"l", b"L"):
                assert args[4:] == ["", ""], "no tombstone HMACs for a tenant without any"
                args = args[:4]
        out.append((action.action.decode(), *args))
    return out


def verified(plan: Plan) -> dict[str, set[str]]:
    """The roots the commit re-checks, per tenant name."""
    return {
        plan.tenants[index - 1]: {root.decode() for root in roots}
        for index, roots in decode(plan).verify.items()
    }


# --- the table --------------------------------------------------------------------------------


class Case(NamedTuple):
    cache: CacheContents
    batch: list[Entry]
    actions: list[tuple[str, ...]]
    """(action, args...) per entry: e root tenant | r tenant user | l tenant prev user expect"""
    verify: dict[str, set[str]]
    deferred: int
    resolutions: int
    own_links: dict[str, dict[str, str]]


CASES: dict[str, Case] = {
    "unknown id: deferred to the script": Case(
        {}, [ev("u1")], [("r", "t", "u1")], {}, deferred=1, resolutions=1, own_links={}
    ),
    "cached root: emitted, root re-checked": Case(
        {"t": {"u1": "u1"}},
        [ev("u1")],
        [("e", "u1", "t")],
        {"t": {"u1"}},
        deferred=0,
        resolutions=1,
        own_links={},
    ),
    "cached chain: emitted at its end": Case(
        {"t": {"anon": "mid", "mid": "u1", "u1": "u1"}},
        [ev("anon")],
        [("e", "u1", "t")],
        {"t": {"u1"}},
        deferred=0,
        resolutions=1,
        own_links={},
    ),
    "chain into an unknown id: deferred": Case(
        {"t": {"anon": "u1"}}, [ev("anon")], [("r", "t", "anon")], {}, 1, 1, {}
    ),
    "foreign cycle in the cache: deferred to the script": Case(
        {"t": {"a": "b", "b": "a"}}, [ev("a")], [("r", "t", "a")], {}, 1, 1, {}
    ),
    "other tenant's root does not count": Case(
        {"other": {"u1": "u1"}}, [ev("u1")], [("r", "t", "u1")], {}, 1, 1, {}
    ),
    "link between two roots applies, later event follows it": Case(
        {"t": {"anon": "anon", "u1": "u1"}},
        [ev("anon"), ident("anon", "u1"), ev("anon")],
        [("e", "anon", "t"), ("l", "t", "anon", "u1", "1"), ("e", "u1", "t")],
        {"t": {"anon", "u1"}},
        deferred=0,
        resolutions=4,
        own_links={"t": {"anon": "u1"}},
    ),
    "link from an id that already links elsewhere: refused (conflict or noop)": Case(
        {"t": {"anon": "u0", "u0": "u0", "u1": "u1"}},
        [ident("anon", "u1"), ev("anon")],
        [("l", "t", "anon", "u1", "0"), ("e", "u0", "t")],
        {"t": {"u0"}},
        deferred=0,
        resolutions=2,
        own_links={},
    ),
    "link that would close a cycle: refused": Case(
        {"t": {"u1": "anon", "anon": "anon"}},
        [ident("anon", "u1")],
        [("l", "t", "anon", "u1", "0")],
        {"t": {"anon"}},
        deferred=0,
        resolutions=2,
        own_links={},
    ),
    "link from an unknown id: left to the script, later events deferred": Case(
        {"t": {"u1": "u1"}},
        [ident("anon", "u1"), ev("anon"), ev("u1")],
        [("l", "t", "anon", "u1", "?"), ("r", "t", "anon"), ("e", "u1", "t")],
        {"t": {"u1"}},
        deferred=2,
        resolutions=4,
        own_links={"t": {"anon": UNRESOLVED}},
    ),
    "link to an unknown id: left to the script": Case(
        {"t": {"anon": "anon"}},
        [ident("anon", "u1")],
        [("l", "t", "anon", "u1", "?")],
        {"t": {"anon"}},
        deferred=1,
        resolutions=2,
        own_links={"t": {"anon": UNRESOLVED}},
    ),
    "second link from the same id in one batch: refused (first link stands)": Case(
        {"t": {"anon": "anon", "u1": "u1", "u2": "u2"}},
        [ident("anon", "u1"), ident("anon", "u2")],
        [("l", "t", "anon", "u1", "1"), ("l", "t", "anon", "u2", "0")],
        {"t": {"anon", "u1"}},
        deferred=0,
        resolutions=3,
        own_links={"t": {"anon": "u1"}},
    ),
    "x->y then y->x in one batch: the second would close a cycle": Case(
        {"t": {"x": "x", "y": "y"}},
        [ident("x", "y"), ident("y", "x")],
        [("l", "t", "x", "y", "1"), ("l", "t", "y", "x", "0")],
        {"t": {"x", "y"}},
        deferred=0,
        resolutions=4,
        own_links={"t": {"x": "y"}},
    ),
    "placeholder and self-link decided locally: self-link acked, placeholders logged": Case(
        {"t": {"u1": "u1"}},
        [ident("null", "u1"), ident("u1", "anonymous"), ident("u1", "u1")],
        [("p", "t", "null", "u1"), ("p", "t", "u1", "anonymous"), ("a",)],
        {},
        deferred=0,
        resolutions=0,
        own_links={},
    ),
    "tenants are separate forests": Case(
        {"a": {"x": "x", "y": "y"}, "b": {"x": "x"}},
        [ident("x", "y", "a"), ev("x", "b"), ev("x", "a")],
        [("l", "a", "x", "y", "1"), ("e", "x", "b"), ("e", "y", "a")],
        {"a": {"x", "y"}, "b": {"x"}},
        deferred=0,
        resolutions=4,
        own_links={"a": {"x": "y"}},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_plan_predicts_links_and_defers_what_the_cache_cannot_answer(case: Case) -> None:
    """Given the cache and the batch, the plan emits, defers and predicts links exactly so."""
    plan = make_planner(case.cache).plan(numbered(case.batch))
    assert summary(plan) == case.actions
    assert verified(plan) == case.verify
    assert (plan.deferred, plan.resolutions) == (case.deferred, case.resolutions)
    assert plan.own_links == case.own_links
    links = [a[1:4] for a in case.actions if a[0] in ("l", "L")]
    assert list(plan.links) == links
    assert [a.id for a in decode(plan).actions] == [e.id for e in case.batch]


def test_local_outcomes_name_position_and_reason() -> None:
    """Placeholders and self-links are decided locally, by batch position, and never sent."""
    batch = numbered(
        [ident("null", "u1"), ev("u1"), ident("u1", "u1"), ident("a", "b"), ident("a", "NaN")]
    )
    plan = make_planner({"t": {"a": "a", "b": "b", "u1": "u1"}}).plan(batch)
    assert plan.local_outcomes == ((0, LinkOutcome.PLACEHOLDER), (2, LinkOutcome.NOOP),
                                   (4, LinkOutcome.PLACEHOLDER))  # fmt: skip
    assert plan.links == (("t", "a", "b"),)
    assert plan.link_entries == (3,)


def test_extra_placeholders_come_from_settings() -> None:
    """STITCH_EXTRA_PLACEHOLDERS ids are refused locally like the built-in ones."""
    planner = make_planner({"t": {"x": "x"}}, extra_placeholders="visitor, Nobody")
    plan = planner.plan([ident("VISITOR", "x"), ident("x", "nobody")])
    assert plan.local_outcomes == ((0, LinkOutcome.PLACEHOLDER), (1, LinkOutcome.PLACEHOLDER))
    assert plan.links == ()


def test_forward_identify_sends_payloads() -> None:
    """With forward_identify, links go as 'L', placeholders as 'P' and self-links as 'r', all
    with fields."""
    batch = numbered([ident("anon", "u1"), ident("null", "u1"), ident("u1", "u1")])
    plan = make_planner({"t": {"anon": "anon", "u1": "u1"}}, forward_identify=True).plan(batch)
    actions = decode(plan).actions
    assert [(a.action, a.fields) for a in actions] == [
        (b"L", batch[0].fields),
        (b"P", batch[1].fields),
        (b"r", batch[2].fields),
    ]
    assert summary(plan) == [
        ("L", "t", "anon", "u1", "1"),
        ("P", "t", "null", "u1"),
        ("r", "t", "u1"),
    ]


def test_invalid_and_gone_entries() -> None:
    """Invalid entries carry their fields, error and code ('d'); gone ones are only acked."""
    bad = _PARSER.parse(b"1-0", [b"tenant", b"t", b"event", b"[]"])
    gone = _PARSER.parse(b"2-0", None)
    plan = make_planner().plan([bad, gone])
    assert decode(plan).actions == [
        Action(b"1-0", b"d", [b"tenant", b"t", b"event", b"[]"],
               [b"event_not_object: event is a JSON list", b"event_not_object"]),
        Action(b"2-0", b"a", [], []),
    ]  # fmt: skip
    assert plan.tenants == ()


def test_packed_layout() -> None:
    """KEYS are the four streams then each tenant's alias, heights, provenance, refusal,
    removals, children, sizes, quarantine and protection keys in first-seen order; ARGV opens
    with group, maxlens, depth, the feed's and refusal logs' maxlens, consumer, alias prefix,
    what to do with forgotten events, the default max component size and the default max
    links per root per hour, then the verify and entry
    counts, then each tenant's generation ("0" until the script reports another)."""
    s: Settings = settings(max_chain_depth=9)
    batch = numbered([ev("x", "b"), ev("y", "a"), ev("z", "b")])
    plan = make_planner({"b": {"x": "x"}}, max_chain_depth=9).plan(batch)
    commit = decode(plan)
    assert plan.tenants == ("b", "a")
    assert commit.keys == [
        *(b"events", b"events:enriched", b"events:dead", b"alias:changes"),
        *(b"alias:b", b"alias:b:heights", b"alias:b:provenance", b"alias:b:refusals"),
        *(b"alias:b:removals", b"alias:b:children", b"alias:b:sizes", b"alias:b:quarantine"),
        b"alias:b:protection",
        *(b"alias:a", b"alias:a:heights", b"alias:a:provenance", b"alias:a:refusals"),
        *(b"alias:a:removals", b"alias:a:children", b"alias:a:sizes", b"alias:a:quarantine"),
        b"alias:a:protection",
    ]
    assert commit.fixed_args == [
        s.group.encode(),
        str(s.output_maxlen).encode(),
        str(s.dead_maxlen).encode(),
        b"9",
        b"10000000",
        b"100000",
        s.consumer.encode(),
        b"alias:",
        b"drop",
        b"1000",
        b"100",
    ]
    assert commit.generations == [b"0", b"0"]
    assert commit.verify == {1: {b"x"}}
    assert summary(plan) == [("e", "x", "b"), ("r", "a", "y"), ("r", "b", "z")]


def test_plan_is_frozen() -> None:
    """A plan cannot be changed once built: it may be re-sent after a NOSCRIPT reload."""
    plan = make_planner().plan([ev("u1")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.deferred = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.packed = b""  # type: ignore[misc]


def test_next_plan_assumes_the_previous_plans_links() -> None:
    """plan(after=previous) resolves through previous's own links, which stay untouched."""
    planner = make_planner({"t": {"anon": "anon", "u1": "u1", "u2": "u2", "z": "z"}})
    first = planner.plan([ident("anon", "u1")])
    assert summary(planner.plan([ev("anon")])) == [("e", "anon", "t")]
    second = planner.plan([ev("anon"), ident("u1", "u2"), ident("anon", "z")], after=first)
    assert summary(second) == [
        ("e", "u1", "t"),
        ("l", "t", "u1", "u2", "1"),
        ("l", "t", "anon", "z", "0"),
    ]
    assert first.own_links == {"t": {"anon": "u1"}}
    assert second.own_links == {"t": {"u1": "u2"}}
    # Only the previous plan's own links: by then whatever it assumed has committed.
    third = planner.plan([ev("anon"), ev("u1")], after=second)
    assert summary(third) == [("e", "anon", "t"), ("e", "u2", "t")]


def test_deep_cached_chain_is_compressed() -> None:
    """Resolving a chain of more than one hop maps its start straight to its root."""
    planner = make_planner({"t": {"a": "b", "b": "c", "c": "c"}})
    planner.plan([ev("a")])
    assert planner.cache.get("t", "a") == "c"


def test_overlay_hops_are_not_compressed_into_the_cache() -> None:
    """A chain that ran through an assumed, uncommitted link leaves the cache unchanged."""
    planner = make_planner({"t": {"anon": "anon", "u1": "mid", "mid": "root", "root": "root"}})
    planner.plan([ident("anon", "u1"), ev("anon")])
    assert planner.cache.get("t", "anon") == "anon"


def test_learn_caches_what_the_script_read_and_applied() -> None:
    """learn() caches the script's reads (None = root) by tenant number and applied links only."""
    planner = make_planner({"a": {"x": "x", "y": "y", "p": "p", "q": "q"}})
    plan = planner.plan([ev("new", "b"), ident("x", "y", "a"), ident("p", "q", "a")])
    assert plan.tenants == ("b", "a")
    committed = Committed(
        emitted=1,
        dead_lettered=0,
        duplicates=[],
        outcomes=[LinkOutcome.APPLIED, LinkOutcome.CONFLICT],
        depths=[1],
        learned=[(1, "new", "old-root"), (1, "old-root", None), (2, "w", "v")],
    )
    planner.learn(plan, committed)
    cache = planner.cache
    assert cache.get("b", "new") == "old-root"
    assert cache.get("b", "old-root") == "old-root"
    assert cache.get("a", "w") == "v"
    assert cache.get("a", "x") == "y"
    assert cache.get("a", "p") == "p"
    assert cache.get("b", "w") is None
    assert summary(planner.plan([ev("new", "b"), ev("x", "a")])) == [
        ("e", "old-root", "b"),
        ("e", "y", "a"),
    ]


def test_learn_requires_one_outcome_per_link() -> None:
    """A verdict whose outcomes do not match the plan's links is refused, not half-learned."""
    planner = make_planner({"t": {"x": "x", "y": "y"}})
    plan = planner.plan([ident("x", "y")])
    with pytest.raises(ValueError):
        planner.learn(plan, Committed(0, 0, [], [], [], []))


def test_forget_drops_some_tenants_or_all() -> None:
    """forget(tenants) drops those tenants' paths; forget() drops every tenant's."""
    planner = make_planner({"a": {"x": "x"}, "b": {"x": "x"}, "c": {"x": "x"}})
    planner.forget(["a", "never-seen"])
    assert [planner.cache.get(t, "x") for t in "abc"] == [None, "x", "x"]
    planner.forget()
    assert len(planner.cache) == 0
    assert summary(planner.plan([ev("x", "b")])) == [("r", "b", "x")]
