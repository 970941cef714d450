"""``lehnz-stitch explain``: an id's chain with each link's provenance, and the identifies
naming it that were refused (the logic is the library's ``Resolver.explain``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import redis

from resolver import Resolver
from resolver.explain import Explanation

from .config import Settings, env_name
from .connection import connect, redact
from .errors import BadArgumentError, RedisUnavailableError
from .parser import TENANT_RE

__all__ = ["check_tenant", "explain", "render"]


def check_tenant(settings: Settings, tenant: str) -> None:
    """The tenant names a key: only what the worker would accept (no pattern, no ':')."""
    if not TENANT_RE.match(tenant.encode("utf-8", "surrogateescape")):
        raise BadArgumentError(f"--tenant {tenant!r}: a tenant must match [A-Za-z0-9_.-]{{1,64}}")
    if tenant == settings.reserved_tenant:
        raise BadArgumentError(
            f"--tenant {tenant!r}: reserved, its alias key is the change feed "
            f"{settings.changes_key!r}"
        )


def explain(settings: Settings, tenant: str, uid: str, *, as_json: bool) -> str:
    check_tenant(settings, tenant)
    resolver = Resolver(connect(settings), key_prefix=settings.alias_prefix)
    try:
        explanation = resolver.explain(tenant, uid)
    except redis.ConnectionError as exc:
        raise RedisUnavailableError(
            f"{env_name('redis_url')}={redact(settings.redis_url)}: {exc}"
        ) from None
    finally:
        resolver.client.close()
    if as_json:
        return json.dumps(explanation.as_json(), ensure_ascii=False)
    return render(explanation)


def render(explanation: Explanation) -> str:
    """For people: the resolution, one hop per line, then the refusals."""
    e = explanation
    lines = [f"{e.id} resolves to {e.root} (tenant {e.tenant}, {len(e.hops)} links)"]
    for hop in e.hops:
        p = hop.provenance
        if p is None:
            why = "no provenance (written by another program or by hand)"
        else:
            at = datetime.fromtimestamp(p.applied_at_ms / 1000, UTC).isoformat(
                timespec="milliseconds"
            )
            origin = "row" if p.source_id.startswith("import:") else "identify"  # `import`
            why = f"{origin} {p.source_id}, applied {at} by {p.consumer}"
        lines.append(f"  {hop.from_id} -> {hop.to_id}    {why}")
    lines.append(f"refused identifies naming {e.id}: {len(e.refused) or 'none'}")
    lines.extend(
        f"  {r.outcome:<11} {r.previous_user_id} -> {r.user_id}    identify {r.source_id}"
        for r in e.refused
    )
    if e.held:
        h = e.held
        lines.append(
            f"held ({h.reason}): {h.previous_user_id} -> {h.user_id}    identify {h.source_id}"
            " (lehnz-stitch quarantine list|approve|reject)"
        )
    return "\n".join(lines)
