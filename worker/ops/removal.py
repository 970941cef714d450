"""``unlink`` and ``forget``: correct a wrong merge, erase a person (GDPR Art. 17).

The Redis side is the library's (resolver/erasing.py: one atomic Lua script each); this
validates the arguments as the worker validates ids, prints, and maps errors to the CLI's.
forget never prints or logs the erased ids (its dry run lists them: that is its purpose).
"""

from __future__ import annotations

import json

from resolver import Resolver
from resolver.erasing import Removal

from ..config import Settings, env_name
from ..connection import connect
from ..errors import BadArgumentError, ConfigError
from ..explaining import check_tenant
from .commands import redis_errors

__all__ = ["forget", "unlink"]


def _check_id(settings: Settings, uid: str) -> None:
    """As the parser: a non-empty id of at most STITCH_MAX_ID_BYTES UTF-8 bytes."""
    size = len(uid.encode("utf-8", "surrogateescape"))
    if not uid or size > settings.max_id_bytes:
        raise BadArgumentError(
            f"{uid[:40]!r}: an id is 1 to {env_name('max_id_bytes')} "
            f"({settings.max_id_bytes}) UTF-8 bytes"
        )


def _resolver(settings: Settings) -> Resolver:
    return Resolver(
        connect(settings),
        key_prefix=settings.alias_prefix,
        tombstone_key=settings.tombstone_key.encode() or None,
        changes_key=settings.changes_key,
    )


def unlink(
    settings: Settings,
    tenant: str,
    uid: str,
    *,
    block: bool,
    reason: str,
    dry_run: bool,
    as_json: bool,
) -> int:
    check_tenant(settings, tenant)
    _check_id(settings, uid)
    resolver = _resolver(settings)
    with redis_errors(settings):
        done = resolver.unlink(tenant, uid, block=block, reason=reason, dry_run=dry_run)
    if as_json:
        print(json.dumps(done.as_json(), ensure_ascii=False))
    elif done.target is None:
        print(f"nothing to do: {uid!r} has no link in tenant {tenant!r}")
    else:
        verb = "would remove" if dry_run else "removed"
        blocked = " and blocked it" if block and not dry_run else ""
        print(f"{verb} {uid} -> {done.target}{blocked} (op {done.op_id}); ids that now resolve")
        print(f"differently ({len(done.affected_ids)}):")
        for affected in done.affected_ids:
            print(f"  {affected}")
    return 0


def forget(
    settings: Settings, tenant: str, uid: str, *, reason: str, dry_run: bool, as_json: bool
) -> int:
    check_tenant(settings, tenant)
    _check_id(settings, uid)
    if not settings.tombstone_key and not dry_run:
        raise ConfigError(
            f"{env_name('tombstone_key')} is not set: forget keeps a keyed hash of each erased "
            "id (never the id) and needs the secret; the workers need the same value"
        )
    resolver = _resolver(settings)
    with redis_errors(settings):
        done = resolver.forget(tenant, uid, reason=reason, dry_run=dry_run)
    if as_json:
        shown = done.as_json()
        if not dry_run:
            del shown["affected_ids"]
        print(json.dumps(shown, ensure_ascii=False))
    else:
        print(_forget_summary(done, dry_run, uid, tenant))
    return 0


def _forget_summary(done: Removal, dry_run: bool, uid: str, tenant: str) -> str:
    if not done.tombstones:
        return f"nothing to do: {uid!r} has no link in tenant {tenant!r}"
    if dry_run:
        lines = [f"would erase {done.tombstones} ids and {done.removed_links} links:"]
        return "\n".join(lines + [f"  {m}" for m in done.affected_ids])
    return (
        f"erased {done.tombstones} ids and {done.removed_links} links (op {done.op_id}); "
        "tombstones keep them from being linked again"
    )
