"""``export`` and ``import``: the alias map out as a join table, links in through the rules.

Results go to stdout (export's rows unless ``-o``; import's summary), progress and
reports to stderr. Exit codes as the other operator commands (worker/ops/commands.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from resolver.links import LinkRules

from ..config import Settings
from ..connection import connect
from ..errors import BadArgumentError
from ..explaining import check_tenant
from ..stream import command
from .commands import EXIT_INTERRUPTED, redis_errors
from .export_writers import open_writer
from .exporting import feed_position, pages
from .import_rows import BadRow, Format, Row, read_rows
from .importing import CHUNK, PIPELINE, Importer, Outcome, file_id, rows_of
from .terminal import Progress, capture_interrupt, table

__all__ = ["export_map", "import_links"]


def export_map(settings: Settings, *, tenant: str, fmt: str, output: str | None) -> int:
    check_tenant(settings, tenant)
    client = connect(settings)
    alias = settings.alias_prefix + tenant
    written = 0
    with redis_errors(settings), capture_interrupt() as stop:
        total = int(command(client, "HLEN", alias))
        after = feed_position(client, settings.changes_key)
        with _target(output) as target:
            meta = {"lehnz_stitch.tenant": tenant, "lehnz_stitch.feed_after": after}
            writer = open_writer(fmt, target.text, target.binary, meta)
            progress = Progress("export", total)
            for page in pages(client, settings, tenant):
                writer.write(page)
                written += len(page)
                progress.advance(len(page))
                if stop.is_set():
                    break
            else:
                writer.close()
                target.complete = True
            progress.finish()
    if not target.complete:
        print("interrupted: the output is incomplete (-o FILE: not written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(
        f"exported {written:,} links of {tenant}{' to ' + output if output else ''}; "
        f"the change feed {settings.changes_key} was at {after} before the scan: "
        f"follow it from after that id to keep the table current",
        file=sys.stderr,
    )
    return 0


class _Output:
    __slots__ = ("binary", "complete", "text")

    def __init__(self, fd: int) -> None:
        self.binary: IO[bytes] = open(fd, "wb", closefd=False)  # noqa: SIM115
        self.text: IO[str] = open(  # noqa: SIM115
            fd, "w", encoding="utf-8", errors="surrogateescape", newline="", closefd=False
        )
        self.complete = False
        """Set once every row is written: only then does ``-o FILE`` appear."""

    def close(self) -> None:
        self.text.close()
        self.binary.close()


@contextlib.contextmanager
def _target(output: str | None) -> Iterator[_Output]:
    """Stdout, or ``FILE.partial`` renamed to FILE once the export is complete (a killed or
    stopped export leaves no file that looks whole)."""
    if output is None:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
        target = _Output(fd)
        try:
            yield target
            target.close()
        except BrokenPipeError:  # `| head`: the reader went away
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            target.complete = True
        return
    partial = Path(output + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        target = _Output(fd)
        yield target
        target.close()
        if target.complete:
            os.replace(partial, output)
    finally:
        os.close(fd)
        partial.unlink(missing_ok=True)


def import_links(
    settings: Settings, *, tenant: str, path: str, fmt: str | None, dry_run: bool
) -> int:
    check_tenant(settings, tenant)
    file = Path(path)
    if not file.is_file():
        raise BadArgumentError(f"{path}: no such file")
    form = Format(fmt) if fmt else _guess(file)
    source, lines = file_id(file)
    client = connect(settings)
    tally: Counter[Outcome] = Counter()
    rules = LinkRules(settings.placeholders)
    started = time.monotonic()
    interrupted = False
    with (
        redis_errors(settings),
        capture_interrupt() as stop,
        file.open(encoding="utf-8", errors="surrogateescape", newline="") as stream,
    ):
        importer = Importer(client, settings, tenant, source, dry_run=dry_run)
        progress = Progress("dry run" if dry_run else "import", lines)
        done_line = 0
        try:
            importer.start(settings.max_chain_depth)
            rows = rows_of(read_rows(stream, form, settings.max_id_bytes), rules, tally)
            for batch, outcomes in importer.applying(_batches(rows, path), stop):
                for chunk in outcomes:
                    tally.update(chunk)
                line = batch[-1][-1].line
                progress.advance(line - done_line, f"{tally[Outcome.APPLIED]:,} applied")
                done_line = line
            interrupted = stop.is_set()
        finally:
            importer.close()
        progress.advance(max(lines - done_line, 0))
        progress.finish(f"{tally[Outcome.APPLIED]:,} applied")
    seconds = time.monotonic() - started
    rows_done = sum(tally.values())
    verb = "would import" if dry_run else "imported"
    print(
        f"{verb} {path} into {tenant}: {rows_done:,} rows, source ids import:{source}:<line>"
        + (
            "\n" + table(("outcome", "rows"), [(str(o), n) for o in Outcome if (n := tally[o])])
            if tally
            else ""
        )
    )
    print(
        f"{rows_done:,} rows in {seconds:.1f} s ({rows_done / max(seconds, 1e-9):,.0f} rows/s)",
        file=sys.stderr,
    )
    if interrupted:
        print(
            "interrupted: the rows read so far are in; run again to continue (the applied "
            "ones are noops then)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def _batches(rows: Iterator[Row | BadRow], path: str) -> Iterator[list[list[Row]]]:
    """PIPELINE chunks of CHUNK rows at a time; each bad row reported on stderr when met."""
    batch: list[list[Row]] = []
    chunk: list[Row] = []
    for row in rows:
        if isinstance(row, BadRow):
            print(f"{path}:{row.line}: {row.reason}", file=sys.stderr)
            continue
        chunk.append(row)
        if len(chunk) == CHUNK:
            batch.append(chunk)
            chunk = []
            if len(batch) == PIPELINE:
                yield batch
                batch = []
    if chunk:
        batch.append(chunk)
    if batch:
        yield batch


def _guess(file: Path) -> Format:
    return Format.JSONL if file.suffix in (".jsonl", ".ndjson", ".json") else Format.CSV
