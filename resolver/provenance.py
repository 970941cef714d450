"""Where each link came from, and which identifies were refused, beside each alias map.

``<alias key>:provenance`` maps each previous_user_id the worker linked to
``"<source_id> <applied_at_ms> <consumer>"``: the identify's input entry id, the Redis clock
when the commit script wrote the link, and the consumer that ran the script. It is written by
the same script as the link, so a link the worker wrote never lacks it; a link written by
another program has none. ``alias:<tenant>`` itself stays the plain previous_user_id ->
user_id table readers join on.

``<alias key>:refusals`` is a stream (approximate MAXLEN) with one entry per refused identify:
``outcome``, ``source_id``, ``previous_user_id``, ``user_id``, written with the identify's
XACK (only when it returns 1, so a redelivered identify is logged once).

Tenants never contain ':', so neither key is ever another tenant's alias map, and both keep
the alias key's hash tag (same Cluster slot).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "PROVENANCE_SUFFIX",
    "REFUSALS_SUFFIX",
    "Provenance",
    "parse_provenance",
    "provenance_key",
    "refusals_key",
]

PROVENANCE_SUFFIX = ":provenance"
REFUSALS_SUFFIX = ":refusals"


def provenance_key(alias_key: str) -> str:
    return alias_key + PROVENANCE_SUFFIX


def refusals_key(alias_key: str) -> str:
    return alias_key + REFUSALS_SUFFIX


class Provenance(NamedTuple):
    source_id: str
    """The identify's input entry id."""
    applied_at_ms: int
    """Redis's clock (TIME) when the commit script wrote the link."""
    consumer: str
    """The consumer (replica) whose commit wrote it."""


def parse_provenance(value: bytes | str | None) -> Provenance | None:
    """The record commit.lua wrote (``None`` for none, or one this version cannot read)."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    parts = text.split(" ", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return Provenance(parts[0], int(parts[1]), parts[2])
