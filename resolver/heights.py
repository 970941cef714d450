"""Tree heights beside each alias map, so the link rules can refuse over-deep chains.

``<alias key>:heights`` maps every root with incoming links to the height of its tree (the
longest chain ending there), and the field ``""`` to how many links of the alias map those
heights account for. ``lua/link_rules.lua`` keeps both atomically with every link it writes.
A map whose link count differs from that number was written (at least partly) by someone
else, an older version or by hand: :func:`sync` measures it again from the map itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import redis

from .ids import decode_id
from .scripts import load_lua

__all__ = [
    "HEIGHTS_SUFFIX",
    "LINKS_FIELD",
    "SCRATCH_SUFFIX",
    "SIZES_SUFFIX",
    "MeasureError",
    "Measured",
    "accounted",
    "alias_keys",
    "heights_key",
    "measure",
    "sizes_key",
    "sync",
]

HEIGHTS_SUFFIX = ":heights"
"""Tenants never contain ':', so ``alias:<tenant>:heights`` is never another alias map, and
it keeps the alias key's hash tag (same Cluster slot)."""
SCRATCH_SUFFIX = ":measuring"
"""Where fresh heights are written before they are swapped in (``<heights key>:measuring``)."""
LINKS_FIELD = ""
"""An empty id is a placeholder, never linked: no root can be called that."""
MEASURE_LUA = load_lua("resolver", "measure.lua")
CHUNK = 1000


class MeasureError(RuntimeError):
    """The map kept gaining links while it was read: its heights stay as they were."""


SIZES_SUFFIX = ":sizes"
"""Component sizes (resolver/quarantine.py), measured here together with the heights."""


def heights_key(alias_key: str) -> str:
    return alias_key + HEIGHTS_SUFFIX


def sizes_key(alias_key: str) -> str:
    return alias_key + SIZES_SUFFIX


class Measured(NamedTuple):
    links: int
    """Links in the map when it was measured."""
    heights: dict[str, int]
    """Height of each root's tree, for roots with incoming links."""
    too_deep: dict[str, int]
    """The roots whose trees are deeper than the cap, with their heights."""
    in_cycles: int
    """Ids whose chain has no end (they lead into a cycle someone else wrote)."""
    sizes: dict[str, int] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    """Ids in each root's component (root included), for roots with incoming links."""


def measure(links: Mapping[str, str], max_depth: int) -> Measured:
    """Depth of every id and height of every root, in one pass over the map (no recursion)."""
    depth: dict[str, int] = {}
    root_of: dict[str, str] = {}
    looping: set[str] = set()
    for start in links:
        path: list[str] = []
        on_path: set[str] = set()
        node = start
        while node not in depth and node not in looping:
            if node in on_path:  # a foreign cycle: everything on this path leads into it
                looping.update(path)
                break
            nxt = links.get(node)
            if nxt is None:
                depth[node], root_of[node] = 0, node
                break
            path.append(node)
            on_path.add(node)
            node = nxt
        if node in looping:
            looping.update(path)
            continue
        base, root = depth[node], root_of[node]
        for offset, member in enumerate(reversed(path), start=1):
            depth[member], root_of[member] = base + offset, root
    heights: dict[str, int] = {}
    for uid, d in depth.items():
        if d > heights.get(root_of[uid], 0):
            heights[root_of[uid]] = d
    too_deep = {root: h for root, h in heights.items() if h > max_depth}
    sizes = {root: n for root, n in Counter(root_of.values()).items() if n > 1}
    return Measured(len(links), heights, too_deep, len(looping), sizes)


def _chunks(heights: dict[str, int]) -> Iterator[dict[str, int]]:
    items = list(heights.items())
    for first in range(0, len(items), CHUNK):
        yield dict(items[first : first + CHUNK])


def accounted(client: redis.Redis, alias_key: str) -> bool:
    """True when the heights hash accounts for every link of the map and sizes exist beside
    a map with links (a map the link rules kept before sizes existed: measured once more);
    one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hlen(alias_key)
    pipe.hget(heights_key(alias_key), LINKS_FIELD)
    pipe.hlen(sizes_key(alias_key))
    pipe.hexists(sizes_key(alias_key), LINKS_FIELD)  # the tenant's cap: not a size
    links, counted, fields, cap = pipe.execute()
    sized = int(fields) - int(cap)
    return int(links) == int(counted or 0) and (int(links) == 0 or sized > 0)


def sync(
    client: redis.Redis, alias_key: str, max_depth: int, *, attempts: int = 5
) -> Measured | None:
    """Measure the map again unless its heights already account for every link.

    Reads the map with HSCAN (not atomic), writes the heights under a temporary key, and
    swaps them in with a script that first checks the map still has as many links as were
    read: links are only ever added, so an equal count means nothing changed meanwhile.
    Returns what it measured, None if nothing was needed, and raises after ``attempts``
    reads that kept changing under it.
    """
    hkey = heights_key(alias_key)
    scratch = hkey + SCRATCH_SUFFIX
    for _ in range(attempts):
        if accounted(client, alias_key):
            return None
        links = {decode_id(k): decode_id(v) for k, v in client.hscan_iter(alias_key, count=CHUNK)}
        measured = measure(links, max_depth)
        skey = sizes_key(alias_key)
        sizes_scratch = skey + SCRATCH_SUFFIX
        client.delete(scratch)
        client.delete(sizes_scratch)
        for chunk in _chunks(measured.heights):
            client.hset(scratch, mapping=chunk)  # type: ignore[arg-type]
        for chunk in _chunks(measured.sizes):
            client.hset(sizes_scratch, mapping=chunk)  # type: ignore[arg-type]
        swap = client.register_script(MEASURE_LUA)
        keys = [alias_key, hkey, scratch, skey, sizes_scratch]
        if swap(keys=keys, args=[measured.links]) == 1:
            return measured
    raise MeasureError(f"{alias_key} kept changing while it was measured ({attempts} reads)")


def alias_keys(client: redis.Redis, key_prefix: str) -> list[str]:
    """Every alias map under ``key_prefix`` (SCAN: incremental, never blocks Redis).

    Only hashes, and only names without ':' after the prefix: never a heights, provenance or
    refusal key, nor the change feed (``alias:changes`` is a stream)."""
    pattern = _glob_escape(key_prefix) + "*"
    scan = client.scan_iter(match=pattern, count=1000, _type="hash")
    keys = (decode_id(k) for k in scan)
    return sorted(k for k in keys if ":" not in k[len(key_prefix) :])


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
