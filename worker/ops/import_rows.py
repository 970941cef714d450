"""The rows of an import file: ``previous_user_id,user_id[,timestamp]`` as CSV or JSON lines.

CSV: a first row naming ``previous_user_id`` and ``user_id`` is a header (columns found by
name, ``timestamp`` or ``applied_at`` for the time, any other column ignored, so an export
loads back); without one, two or three columns in that order. JSON lines: one object per
line with those keys. Blank lines are skipped. The timestamp is milliseconds since the epoch
or an ISO 8601 time (UTC unless it names a zone); it becomes the link's ``applied_at``.
A row that cannot be used is a :class:`BadRow` naming its line and why, never an exception.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any, NamedTuple

import msgspec

__all__ = ["BadRow", "Format", "Row", "parse_timestamp", "read_rows"]

TIME_COLUMNS = ("timestamp", "applied_at")


class Format(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class Row(NamedTuple):
    line: int
    previous_user_id: str
    user_id: str
    applied_at_ms: int | None


class BadRow(NamedTuple):
    line: int
    reason: str


def parse_timestamp(value: object) -> int | None:
    """Milliseconds since the epoch; raises ValueError naming what is wrong."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        ms = int(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"timestamp {value!r} is neither milliseconds since the epoch nor ISO 8601"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    else:
        raise ValueError(f"timestamp {value!r} is neither a number nor a string")
    if not 0 <= ms < 2**53:
        raise ValueError(f"timestamp {value!r} is out of range")
    return ms


def _row(line: int, prev: object, user: object, at: object, max_id_bytes: int) -> Row | BadRow:
    ids = []
    for name, value in (("previous_user_id", prev), ("user_id", user)):
        if not isinstance(value, str):
            return BadRow(line, f"{name} is missing or not a string")
        if not value:
            return BadRow(line, f"{name} is empty")
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            return BadRow(line, f"{name} is not UTF-8")
        if size > max_id_bytes:
            return BadRow(line, f"{name} is {size} bytes, more than {max_id_bytes}")
        ids.append(value)
    try:
        ms = parse_timestamp(at)
    except ValueError as exc:
        return BadRow(line, str(exc))
    return Row(line, ids[0], ids[1], ms)


def read_rows(stream: IO[str], fmt: Format, max_id_bytes: int) -> Iterator[Row | BadRow]:
    """The file's rows in order; ``stream`` opened with ``errors="surrogateescape"`` so that
    a line that is not UTF-8 is one bad row, not the end of the import."""
    if fmt is Format.JSONL:
        yield from _jsonl(stream, max_id_bytes)
    else:
        yield from _csv(stream, max_id_bytes)


def _jsonl(stream: IO[str], max_id_bytes: int) -> Iterator[Row | BadRow]:
    decode = msgspec.json.Decoder().decode
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj: Any = decode(text.encode("utf-8", "surrogateescape"))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            yield BadRow(line, f"not JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield BadRow(line, "not a JSON object")
            continue
        at = next((obj[k] for k in TIME_COLUMNS if k in obj), None)
        yield _row(line, obj.get("previous_user_id"), obj.get("user_id"), at, max_id_bytes)


def _csv(stream: IO[str], max_id_bytes: int) -> Iterator[Row | BadRow]:
    reader = csv.reader(stream)
    columns: tuple[int, int, int | None] | None = None
    while True:
        line = reader.line_num + 1  # where the record starts
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadRow(line, f"not CSV: {exc}")
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if columns is None:
            columns = _header(cells)
            if columns is not None:
                continue
            columns = (0, 1, 2)
        prev_at, user_at, time_at = columns
        if columns == (0, 1, 2) and len(cells) not in (2, 3):
            yield BadRow(line, f"{len(cells)} columns, not previous_user_id,user_id[,timestamp]")
            continue
        if len(cells) <= max(prev_at, user_at):
            yield BadRow(line, f"{len(cells)} columns, fewer than the header names")
            continue
        at = cells[time_at] if time_at is not None and time_at < len(cells) else None
        yield _row(line, cells[prev_at], cells[user_at], at, max_id_bytes)


def _header(cells: list[str]) -> tuple[int, int, int | None] | None:
    names = [c.strip() for c in cells]
    if "previous_user_id" not in names or "user_id" not in names:
        return None
    time_at = next((names.index(k) for k in TIME_COLUMNS if k in names), None)
    return names.index("previous_user_id"), names.index("user_id"), time_at
