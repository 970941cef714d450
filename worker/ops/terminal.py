"""Plain-text output for the operator commands: aligned tables, a progress line on stderr,
and Ctrl-C as a request to stop between steps (no new dependency: no colours, no widgets)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TextIO

__all__ = ["Progress", "ago", "capture_interrupt", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Columns padded to their widest cell; numbers right-aligned, everything else left."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(headers, *cells, strict=True)]
    numeric = [all(isinstance(row[k], int | float) for row in rows) for k in range(len(headers))]
    lines = []
    for row in [list(headers), *cells]:
        padded = (
            c.rjust(w) if num and rows else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        )
        lines.append(indent + "  ".join(padded).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def ago(seconds: float | None) -> str:
    """``4.2 s ago``, ``3 min ago``, ``2.5 h ago``, ``3.1 d ago``."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86_400), ("h", 3_600)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    if seconds >= 60:
        return f"{seconds // 60:.0f} min ago"
    return f"{max(seconds, 0.0):.1f} s ago"


class Progress:
    """One line on stderr: rewritten in place on a terminal, else printed at most every
    ``every_s`` seconds (and once at the end) so that a log file stays readable."""

    __slots__ = ("_done", "_last", "_out", "_shown", "every_s", "label", "total")

    def __init__(
        self, label: str, total: int, out: TextIO | None = None, every_s: float = 5.0
    ) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self._out = out if out is not None else sys.stderr
        self._done = 0
        self._last = 0.0
        self._shown = ""

    def advance(self, scanned: int, note: str = "") -> None:
        self._done += scanned
        now = time.monotonic()
        line = self._line(note)
        if self._out.isatty():
            self._out.write("\r" + line + "\x1b[K")
        elif now - self._last >= self.every_s:
            self._out.write(line + "\n")
        else:
            return
        self._last, self._shown = now, line
        self._out.flush()

    def finish(self, note: str = "") -> None:
        """The final line, unless it is already the last one shown."""
        line = self._line(note)
        if self._out.isatty():
            self._out.write("\r" + line + "\x1b[K\n")
        elif line != self._shown:
            self._out.write(line + "\n")
        self._out.flush()

    def _line(self, note: str) -> str:
        share = f" ({100 * self._done // self.total}%)" if self.total else ""
        done = f"{self._done:,}/{self.total:,}{share}"
        return f"{self.label}: {done}" + (f", {note}" if note else "")


@contextlib.contextmanager
def capture_interrupt() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event the command checks between steps (a page, a
    refresh), so a step is never cut in half; the previous handlers come back after."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
