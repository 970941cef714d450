"""Writers of the export's rows: CSV, JSON lines, Parquet (pyarrow, the ``export`` extra).

Each takes pages and writes them as they come; Parquet buffers at most one row group.
"""

from __future__ import annotations

import csv
from typing import IO, Any, Protocol

import msgspec

from ..errors import BadArgumentError
from .exporting import COLUMNS, ExportRow, iso_ms

__all__ = ["FORMATS", "ROW_GROUP", "Writer", "open_writer"]

FORMATS = ("csv", "jsonl", "parquet")
ROW_GROUP = 100_000
"""Rows per Parquet row group: ~10 MB of ids in memory, large enough for readers to skip
well (Parquet's guidance is 128 MB-1 GB groups; this keeps the exporter small)."""


class Writer(Protocol):
    def write(self, rows: list[ExportRow]) -> None: ...

    def close(self) -> None: ...


class CsvWriter:
    """``applied_at`` as ISO 8601 in UTC with milliseconds; empty cells for no provenance.
    Ids that are not UTF-8 (written by another program) go out as their original bytes."""

    __slots__ = ("_out", "_writer")

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(COLUMNS)

    def write(self, rows: list[ExportRow]) -> None:
        self._writer.writerows(
            (
                r.previous_user_id,
                r.user_id,
                r.root,
                r.source_id or "",
                iso_ms(r.applied_at_ms) or "",
            )
            for r in rows
        )

    def close(self) -> None:
        self._out.flush()


class JsonlWriter:
    """One object per link with the five keys; null for no provenance."""

    __slots__ = ("_encode", "_out")

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._encode = msgspec.json.Encoder().encode

    def write(self, rows: list[ExportRow]) -> None:
        lines = [
            self._encode(
                {
                    "previous_user_id": _utf8(r.previous_user_id),
                    "user_id": _utf8(r.user_id),
                    "root": _utf8(r.root),
                    "source_id": r.source_id,
                    "applied_at": iso_ms(r.applied_at_ms),
                }
            ).decode()
            for r in rows
        ]
        self._out.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self._out.flush()


def _utf8(uid: str) -> str:
    """JSON and Parquet strings are UTF-8: a byte that is not shows as U+FFFD."""
    return uid.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class ParquetWriter:
    """Strings, and ``applied_at`` as ``timestamp[ms, UTC]``; the feed position in the
    file's key-value metadata (``lehnz_stitch.feed_after``). Each page becomes Arrow columns
    at once (about 60 bytes a row, not a Python tuple's 300), written out per row group."""

    __slots__ = ("_batches", "_buffered", "_pa", "_schema", "_writer")

    def __init__(self, out: IO[bytes], metadata: dict[str, str]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BadArgumentError(
                "--format parquet needs pyarrow: pip install 'lehnz-stitch[export]'"
            ) from None
        self._pa: Any = pa
        string = pa.string()
        self._schema = pa.schema(
            [
                ("previous_user_id", string),
                ("user_id", string),
                ("root", string),
                ("source_id", string),
                ("applied_at", pa.timestamp("ms", tz="UTC")),
            ],
            metadata=metadata,
        )
        self._writer: Any = pq.ParquetWriter(out, self._schema)
        self._batches: list[Any] = []
        self._buffered = 0

    def write(self, rows: list[ExportRow]) -> None:
        columns = (
            [_utf8(r.previous_user_id) for r in rows],
            [_utf8(r.user_id) for r in rows],
            [_utf8(r.root) for r in rows],
            [r.source_id for r in rows],
            [r.applied_at_ms for r in rows],
        )
        arrays = [
            self._pa.array(c, type=f.type) for c, f in zip(columns, self._schema, strict=True)
        ]
        self._batches.append(self._pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self._buffered += len(rows)
        if self._buffered >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        table = self._pa.Table.from_batches(self._batches, schema=self._schema)
        self._writer.write_table(table, row_group_size=table.num_rows)  # one row group
        self._batches, self._buffered = [], 0

    def close(self) -> None:
        if self._batches:
            self._flush()
        self._writer.close()


def open_writer(fmt: str, text: IO[str], binary: IO[bytes], metadata: dict[str, str]) -> Writer:
    if fmt == "parquet":
        return ParquetWriter(binary, metadata)
    if fmt == "jsonl":
        return JsonlWriter(text)
    return CsvWriter(text)
