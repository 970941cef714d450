"""A realistic, deterministic input data set, generated once and loaded with pipelined XADD.

Shape (documented in the report header):

* tenants of Zipf-like size (weight 1/k^1.2), persons within a tenant Zipf-like active;
* every id is a random version-4 UUID string (36 chars), as anonymous SDK ids are;
* ~4 % of entries are identify events; an identified person walks a chain of depth 1-4
  (anon -> real, then real -> real2 merges ...), some with a second anonymous device
  linked to their current real id; events keep using older ids of the person, so the
  worker has to resolve chains of every depth;
* events are ~300-byte JSON objects with a ``properties`` object; ~30 % carry ``domain``.
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate

import msgspec
import redis

__all__ = ["DataSet", "Person", "generate", "load", "reset_group"]

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
TENANT_EXPONENT = 1.2
PERSON_EXPONENT = 1.1
EVENTS_PER_PERSON = 8
IDENTIFY_SHARE = 0.04
DEPTH_WEIGHTS = {1: 0.55, 2: 0.25, 3: 0.12, 4: 0.08}
SECOND_DEVICE_SHARE = 0.2
LATEST_ID_SHARE = 0.7
DOMAIN_SHARE = 0.3
EVENT_NAMES = (
    ("web", "page_view"),
    ("commerce", "product_view"),
    ("commerce", "add_to_cart"),
    ("web", "search"),
    ("commerce", "checkout_started"),
    ("commerce", "purchase"),
)
EVENT_CUM = list(accumulate((40, 30, 12, 10, 5, 3)))
PAGES = (
    "/",
    "/products",
    "/products/shoes/runner-x",
    "/cart",
    "/checkout",
    "/search",
    "/account/orders",
    "/blog/spring-collection",
)
REFERRERS = (
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "",
    "https://t.co/abc",
    "https://www.bing.com/search",
)

RawFields = dict[bytes, bytes]


@dataclass
class Person:
    tenant: str
    ids: list[str]
    """The chain in link order: anon, real1, real2 ... (depth = len - 1)."""
    links: list[tuple[str, str]] = field(default_factory=list)
    """(previous_user_id, user_id) still to emit, in order."""
    known: list[str] = field(default_factory=list)
    """Ids this person has used so far (what events may carry)."""


@dataclass
class DataSet:
    entries: list[RawFields]
    seed: int
    n_identify: int = 0
    tenant_counts: Counter[str] = field(default_factory=Counter)
    depth_counts: Counter[int] = field(default_factory=Counter)
    """Persons by final chain depth (0 = never identified)."""
    mean_event_bytes: float = 0.0

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> str:
        n = len(self.entries)
        tenants = ", ".join(f"{t} {c / n:.0%}" for t, c in self.tenant_counts.most_common())
        depths = ", ".join(f"d{d}: {c}" for d, c in sorted(self.depth_counts.items()))
        return (
            f"{n:,} entries (seed {self.seed}), {self.n_identify:,} identify "
            f"({self.n_identify / max(n, 1):.1%}), mean event JSON "
            f"{self.mean_event_bytes:.0f} B; tenants: {tenants}; persons by chain depth: "
            f"{depths}"
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _zipf_cum(n: int, exponent: float) -> list[float]:
    return list(accumulate(1.0 / (k**exponent) for k in range(1, n + 1)))


def _persons(rng: random.Random, n_events: int) -> dict[str, list[Person]]:
    weights = [1.0 / (k**TENANT_EXPONENT) for k in range(1, len(TENANTS) + 1)]
    total = sum(weights)
    n_persons = max(len(TENANTS), n_events // EVENTS_PER_PERSON)
    by_tenant: dict[str, list[Person]] = {}
    for tenant, w in zip(TENANTS, weights, strict=True):
        count = max(1, round(n_persons * w / total))
        by_tenant[tenant] = [
            Person(tenant, [anon := _uuid(rng)], known=[anon]) for _ in range(count)
        ]
    return by_tenant


def _plan_links(rng: random.Random, by_tenant: dict[str, list[Person]], n_links: int) -> None:
    """Give persons chains until ``n_links`` links are planned (active persons first)."""
    everyone = [p for persons in by_tenant.values() for p in persons[: max(1, len(persons) // 2)]]
    rng.shuffle(everyone)
    depths, depth_w = list(DEPTH_WEIGHTS), list(DEPTH_WEIGHTS.values())
    planned = 0
    for person in everyone:
        if planned >= n_links:
            break
        depth = rng.choices(depths, depth_w)[0]
        chain = [person.ids[0], *(_uuid(rng) for _ in range(depth))]
        person.ids = chain
        person.links = [(chain[i], chain[i + 1]) for i in range(depth)]
        if rng.random() < SECOND_DEVICE_SHARE:
            device = _uuid(rng)
            person.known.append(device)
            at = rng.randrange(1, depth + 1)
            person.links.insert(at, (device, chain[at]))
        planned += len(person.links)


def _event(rng: random.Random, user_id: str) -> dict[str, object]:
    r = rng.random
    family, name = EVENT_NAMES[bisect.bisect(EVENT_CUM, r() * EVENT_CUM[-1])]
    return {
        "event_family": family,
        "event_name": name,
        "user_id": user_id,
        "timestamp": f"2024-05-{1 + int(r() * 28):02d}T{int(r() * 24):02d}:"
        f"{int(r() * 60):02d}:{int(r() * 60):02d}.{int(r() * 1000):03d}Z",
        "properties": {
            "page": PAGES[int(r() * len(PAGES))],
            "referrer": REFERRERS[int(r() * len(REFERRERS))],
            "sku": f"SKU-{10000 + int(r() * 90000)}",
            "price": round(1 + r() * 499, 2),
            "currency": "EUR",
            "quantity": 1 + int(r() * 4),
            "session_id": f"s-{rng.getrandbits(48):012x}",
        },
    }


def generate(n_events: int, seed: int = 20240501) -> DataSet:
    """``n_events`` input entries (events and identifies) in stream order."""
    rng = random.Random(seed)
    by_tenant = _persons(rng, n_events)
    n_links = round(n_events * IDENTIFY_SHARE)
    _plan_links(rng, by_tenant, n_links)
    tenant_names = list(by_tenant)
    tenant_cum = _zipf_cum(len(tenant_names), TENANT_EXPONENT)
    person_cum = {t: _zipf_cum(len(ps), PERSON_EXPONENT) for t, ps in by_tenant.items()}
    pending = [p for ps in by_tenant.values() for p in ps if p.links]
    link_slots = set(rng.sample(range(n_events), min(n_links, n_events)))
    encode = msgspec.json.encode
    data = DataSet([], seed)
    total_bytes = 0
    for position in range(n_events):
        if position in link_slots and pending:
            k = rng.randrange(len(pending))
            person = pending[k]
            prev, user = person.links.pop(0)
            if not person.links:
                pending[k] = pending[-1]
                pending.pop()
            if user not in person.known:
                person.known.append(user)
            body = encode(
                {
                    "event_family": "system",
                    "event_name": "identify",
                    "user_id": user,
                    "previous_user_id": prev,
                }
            )
            data.n_identify += 1
        else:
            tenant = tenant_names[bisect.bisect(tenant_cum, rng.random() * tenant_cum[-1])]
            cum = person_cum[tenant]
            person = by_tenant[tenant][bisect.bisect(cum, rng.random() * cum[-1])]
            known = person.known
            if rng.random() < LATEST_ID_SHARE:
                uid = known[-1]
            else:
                uid = known[int(rng.random() * len(known))]
            body = encode(_event(rng, uid))
            total_bytes += len(body)
        entry: RawFields = {b"tenant": person.tenant.encode(), b"event": body}
        if rng.random() < DOMAIN_SHARE:
            entry[b"domain"] = b"commerce"
        data.entries.append(entry)
        data.tenant_counts[person.tenant] += 1
    n_plain = n_events - data.n_identify
    data.mean_event_bytes = total_bytes / max(n_plain, 1)
    for persons in by_tenant.values():
        for p in persons:
            data.depth_counts[len(p.ids) - 1] += 1
    return data


def load(client: redis.Redis, stream: str, entries: list[RawFields], chunk: int = 1000) -> None:
    """XADD every entry, ``chunk`` per pipeline round trip."""
    for start in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + chunk]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()


def reset_group(
    client: redis.Redis,
    stream: str,
    group: str,
    prefixes: tuple[str, ...],
    extra_keys: tuple[str, ...] = (),
) -> None:
    """Drop outputs, alias hashes and the group; recreate the group at 0 (all unread)."""
    doomed = list(extra_keys)
    for prefix in prefixes:
        doomed.extend(k.decode() for k in client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
    groups: set[str] = set()
    if client.exists(stream):
        groups = {g["name"].decode() for g in client.xinfo_groups(stream)}
    if group in groups:
        client.xgroup_destroy(stream, group)
    client.xgroup_create(stream, group, id="0", mkstream=True)
