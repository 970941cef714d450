"""Plain-text tables: printed as they are produced and kept for bench/results/latest.txt."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Report", "check", "fmt_int", "fmt_rate", "histogram"]


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s" if value else "-"


def check(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def histogram(
    values: Sequence[float], edges: Sequence[float], width: int = 40, unit: str = "ms"
) -> list[str]:
    """One line per bucket ``[edge_i, edge_i+1)`` plus an overflow bucket."""
    counts = [0] * (len(edges) + 1)
    for value in values:
        for i, edge in enumerate(edges):
            if value < edge:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
    total = max(len(values), 1)
    peak = max(*counts, 1)
    labels = []
    lower = 0.0
    for edge in edges:
        labels.append(f"[{lower:g}, {edge:g}) {unit}")
        lower = edge
    labels.append(f">= {lower:g} {unit}")
    pad = max(len(label) for label in labels)
    return [
        f"  {label:<{pad}} {count:>9,} {count / total:6.1%} {'#' * round(width * count / peak)}"
        for label, count in zip(labels, counts, strict=True)
    ]


class Report:
    """Collects every printed line; ``save`` writes them out."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        for part in text.split("\n"):
            self.lines.append(part)
            print(part, file=sys.stdout, flush=True)

    def section(self, title: str) -> None:
        self.line()
        self.line(title)
        self.line("=" * len(title))

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
    ) -> None:
        """``align``: one char per column, ``l`` or ``r`` (default: first l, rest r)."""
        cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        align = align or "l" + "r" * (len(headers) - 1)

        def render(row: list[str]) -> str:
            return "  ".join(
                cell.ljust(w) if a == "l" else cell.rjust(w)
                for cell, w, a in zip(row, widths, align, strict=True)
            ).rstrip()

        self.line(render(cells[0]))
        self.line("  ".join("-" * w for w in widths))
        for row in cells[1:]:
            self.line(render(row))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
