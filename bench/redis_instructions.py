"""``python -m bench.redis_instructions``: Redis's CPU instructions per event, under callgrind.

The worker's own count is ``bench.instructions``; this one is the other side: a private
redis-server runs under ``valgrind --tool=callgrind``, the bench's deterministic data set is
loaded, the counters are zeroed, and ``python -m worker run --drain`` (not under valgrind)
drains it, so the total is the worker's commits and reads only. With ``--baseline DIR`` the
same is done for another checkout (its own ``.venv``), each on a fresh server. Also prints
the commands each checkout sent per 1k events (INFO commandstats).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from .datagen import DataSet, load
from .instructions import TOTAL_RE, compared
from .redis_server import free_port
from .throughput import INPUT, reset, worker_env

SKIPPED = ("config|resetstat", "info", "ping", "xlen")


def _started(port: int, out: Path) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server",
           "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--hz", "10"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(600):
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server under valgrind did not start")


def _calls(client: redis.Redis) -> dict[str, int]:
    info: Any = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
    return {name: n for name, n in calls.items() if name not in SKIPPED}


def measure(checkout: Path, data: DataSet) -> tuple[float, dict[str, int]]:
    """Redis instructions per event of one drain by ``checkout``'s worker, and its commands."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="stitch-redis-callgrind-") as tmp:
        out = Path(tmp) / "redis.out"
        proc, client = _started(port, out)
        try:
            load(client, INPUT, data.entries)
            reset(client)
            client.config_resetstat()
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
            env = worker_env(f"redis://127.0.0.1:{port}/0", consumer="cg", batch_size=500,
                             block_ms=10)  # fmt: skip
            python = checkout / ".venv" / "bin" / "python"
            subprocess.run([str(python), "-m", "worker", "run", "--drain"], cwd=checkout,
                           env=env, check=True, capture_output=True)  # fmt: skip
            calls = _calls(client)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
            match = TOTAL_RE.search(Path(f"{out}.1").read_bytes())
            client.shutdown(nosave=True)
        finally:
            proc.kill()
            proc.wait()
        if match is None:
            raise RuntimeError(f"no instruction total in {out}.1")
    return int(match.group(1)) / len(data), calls


def main(argv: Sequence[str] | None = None) -> int:
    if shutil.which("valgrind") is None or shutil.which("redis-server") is None:
        print("valgrind and redis-server must be on PATH", file=sys.stderr)
        return 2
    data, checkouts = compared("python -m bench.redis_instructions", __doc__, argv)
    results = [(label, *measure(checkout, data)) for label, checkout in checkouts]
    print(f"Redis instructions per event (callgrind, {len(data):,} entries: {data.describe()})")
    for label, value, _ in results:
        print(f"  {value:12,.0f}  {label}")
    if len(results) == 2:
        print(f"  ratio this/baseline: {results[1][1] / results[0][1]:.3f}")
    names = sorted({name for _, _, calls in results for name in calls})
    print("commands per 1k events: " + " | ".join(label for label, _, _ in results))
    for name in names:
        per_k = [f"{calls.get(name, 0) * 1000 / len(data):8.1f}" for _, _, calls in results]
        print(f"  {name:12} {' '.join(per_k)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
