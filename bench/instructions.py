"""``python -m bench.instructions``: the worker's CPU instructions per event, under callgrind.

Seconds on a shared, noisy machine compare poorly between two runs; instruction counts do
not (callgrind counts the same for the same binary and inputs, whatever else the machine
does). This drains the same deterministic data set with ``python -m worker run --drain``
under ``valgrind --tool=callgrind`` for this checkout and, with ``--baseline DIR``, for
another checkout (its own ``.venv``), subtracts each one's start-up and shutdown (a drain of
an empty stream) and prints instructions per event side by side. The Redis side is not in
these counts: ``make bench`` reports Redis CPU per 1k events.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .datagen import DataSet, generate, load
from .redis_server import RedisServer
from .throughput import INPUT, reset, worker_env

ROOT = Path(__file__).resolve().parent.parent
TOTAL_RE = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def instructions(checkout: Path, url: str, out: Path) -> int:
    """Instructions of one ``run --drain`` of ``checkout``'s worker (callgrind total)."""
    python = checkout / ".venv" / "bin" / "python"
    env = worker_env(url, consumer="callgrind", batch_size=500, block_ms=10)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python),
           "-m", "worker", "run", "--drain"]  # fmt: skip
    subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True)
    match = TOTAL_RE.search(out.read_bytes())
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def per_event(checkout: Path, server: RedisServer, entries: list[dict[bytes, bytes]]) -> float:
    client = server.client()
    with tempfile.TemporaryDirectory(prefix="stitch-callgrind-") as tmp:
        reset(client)
        client.delete(INPUT)
        idle = instructions(checkout, server.url, Path(tmp) / "idle.out")
        load(client, INPUT, entries)
        reset(client)
        busy = instructions(checkout, server.url, Path(tmp) / "busy.out")
    return (busy - idle) / len(entries)


def compared(
    prog: str, description: str | None, argv: Sequence[str] | None
) -> tuple[DataSet, list[tuple[str, Path]]]:
    """The data set and the checkouts (baseline first) the command line asks to compare."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args(argv)
    checkouts = [("this checkout", ROOT)]
    if args.baseline is not None:
        checkouts.insert(0, ("baseline " + str(args.baseline), args.baseline.resolve()))
    return generate(args.events), checkouts


def main(argv: Sequence[str] | None = None) -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    data, checkouts = compared("python -m bench.instructions", __doc__, argv)
    results = []
    with RedisServer(cpu=None) as server:
        for label, checkout in checkouts:
            results.append((label, per_event(checkout, server, data.entries)))
    print(f"worker instructions per event (callgrind, {len(data):,} entries: {data.describe()})")
    for label, value in results:
        print(f"  {value:12,.0f}  {label}")
    if len(results) == 2:
        print(f"  ratio this/baseline: {results[1][1] / results[0][1]:.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
