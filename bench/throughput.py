"""Section A: lehnz-stitch vs a naive worker vs a pipelined copy loop, on the same stream.

Every contender is a subprocess (pinned to the worker CPU) reading group ``stitch`` of
stream ``events`` from 0 after :func:`reset`. Two clocks are reported:

* *span*: from the output stream's first to its last entry id (Redis server ms). Entries
  written in the first millisecond are not counted (their work started before the span),
  and the output count is scaled by input/output to count input entries (identifies are
  acked, not emitted). This excludes interpreter start-up for every contender alike.
* *wall*: the process's own clock: for the worker, subprocess wall time minus the median
  wall time of a no-op worker run on an empty stream; for naive/copy loop, their internal
  timer from the first read to the last ack.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .datagen import reset_group
from .redis_server import CPU_WORKER, RedisServer, pinned
from .sysstat import MachineCpu

__all__ = [
    "INPUT",
    "OUTPUT",
    "Run",
    "noop_startup",
    "reset",
    "run_contender",
    "run_workers",
    "worker_env",
]

ROOT = Path(__file__).resolve().parent.parent
INPUT, OUTPUT, DEAD, GROUP, ALIAS = "events", "events:enriched", "events:dead", "stitch", "alias:"
DRAIN_BLOCK_MS = 50
STALL_S = 15.0
"""A drain run that makes no progress this long, with entries still pending, is stuck."""


@dataclass
class Run:
    name: str
    events_in: int = 0
    emitted: int = 0
    dead: int = 0
    wall_s: float = 0.0
    """Processing time by the contender's own clock (see module doc)."""
    span_s: float = 0.0
    span_rate: float = 0.0
    """Input entries per second over the output-id span."""
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    replicas: int = 1
    other_cpu_s: float = 0.0
    """Machine CPU seconds spent on anything but this contender and Redis (noise)."""
    stale_retries: int = 0
    stale_batches: int = 0
    """Batches the worker gave up on after its stale-commit retries (left pending)."""
    stuck_pending: int = 0
    note: str = ""
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Redis INFO commandstats over the run: command -> (calls, usec); script-called
    commands are counted too (and inside EVALSHA's own usec)."""

    @property
    def wall_rate(self) -> float:
        return self.events_in / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def rate(self) -> float:
        """The headline rate: span when measurable, else wall."""
        return self.span_rate or self.wall_rate

    @property
    def redis_cpu_per_1k(self) -> float:
        return self.redis_cpu_s / self.events_in * 1000 if self.events_in else 0.0


def worker_env(url: str, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    env.update(
        {
            "STITCH_REDIS_URL": url,
            "STITCH_METRICS_PORT": "0",
            "STITCH_LOG_LEVEL": "info",
            "STITCH_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"STITCH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def reset(client: redis.Redis) -> None:
    reset_group(client, INPUT, GROUP, (ALIAS,), (OUTPUT, DEAD))


def _command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    info: Any = client.info("commandstats")
    out: dict[str, tuple[int, int]] = {}
    for key, stats in info.items():
        name = key.removeprefix("cmdstat_")
        if name in ("config|resetstat", "info", "xlen", "xpending", "ping"):
            continue
        out[name] = (int(stats["calls"]), int(stats["usec"]))
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _id_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def output_span(client: redis.Redis, stream: str = OUTPUT) -> tuple[float, int, int]:
    """(span seconds, entries after the first ms, total entries) of ``stream``."""
    total = int(client.xlen(stream))
    if total < 2:
        return 0.0, 0, total
    head: Any = client.xrange(stream, count=1)
    tail: Any = client.xrevrange(stream, count=1)
    first, last = _id_ms(head[0][0]), _id_ms(tail[0][0])
    same_ms: Any = client.xrange(stream, min=f"{first}-0", max=f"{first}-18446744073709551615")
    in_first_ms = len(same_ms)
    return (last - first) / 1000, total - in_first_ms, total


def _fill_span(run: Run, client: redis.Redis) -> None:
    span, after_first, total = output_span(client)
    run.span_s = span
    if span > 0 and total:
        run.span_rate = after_first * (run.events_in / total) / span


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _summary(path: Path) -> dict[str, int]:
    """The worker's own totals (``stopped`` log line) and its stale-commit log lines."""
    found: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        event = record.get("event")
        if event == "stopped":
            for key, value in record.items():
                if isinstance(value, int):
                    found[key] = found.get(key, 0) + value
        elif event == "commit found stale links, retrying":
            found["stale_retries"] = found.get("stale_retries", 0) + 1
        elif event == "batch left pending for reclaim":
            found["stale_batches"] = found.get("stale_batches", 0) + 1
    return found


def _progress(client: redis.Redis) -> tuple[int, int]:
    return int(client.xlen(OUTPUT)), int(client.xpending(INPUT, GROUP)["pending"])


def _wait_all(
    procs: list[subprocess.Popen[bytes]], client: redis.Redis, timeout_s: float, stall_s: float
) -> str:
    """Wait for every process; kill them all on timeout or when stuck. Returns an error."""
    started = time.monotonic()
    last, last_change = (-1, -1), time.monotonic()
    while any(p.poll() is None for p in procs):
        time.sleep(0.2)
        now = time.monotonic()
        state = _progress(client)
        if state != last:
            last, last_change = state, now
        error = ""
        if now - started > timeout_s:
            error = f"timed out after {timeout_s:.0f}s"
        elif state[1] > 0 and now - last_change > stall_s:
            error = (
                f"STUCK: no progress for {stall_s:.0f}s with {state[1]} entries pending (killed)"
            )
        if error:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            return error
    return ""


def run_workers(
    server: RedisServer,
    replicas: int = 1,
    *,
    cpu: int | None = CPU_WORKER,
    startup_s: float = 0.0,
    batch_size: int = 500,
    timeout_s: float = 300,
    stall_s: float = STALL_S,
    name: str = "lehnz-stitch",
    extra_env: dict[str, str] | None = None,
) -> Run:
    """``replicas`` copies of ``python -m worker run --drain`` on the reset stream, at once."""
    client = server.client()
    total_in = int(client.xlen(INPUT))
    run = Run(name, events_in=total_in, replicas=replicas)
    logdir = Path(tempfile.mkdtemp(prefix="stitch-bench-logs-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    client.config_resetstat()
    redis_cpu0, child_cpu0 = server.cpu_seconds(), _children_cpu()
    machine = MachineCpu().start()
    started = time.perf_counter()
    for n in range(replicas):
        log = logdir / f"worker-{n}.log"
        env = worker_env(
            server.url, consumer=f"bench-{n}", block_ms=DRAIN_BLOCK_MS, batch_size=batch_size
        )
        env.update(extra_env or {})
        with open(log, "wb") as handle:
            procs.append(
                subprocess.Popen(
                    pinned([sys.executable, "-m", "worker", "run", "--drain"], cpu),
                    env=env,
                    cwd=ROOT,
                    stdout=handle,
                    stderr=handle,
                )
            )
        logs.append(log)
    run.error = _wait_all(procs, client, timeout_s, stall_s)
    wall = time.perf_counter() - started
    for proc, log in zip(procs, logs, strict=True):
        if proc.returncode not in (0, -9) and not run.error:
            run.error = f"exit {proc.returncode}: {_tail(log)}"
        for key, value in _summary(log).items():
            run.summary[key] = run.summary.get(key, 0) + value
    run.wall_s = max(wall - startup_s, 1e-9)
    run.worker_cpu_s = _children_cpu() - child_cpu0
    run.redis_cpu_s = server.cpu_seconds() - redis_cpu0
    run.other_cpu_s = machine.other(run.worker_cpu_s + run.redis_cpu_s)
    run.commands = _command_stats(client)
    run.emitted = int(client.xlen(OUTPUT))
    run.dead = int(client.xlen(DEAD))
    run.stuck_pending = int(client.xpending(INPUT, GROUP)["pending"])
    run.events_in = total_in - run.stuck_pending
    run.stale_retries = run.summary.get("stale_retries", 0)
    run.stale_batches = run.summary.get("stale_batches", 0)
    if run.stuck_pending and not run.error:
        run.error = f"{run.stuck_pending} entries left pending"
    if run.stale_retries:
        run.note = f"{run.stale_retries} stale-commit retries, {run.stale_batches} batches given up"
    if run.error:
        run.error += f" [worker logs: {logdir}]"
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    _fill_span(run, client)
    return run


def noop_startup(server: RedisServer, repeats: int = 3, cpu: int | None = CPU_WORKER) -> float:
    """Median wall time of ``worker run --drain`` on an empty stream (start-up + shutdown)."""
    times = []
    for n in range(repeats):
        env = worker_env(
            server.url,
            input_stream=f"bench:empty:{n}",
            output_stream="bench:empty:out",
            consumer="noop",
            block_ms=DRAIN_BLOCK_MS,
        )
        started = time.perf_counter()
        subprocess.run(
            pinned([sys.executable, "-m", "worker", "run", "--drain"], cpu),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        times.append(time.perf_counter() - started)
    server.client().delete(*[f"bench:empty:{n}" for n in range(repeats)], "bench:empty:out")
    return sorted(times)[len(times) // 2]


def run_contender(
    server: RedisServer,
    module: str,
    name: str,
    args: list[str],
    *,
    cpu: int | None = CPU_WORKER,
    note: str = "",
    timeout_s: float = 300,
) -> Run:
    """``python -m bench.<module>`` on the reset stream; it prints one JSON result line."""
    client = server.client()
    run = Run(name, note=note)
    client.config_resetstat()
    redis_cpu0 = server.cpu_seconds()
    machine = MachineCpu().start()
    try:
        cmd = [sys.executable, "-m", module, "--url", server.url, *args]
        done = subprocess.run(
            pinned(cmd, cpu),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {timeout_s:.0f}s"
        return run
    run.redis_cpu_s = server.cpu_seconds() - redis_cpu0
    run.commands = _command_stats(client)
    if done.returncode != 0:
        run.error = f"exit {done.returncode}: {done.stderr.strip()[-600:]}"
        return run
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run.events_in = int(result["events"])
    run.emitted = int(result["emitted"])
    run.wall_s = float(result["seconds"])
    run.worker_cpu_s = float(result["cpu_seconds"])
    run.other_cpu_s = machine.other(run.worker_cpu_s + run.redis_cpu_s)
    _fill_span(run, client)
    return run
