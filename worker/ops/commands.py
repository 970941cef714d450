"""``status`` and ``dead-letters list|redrive|purge``: read or act, print, return the exit code.

Results go to stdout, progress to stderr. Redis errors become the CLI's typed errors here:
unreachable is :class:`RedisUnavailableError` (exit 3), refused credentials or a key of the
wrong type :class:`ConfigError` (exit 2) naming what to change.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import redis

from ..acl import ADMIN_USER
from ..config import Settings, env_name
from ..connection import connect, redact
from ..errors import ConfigError, RedisUnavailableError
from ..stream import command
from .dead_letters import DeadLetterRecord, DeadLetters, Outcome, Payload, is_entry_id
from .shard_redrive import ShardRedrive
from .status import DeadLetterCounts, read_status
from .status_view import render_status
from .terminal import Progress, capture_interrupt, table

__all__ = ["EXIT_INTERRUPTED", "list_dead_letters", "parse_before", "purge", "redrive", "status"]

EXIT_INTERRUPTED = 130
"""Ctrl-C stopped a re-drive or purge between two pages (128 + SIGINT, as shells report)."""
_CLEAR = "\x1b[H\x1b[2J"
_REFUSED = ("NOPERM", "no permissions", "can't run this command", "can't access")


@contextlib.contextmanager
def redis_errors(settings: Settings) -> Iterator[None]:
    url = f"{env_name('redis_url')}={redact(settings.redis_url)}"
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ConfigError(f"{url}: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailableError(f"{url}: {exc}") from None
    except redis.ResponseError as exc:
        if any(word in str(exc) for word in _REFUSED):
            raise ConfigError(
                f"{url}: Redis refused this user ({exc}); status and dead-letters are operator "
                f"commands: connect as {ADMIN_USER} (`lehnz-stitch acl` prints its rules)"
            ) from None
        if "WRONGTYPE" in str(exc):
            raise ConfigError(f"a stream setting names a key that is not a stream: {exc}") from None
        raise


def status(settings: Settings, *, as_json: bool, watch: float | None) -> int:
    client = connect(settings)
    with redis_errors(settings), capture_interrupt() as stop:
        counts = DeadLetterCounts(DeadLetters(client, settings))
        while True:
            reading = read_status(client, settings, counts)
            if as_json:
                text = msgspec.json.encode(reading).decode()
            else:
                text = render_status(reading, redact(settings.redis_url))
                if watch is not None and sys.stdout.isatty():
                    text = _CLEAR + text
            print(text, flush=True)
            if watch is None or stop.wait(watch):
                return 0


def parse_before(text: str) -> str:
    """An entry id (``1700000000000-0``, or milliseconds alone), or an ISO 8601 time (UTC
    unless it says otherwise), as the entry id every older dead letter is below."""
    if text.isdigit():
        return text + "-0"
    if is_entry_id(text):
        return text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an entry id (1700000000000-0) nor an ISO time "
            "(2026-01-31T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{int(moment.timestamp() * 1000)}-0"


LIST_COLUMNS = "{:<21}  {:<24}  {:<16}  {:<21}  {}"


def list_dead_letters(
    settings: Settings, *, code: str | None, tenant: str | None, as_json: bool, limit: int | None
) -> int:
    client = connect(settings)
    shown = 0
    with redis_errors(settings), contextlib.suppress(BrokenPipeError):  # `| head`
        for _, records in DeadLetters(client, settings).pages(code=code, tenant=tenant):
            for record in records[: None if limit is None else limit - shown]:
                if shown == 0 and not as_json:
                    print(LIST_COLUMNS.format("id", "error_code", "tenant", "source_id", "error"))
                print(json.dumps(record.as_dict()) if as_json else _list_line(record))
                shown += 1
            if limit is not None and shown >= limit:
                break
        sys.stdout.flush()
        if not as_json:
            print(f"{shown:,} dead letters" + _filters(code, tenant), file=sys.stderr)
        return 0
    # the reader went away: point stdout at /dev/null so the flush at exit does not fail
    # (as the Python docs advise for SIGPIPE)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _list_line(record: DeadLetterRecord) -> str:
    message = record.error.removeprefix(record.error_code + ": ")
    if record.payload is Payload.TRIMMED:
        message += " [no payload; source entry trimmed]"
    return LIST_COLUMNS.format(
        record.id, record.error_code or "-", record.tenant or "-", record.source_id, message
    )


def redrive(
    settings: Settings,
    *,
    code: str | None,
    tenant: str | None,
    dry_run: bool,
    base: Settings | None = None,
) -> int:
    """``base``: the unsharded settings, with STITCH_SHARDS > 1 (``settings`` are one
    shard's): each letter then goes to its tenant's shard (shard_redrive.py)."""
    client = connect(settings)
    tally: Counter[tuple[str, Outcome]] = Counter()
    elsewhere: Counter[str] = Counter()
    interrupted = False
    with redis_errors(settings), capture_interrupt() as stop:
        dead_letters = DeadLetters(client, settings)
        mover = _mover(settings, base, dry_run)
        total = int(command(client, "XLEN", settings.dead_stream))
        progress = Progress("dry run" if dry_run else "re-drive", total)
        done_word = "to re-drive" if dry_run else "re-driven"
        for scanned, records in dead_letters.pages(code=code, tenant=tenant):
            for target, part in _by_target(mover, records):
                outcomes = _redrive_part(dead_letters, mover, target, part, dry_run)
                tally.update((r.error_code, o) for r, o in zip(part, outcomes, strict=True))
                if mover is not None and target != mover.source:
                    elsewhere[mover.input_stream(target)] += outcomes.count(Outcome.REDRIVEN)
            progress.advance(scanned, f"{_redriven(tally):,} {done_word}")
            if stop.is_set():
                interrupted = True
                break
        progress.finish(f"{_redriven(tally):,} {done_word}")
    print(_redrive_summary(settings, tally, dry_run, code, tenant))
    for stream, n in sorted(elsewhere.items()):
        print(f"  {n:,} of them onto {stream}, their tenant's shard now")
    if interrupted:
        print("interrupted: what was re-driven stays so; run again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _mover(settings: Settings, base: Settings | None, dry_run: bool) -> ShardRedrive | None:
    """With STITCH_SHARDS > 1: the routing of letters, after finishing an interrupted run."""
    if base is None or base.shards == 1:
        return None
    mover = ShardRedrive.read(base, settings.shard_numbers[0])
    if not dry_run:
        finished = mover.finish_interrupted()
        if finished:
            print(f"finished {finished:,} re-drives an interrupted run left", file=sys.stderr)
    return mover


def _by_target(
    mover: ShardRedrive | None, records: list[DeadLetterRecord]
) -> list[tuple[int, list[DeadLetterRecord]]]:
    if mover is None:
        return [(0, records)] if records else []
    parts: dict[int, list[DeadLetterRecord]] = {}
    for record in records:
        parts.setdefault(mover.target(record), []).append(record)
    return sorted(parts.items())


def _redrive_part(
    dead_letters: DeadLetters,
    mover: ShardRedrive | None,
    target: int,
    records: list[DeadLetterRecord],
    dry_run: bool,
) -> list[Outcome]:
    if dry_run:
        return [r.expected() for r in records]
    if mover is None or target == mover.source:
        return [outcome for outcome, _ in dead_letters.redrive([r.id for r in records])]
    return mover.redrive(target, records)


def _redrive_summary(
    settings: Settings,
    tally: Counter[tuple[str, Outcome]],
    dry_run: bool,
    code: str | None,
    tenant: str | None,
) -> str:
    verb = "would re-drive" if dry_run else "re-drove"
    head = (
        f"{verb} {_redriven(tally):,} of {sum(tally.values()):,} matching dead letters"
        f"{_filters(code, tenant)} onto {settings.input_stream}"
    )
    if not tally:
        return head
    rows = [(c or "-", str(o), n) for (c, o), n in sorted(tally.items())]
    return head + "\n" + table(("error_code", "outcome", "entries"), rows)


def purge(settings: Settings, *, before: str, code: str | None, dry_run: bool) -> int:
    client = connect(settings)
    removed = 0
    with redis_errors(settings), capture_interrupt() as stop:
        dead_letters = DeadLetters(client, settings)
        # read first: also makes the worker's credentials fail here, before XTRIM, which
        # they hold for the commit script's MAXLEN
        total = int(command(client, "XLEN", settings.dead_stream))
        if code is None and not dry_run:
            removed = dead_letters.trim_before(before)
        else:
            for _, records in dead_letters.pages(code=code, before=before):
                ids = [r.id for r in records]
                removed += len(ids) if dry_run else dead_letters.delete(ids)
                if stop.is_set():
                    break
    verb = "would purge" if dry_run else "purged"
    print(
        f"{verb} {removed:,} of {total:,} dead letters, those older than {before}"
        + _filters(code, None)
    )
    return EXIT_INTERRUPTED if stop.is_set() else 0


def _redriven(tally: Counter[tuple[str, Outcome]]) -> int:
    return sum(n for (_, outcome), n in tally.items() if outcome is Outcome.REDRIVEN)


def _filters(code: str | None, tenant: str | None) -> str:
    parts = [f"{name} {value}" for name, value in (("code", code), ("tenant", tenant)) if value]
    return f" ({', '.join(parts)})" if parts else ""
