"""``status`` as text for people: a few aligned tables, newest facts first."""

from __future__ import annotations

from .status import Status, StreamState, entry_time
from .terminal import ago, table

__all__ = ["render_status"]


def render_status(status: Status, url: str) -> str:
    last = "none yet"
    if status.last_commit_at is not None:
        last = f"{status.last_commit_at} ({ago(status.last_commit_age_s)})"
    sections = [
        f"lehnz-stitch status at {status.at} ({url})",
        f"last commit: {last}",
        _streams(status),
        _group(status),
        _dead_letters(status),
        _links(status),
    ]
    return "\n\n".join(sections)


def _streams(status: Status) -> str:
    rows = [
        (role, s.name, s.length, _last(s))
        for role, s in (("input", status.input), ("output", status.output), ("dead", status.dead))
    ]
    return "streams\n" + table(("role", "stream", "entries", "last added"), rows)


def _last(stream: StreamState) -> str:
    if stream.last_id is None:
        return "never"
    return entry_time(stream.last_id).isoformat(timespec="seconds")


def _group(status: Status) -> str:
    group = status.group
    if group is None:
        return f"group: none on {status.input.name} yet (created when a worker starts)"
    lag = "unknown (Redis cannot tell after deletions)" if group.lag is None else f"{group.lag:,}"
    head = (
        f"group {group.name}: lag {lag}, pending {group.pending:,}, "
        f"last delivered {group.last_delivered_id}"
    )
    if not group.consumers:
        return head + "\n  no consumers"
    rows = [(c.name, c.pending, f"{c.idle_s:,.1f} s") for c in group.consumers]
    return head + "\n" + table(("consumer", "pending", "idle"), rows)


def _dead_letters(status: Status) -> str:
    total = sum(status.dead_letters.values())
    head = f"dead letters: {total:,} in {status.dead.name}"
    if not total:
        return head
    return head + "\n" + table(("error_code", "entries"), list(status.dead_letters.items()))


def _links(status: Status) -> str:
    head = f"links: {sum(status.links.values()):,} in {len(status.links):,} alias maps"
    if not status.links:
        return head
    return head + "\n" + table(("tenant", "links"), list(status.links.items()))
