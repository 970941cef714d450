"""At start-up, measure every alias map whose heights do not account for all its links.

Such a map was written (at least partly) by another program, by hand, or by a version that
kept no heights. Measuring it once lets the link rules refuse over-deep chains from then on;
chains already deeper than the cap are counted and logged, stay as they are (nothing
rewrites links) and still resolve to their true end, and no later link makes them deeper.
"""

from __future__ import annotations

from typing import Any

import redis

from resolver.heights import MeasureError, alias_keys, sync

__all__ = ["measure_alias_maps"]


def measure_alias_maps(client: redis.Redis, prefix: str, max_depth: int, log: Any) -> int:
    """Returns how many maps were measured."""
    measured = 0
    for key in alias_keys(client, prefix):
        tenant = key[len(prefix) :]
        try:
            result = sync(client, key, max_depth)
        except MeasureError as exc:
            log.warning(
                "alias map not measured: its links may exceed the cap",
                tenant=tenant,
                error=str(exc),
            )
            continue
        if result is None:
            continue
        measured += 1
        deepest = max(result.heights.values(), default=0)
        log.info(
            "alias map measured",
            tenant=tenant,
            links=result.links,
            deepest=deepest,
            too_deep_roots=len(result.too_deep),
            ids_in_cycles=result.in_cycles,
        )
        if result.too_deep:
            log.warning(
                "alias map holds chains deeper than the cap",
                tenant=tenant,
                roots=len(result.too_deep),
                deepest=deepest,
                cap=max_depth,
            )
    return measured
