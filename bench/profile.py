"""Where the worker spends its time: ``python -m bench.profile`` (needs py-spy in the venv).

Loads the bench data set into a private Redis, runs ``python -m worker run --drain``
(pinned to the worker CPU) under ``py-spy record --format raw`` and prints the top
functions by self time, and by inclusive time, over the samples taken inside
``Worker.loop`` (start-up and imports excluded). With ``--idle``, samples where the
worker waits on a socket are kept too, so the share spent waiting on Redis shows.
Native code (hiredis, msgspec) is charged to the Python frame that called it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .datagen import generate, load
from .redis_server import CPU_WORKER, RedisServer, pinned
from .report import Report
from .throughput import ROOT, output_span, reset, worker_env

__all__ = ["main", "self_times"]

LOOP_FRAME = "Worker.loop ("
RESULTS = Path(__file__).resolve().parent / "results"


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: one row per function, not per line."""
    return re.sub(r":\d+\)$", ")", frame)


def self_times(raw: str, within: str = LOOP_FRAME) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples per function, inclusive samples) of stacks through ``within``."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit() or within not in stack:
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="keep samples waiting on sockets")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--out", default="/tmp/stitch-profile.txt", help="raw py-spy output")
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    data = generate(args.events)
    with RedisServer() as server:
        client = server.client()
        load(client, "events", data.entries)
        reset(client)
        cmd = [pyspy, "record", "-r", str(args.rate), "--format", "raw", "-o", args.out]
        if args.idle:
            cmd.append("--idle")
        cmd += ["--", *pinned([sys.executable, "-m", "worker", "run", "--drain"], CPU_WORKER)]
        done = subprocess.run(
            cmd,
            env=worker_env(server.url, consumer="profile", block_ms=50, log_level="warning"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        span, after_first, emitted = output_span(client)
    if emitted == 0:
        print("the worker emitted nothing; its output:\n" + done.stderr[-3000:], file=sys.stderr)
        return 1
    total, own, inclusive = self_times(Path(args.out).read_text())
    rate = f"{after_first / span:,.0f} emitted/s" if span else "n/a"
    report = Report()
    report.line(
        f"{args.events:,} entries, {emitted:,} emitted, {rate} under py-spy "
        f"({args.rate} Hz{', idle samples kept' if args.idle else ''}); "
        f"{total:,} samples inside Worker.loop"
    )
    report.line(f"\ntop {args.top} by self time:")
    for rank, (frame, n) in enumerate(own.most_common(args.top), 1):
        report.line(f"{rank:3}. {n / total:6.1%}  {frame}")
    report.line("\ntop by inclusive time (frames on every sample left out):")
    shown = [(f, n) for f, n in inclusive.most_common() if n < total][: args.top + 5]
    for frame, n in shown:
        report.line(f"     {n / total:6.1%}  {frame}")
    report.line(f"\nraw stacks: {args.out}")
    report.save(RESULTS / ("profile-idle.txt" if args.idle else "profile.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
