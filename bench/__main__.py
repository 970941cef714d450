"""``python -m bench``: every lehnz-stitch benchmark in one run, printed side by side.

Sections: A throughput vs a naive worker and a pipelined copy loop; B latency at a steady
offered load; C resolver costs; D cache memory; E replicas and Redis CPU; F sharded over a
Redis Cluster vs one Redis. Results are printed and written to bench/results/latest.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path

import redis
from redis.utils import HIREDIS_AVAILABLE

from .cluster import run_section_f
from .datagen import DataSet, generate, load
from .latency import percentile, run_latency, run_redis_probe
from .memory import CHUNK
from .redis_server import CPU_REDIS, CPU_WORKER, RedisServer, taskset_available, version
from .replicas import run_replicas
from .report import Report, check, fmt_int, fmt_rate, histogram
from .resolver_bench import run_resolver_bench
from .throughput import ROOT, Run, noop_startup, reset, run_contender, run_workers

RESULTS = Path(__file__).resolve().parent / "results" / "latest.txt"
TARGET_VS_NAIVE = 12.0
TARGET_VS_COPY = 1.0
TARGET_P99_MS = 5.0
TARGET_BYTES_PER_ID = 300
LATENCY_EDGES_MS = (1, 2, 3, 4, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class Options:
    events: int
    naive_events: int
    repeats: int
    batch_size: int
    latency_rate: int
    latency_seconds: float
    block_ms: int
    cache_cap: int
    memory_ids: int
    replicas: tuple[int, ...]
    sections: str
    quick: bool
    wait_replicas: int = 0
    """Replicas started beside the bench's Redis; section A's workers WAIT for them."""


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="input entries in the data set (default 200000; --quick 20000)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument(
        "--naive-events",
        type=int,
        default=None,
        help="subset the naive worker is timed on (default 20000; quick 3000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="throughput runs per contender, best reported (default 3; quick 1)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, help="STITCH_BATCH_SIZE and the copy loop's COUNT"
    )
    parser.add_argument("--latency-rate", type=int, default=10_000, help="offered events/s")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        help="producer duration (default 10; quick 3)",
    )
    parser.add_argument("--block-ms", type=int, default=10, help="STITCH_BLOCK_MS in section B")
    parser.add_argument("--cache-cap", type=int, default=200_000, help="AliasCache max_entries")
    parser.add_argument(
        "--memory-ids",
        type=int,
        default=None,
        help="distinct ids pushed through the cache (default 1M; quick 400k)",
    )
    parser.add_argument("--sections", default="ABCDEF", help="subset to run, e.g. AC")
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        help="start N replicas of the bench's Redis; section A runs STITCH_WAIT_REPLICAS=N",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: int | float | None, full: float, small: float) -> float:
        return float(value) if value is not None else (small if quick else full)

    events = int(pick(args.events, 200_000, 20_000))
    memory_ids = int(pick(args.memory_ids, 1_000_000, 400_000))
    memory_ids = max(CHUNK * 10, memory_ids - memory_ids % (CHUNK * 10))
    return Options(
        events=events,
        naive_events=min(events, int(pick(args.naive_events, 20_000, 3_000))),
        repeats=max(1, int(pick(args.repeats, 3, 1))),
        batch_size=args.batch_size,
        latency_rate=args.latency_rate,
        latency_seconds=pick(args.latency_seconds, 10.0, 3.0),
        block_ms=args.block_ms,
        cache_cap=args.cache_cap,
        memory_ids=memory_ids,
        replicas=(1, 2, 4),
        sections=args.sections.upper(),
        quick=quick,
        wait_replicas=args.wait_replicas,
    )


# --- header -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _hiredis() -> str:
    if importlib.util.find_spec("hiredis") is None:
        return "no"
    return (
        f"yes (hiredis {dist_version('hiredis')}, redis-py {dist_version('redis')}, "
        f"used by redis-py: {HIREDIS_AVAILABLE})"
    )


def _git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "worker", "resolver").splitlines()
    return f"{head}" + (
        f" + uncommitted changes in {len(dirty)} worker/resolver file(s)"
        if dirty
        else " (worker/resolver clean)"
    )


def header(report: Report, opts: Options) -> None:
    report.section("lehnz-stitch benchmark" + (" (--quick)" if opts.quick else ""))
    load1, load5, _ = os.getloadavg()
    pin = (
        f"redis-server on CPU {CPU_REDIS}, worker/contender on CPU {CPU_WORKER} (taskset)"
        if taskset_available()
        else "no pinning (taskset missing or < 2 CPUs)"
    )
    report.table(
        ("machine", ""),
        [
            ("nproc", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
            ("CPU", _cpu_model()),
            ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
            ("redis-server", version()),
            ("hiredis", _hiredis()),
            ("pinning", pin),
            ("load average", f"{load1:.2f} (1 min), {load5:.2f} (5 min) at start"),
            ("code", _git_state()),
            ("started", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ],
        align="ll",
    )


# --- sections ---------------------------------------------------------------------------


def _run_row(run: Run) -> list[object]:
    return [
        run.name,
        fmt_int(run.events_in),
        fmt_rate(run.span_rate),
        fmt_rate(run.wall_rate),
        f"{run.worker_cpu_s:.2f}",
        f"{run.worker_cpu_s / run.events_in * 1e6:.1f}" if run.events_in else "-",
        f"{run.redis_cpu_per_1k * 1000:.1f}" if run.events_in else "-",
        f"{1000 / run.redis_cpu_per_1k:,.0f}" if run.redis_cpu_per_1k else "-",
        f"{run.other_cpu_s:.1f}",
        "; ".join(x for x in (run.error, run.note) if x),
    ]


RUN_HEADERS = (
    "contender",
    "events",
    "ev/s span",
    "ev/s wall",
    "proc CPU s",
    "CPU us/ev",
    "Redis CPU ms/1k",
    "ev/s per Redis core",
    "other CPU s",
    "note",
)
RUN_LEGEND = (
    "proc CPU = the contender's own user+sys (all replicas); other CPU = machine "
    "CPU seconds spent on anything but the contender and Redis during the run "
    "(noise from other work on this shared machine)."
)


def section_a(report: Report, server: RedisServer, opts: Options, data: DataSet) -> float:
    report.section("A. Throughput (same stream for every contender; group reset to 0 between)")
    client = server.client()
    startup = noop_startup(server)
    report.line(
        f"worker no-op start-up + shutdown (python -m worker run --drain on an empty "
        f"stream, median of 3): {startup * 1000:.0f} ms"
    )
    workers: list[Run] = []
    copies: list[Run] = []
    for n in range(opts.repeats):
        reset(client)
        workers.append(
            run_workers(
                server,
                1,
                startup_s=startup,
                batch_size=opts.batch_size,
                name=f"(a) lehnz-stitch #{n + 1}",
                extra_env={"STITCH_WAIT_REPLICAS": str(opts.wait_replicas)},
            )
        )
        reset(client)
        copies.append(
            run_contender(
                server,
                "bench.copyloop",
                f"(c) copy loop #{n + 1}",
                ["--batch", str(opts.batch_size)],
            )
        )
    reset(client)
    same_worker = run_workers(
        server,
        1,
        cpu=CPU_REDIS,
        startup_s=startup,
        batch_size=opts.batch_size,
        name="(a) lehnz-stitch, CPU 0",
    )
    reset(client)
    same_copy = run_contender(
        server,
        "bench.copyloop",
        "(c) copy loop, CPU 0",
        ["--batch", str(opts.batch_size)],
        cpu=CPU_REDIS,
    )
    reset(client)
    naive = run_contender(
        server,
        "bench.naive",
        "(b) naive",
        ["--limit", str(opts.naive_events)],
        note=f"first {opts.naive_events:,} entries only",
    )
    reset(client)
    _check_output([*workers, same_worker], data)
    report.table(RUN_HEADERS, [_run_row(r) for r in (*workers, naive, *copies)])
    best_worker = max(workers, key=lambda r: r.rate if not r.error else 0)
    best_copy = max(copies, key=lambda r: r.rate if not r.error else 0)
    if best_worker.summary:
        keys = (
            "read",
            "emitted",
            "identify:applied",
            "identify:conflict",
            "identify:cycle",
            "identify:too_deep",
            "duplicates",
            "reconnects",
        )
        report.line(
            "worker's own totals (best run): "
            + ", ".join(f"{k}={best_worker.summary[k]:,}" for k in keys if k in best_worker.summary)
        )
    report.line()
    a, b, c = best_worker.rate, naive.rate, best_copy.rate
    a_med, c_med = _median_rate(workers), _median_rate(copies)

    def ratio(x: float, y: float, target: float, digits: int) -> tuple[str, str]:
        if not (x and y):
            return "-", "-"
        return f"{x / y:.{digits}f}x", check(x / y >= target)

    rows = []
    for name, (x, x_med), y, target, digits in (
        ("a/b  lehnz-stitch vs naive", (a, a_med), b, TARGET_VS_NAIVE, 1),
        ("a/c  lehnz-stitch vs copy loop", (a, a_med), None, TARGET_VS_COPY, 2),
    ):
        y_best, y_med = (y, y) if y is not None else (c, c_med)
        best, best_ok = ratio(x, y_best, target, digits)
        med, med_ok = ratio(x_med, y_med, target, digits)
        rows.append((name, best, best_ok, med, med_ok, f">= {target:g}x"))
    report.table(
        (
            f"ratio (span clock, {opts.repeats} runs each)",
            "best/best",
            "",
            "median/median",
            "",
            "target",
        ),
        rows,
        align="lrlrlr",
    )
    report.line(
        f"(a) {fmt_rate(a)}  (b) {fmt_rate(b)}  (c) {fmt_rate(c)}.  'span' = input entries/s "
        "between the output stream's first and last entry id (server clock, excludes "
        "interpreter start-up); 'wall' = worker subprocess time minus the no-op start-up, or "
        "the contender's own timer from first read to last ack. Naive runs on a subset "
        f"(first {opts.naive_events:,} of {len(data):,} entries): its per-event cost does not "
        "depend on the set size."
    )
    report.line(RUN_LEGEND)
    _command_table(report, [best_worker, naive, best_copy])
    report.line()
    report.line(
        f"pinning sensitivity (one run each, NOT used for the ratios): contender on "
        f"CPU {CPU_REDIS}, the same core as redis-server"
    )
    report.table(RUN_HEADERS, [_run_row(r) for r in (same_worker, same_copy)])
    if same_worker.rate and same_copy.rate:
        report.line(
            f"same-core a/c = {same_worker.rate / same_copy.rate:.2f}x; same core vs "
            f"split cores: worker {same_worker.rate / a:.2f}x, copy loop "
            f"{same_copy.rate / c:.2f}x (request/response ping-pong pays a cross-core "
            "wake-up per round trip when the two are split)"
            if a and c
            else ""
        )
    return startup


def _command_table(report: Report, runs: Sequence[Run]) -> None:
    """Redis time by command, per 1k input entries, from INFO commandstats."""
    runs = [r for r in runs if r.commands and r.events_in]
    if not runs:
        return
    names = sorted(
        {n for r in runs for n in r.commands},
        key=lambda n: -max(r.commands.get(n, (0, 0))[1] / r.events_in for r in runs),
    )
    rows = []
    for name in names:
        row: list[object] = [name]
        for run in runs:
            calls, usec = run.commands.get(name, (0, 0))
            row += [
                f"{calls / run.events_in * 1000:,.1f}" if calls else "-",
                f"{usec / run.events_in:,.1f}" if calls else "-",
            ]
        rows.append(row)
    headers: list[str] = ["Redis command"]
    for run in runs:
        short = run.name.split(" #")[0]
        headers += [f"{short} calls/1k", "ms/1k"]
    report.line()
    report.line(
        "where Redis spends its time (INFO commandstats; commands a script calls are "
        "counted on their own row AND inside evalsha's time):"
    )
    report.table(headers, rows)


def _check_output(runs: Sequence[Run], data: DataSet) -> None:
    """Flag worker runs whose output is not one entry per non-identify input entry."""
    expected = len(data) - data.n_identify
    for run in runs:
        if run.error or run.stuck_pending:
            continue
        if run.emitted != expected or run.dead:
            problem = f"OUTPUT MISMATCH: emitted {run.emitted:,}, expected {expected:,}"
            if run.dead:
                problem += f", {run.dead:,} dead-lettered"
            run.note = "; ".join(x for x in (problem, run.note) if x)


def _median_rate(runs: Sequence[Run]) -> float:
    rates = sorted(r.rate for r in runs if not r.error)
    return rates[len(rates) // 2] if rates else 0.0


def section_b(report: Report, server: RedisServer, opts: Options, tmpdir: Path) -> None:
    report.section(
        f"B. Latency at {opts.latency_rate:,} events/s offered for "
        f"{opts.latency_seconds:g} s (worker in normal mode, "
        f"STITCH_BLOCK_MS={opts.block_ms}), the copy loop as baseline"
    )
    runs = {
        name: run_latency(
            server,
            rate=opts.latency_rate,
            seconds=opts.latency_seconds,
            block_ms=opts.block_ms,
            batch_size=opts.batch_size,
            tmpdir=tmpdir,
            copy_loop=copy_loop,
        )
        for name, copy_loop in (("(a) lehnz-stitch", False), ("(c) copy loop", True))
    }
    for name, res in runs.items():
        if res.error:
            report.line(f"ERROR ({name}): {res.error}")
        achieved = res.produced / res.produce_s if res.produce_s else 0.0
        report.line(
            f"{name}: produced {res.produced:,} entries in {res.produce_s:.2f} s "
            f"({achieved:,.0f}/s achieved); emitted {res.emitted:,}; its CPU "
            f"{res.worker_cpu_s:.2f} s ({res.worker_cpu_s / max(res.produce_s, 1e-9):.0%}"
            f" of a core); Redis CPU {res.redis_cpu_s:.2f} s; producer pacing CPU "
            f"{res.pacing_cpu_s:.2f} s; reader CPU {res.reader_cpu_s:.2f} s; other "
            f"(non-bench) CPU on the machine meanwhile {res.other_cpu_s:.1f} s"
        )
    report.line(
        "producer: raw RESP pipeline of the entries due every 2 ms, pinned with Redis "
        f"(CPU {CPU_REDIS}) like the reader; worker or copy loop on CPU {CPU_WORKER}; "
        "the copy loop blocks for entries with the same BLOCK and batch size"
    )
    qs = (50, 90, 99, 99.9)
    rows: list[list[object]] = []
    for name, res in runs.items():
        for what, values, unit in (
            ("id delay", [float(v) for v in res.id_delays_ms], "{:.0f}"),
            ("receive delay", res.recv_delays_ms, "{:.2f}"),
        ):
            if values:
                rows.append(
                    [
                        name,
                        what,
                        f"{len(values):,}",
                        *(unit.format(percentile(values, q)) for q in qs),
                        unit.format(values[-1]),
                    ]
                )
    report.table(
        ("contender", "delay, ms", "n", "p50", "p90", "p99", "p99.9", "max"), rows, align="llrrrrrr"
    )
    report.line(
        "id delay: output id ms - source id ms (server clock, +-1 ms); receive delay: "
        "producer's wall clock t -> reader, including the producer's pipeline and the "
        "reader's wake-up (an upper bound)"
    )
    probe = run_redis_probe(server, rate=opts.latency_rate, seconds=opts.latency_seconds)
    rows = []
    for name, res in (*runs.items(), ("nobody consuming", probe)):
        rtt = res.producer_rtt_ms
        if rtt:
            slow = sum(1 for v in rtt if v > TARGET_P99_MS)
            rows.append(
                [
                    name,
                    f"{len(rtt):,}",
                    *(f"{percentile(rtt, q):.2f}" for q in qs),
                    f"{rtt[-1]:.2f}",
                    f"{slow:,}",
                ]
            )
    report.line()
    report.line(
        "Redis's own responsiveness: round trip of each producer XADD pipeline (~20 "
        "entries), during each run above and with nobody consuming"
    )
    report.table(
        ("while", "calls", "p50", "p90", "p99", "p99.9", "max", f"> {TARGET_P99_MS:g} ms"),
        rows,
        align="lrrrrrrr",
    )
    ours = runs["(a) lehnz-stitch"]
    ids = [float(v) for v in ours.id_delays_ms]
    if ids:
        p99 = percentile(ids, 99)
        base = runs["(c) copy loop"].id_delays_ms
        base_p99 = f"{percentile([float(v) for v in base], 99):.0f} ms" if base else "n/a"
        report.line(
            f"target p99 <= {TARGET_P99_MS:g} ms (id delay): p99 = {p99:.0f} ms -> "
            f"{check(p99 <= TARGET_P99_MS)} (copy loop p99 in the same run: {base_p99})"
        )
        report.line("lehnz-stitch id delay histogram:")
        for line in histogram(ids, LATENCY_EDGES_MS):
            report.line(line)


def section_c(report: Report, server: RedisServer) -> None:
    report.section("C. Resolver")
    bench = run_resolver_bench(server.client())
    report.line("(1) warm cache, per id (best of 3, pinned to the worker CPU):")
    report.table(
        ("path", "us/id", "note"),
        [(w.name, f"{w.us_per_id:.2f}", w.note) for w in bench.warm],
        align="lrl",
    )
    report.line()
    report.line("(2) cold resolution of one batch, chains of depth 1-8 (median of 5):")
    report.table(
        ("path", "ids", "tenants", "depths", "round trips", "HGET+HMGET calls", "wall ms", "note"),
        [
            (
                c.name,
                c.ids,
                c.tenants,
                c.depths,
                c.round_trips,
                c.commands,
                f"{c.wall_ms:.1f}",
                c.note,
            )
            for c in bench.cold
        ],
        align="lrrlrrrl",
    )


def section_d(report: Report, opts: Options) -> None:
    report.section(
        f"D. Memory: AliasCache(max_entries={opts.cache_cap:,}), "
        f"{opts.memory_ids:,} distinct 36-char UUID ids (msgspec-decoded)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory",
            "--cap",
            str(opts.cache_cap),
            "--ids",
            str(opts.memory_ids),
            "--every",
            str(100_000),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        report.line(f"ERROR: {done.stderr.strip()[-800:]}")
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    baseline, cap = int(result["baseline"]), int(result["cap"])
    mib = 2**20
    rows = []
    at_cap = None
    after_cap: list[int] = []
    for seen, rss, entries in result["samples"]:
        rows.append(
            (f"{seen:,}", f"{entries:,}", f"{rss / mib:.1f}", f"{(rss - baseline) / mib:+.1f}")
        )
        if entries >= cap and at_cap is None:
            at_cap = rss
        elif at_cap is not None:
            after_cap.append(rss)
    report.line(f"baseline RSS (interpreter + imports, empty cache): {baseline / mib:.1f} MiB")
    report.table(("ids seen", "cache entries", "RSS MiB", "vs baseline MiB"), rows)
    report.line(f"peak RSS (VmHWM) over the whole run: {int(result['peak']) / mib:.1f} MiB")
    if at_cap is not None:
        per_id = (at_cap - baseline) / cap
        growth = (max(after_cap) - at_cap) / mib if after_cap else 0.0
        verdict = check(per_id <= TARGET_BYTES_PER_ID)
        report.line(
            f"bytes per cached id = (RSS at cap - baseline) / cap = {per_id:.0f} B "
            f"(target <= {TARGET_BYTES_PER_ID} B -> {verdict})"
        )
        report.line(
            f"after the cap: max RSS - RSS at cap = {growth:+.1f} MiB -> "
            f"{'flat' if growth < 0.05 * (at_cap - baseline) / mib + 1 else 'GROWING'}"
        )
        report.line(
            "95% of ids stored as roots (id -> id, one string), 5% as links to another "
            "fresh id; 4 tenants."
        )


def section_e(
    report: Report, server: RedisServer, opts: Options, startup: float, data: DataSet
) -> None:
    report.section("E. Replicas on one Redis (drain mode, same data, replicas not pinned)")
    runs = run_replicas(
        server,
        opts.replicas,
        startup_s=startup,
        batch_size=opts.batch_size,
        stall_s=8.0 if opts.quick else 15.0,
    )
    _check_output(runs, data)
    report.table(RUN_HEADERS, [_run_row(r) for r in runs])
    report.line(RUN_LEGEND)
    for run in runs:
        if run.stuck_pending:
            report.line(
                f"{run.name}: did not drain: {run.stuck_pending:,} entries stayed "
                f"pending. The worker gave up {run.stale_batches} batch(es) after its "
                "stale-commit retries ('batch left pending for reclaim'); rates above "
                "count only what was acked."
            )
    base = runs[0].rate if runs and not runs[0].error else 0.0
    if base:
        report.line(
            "scaling vs 1 replica: "
            + ", ".join(f"{r.replicas}: {r.rate / base:.2f}x" for r in runs if r.rate)
        )
    report.line(
        f"NOTE: this machine has {os.cpu_count()} cores and Redis uses one of them: "
        "replicas flatten at the cores, not at Redis. 'ev/s per Redis core' "
        "(1000 / Redis CPU s per 1k) is what one Redis core could carry with enough "
        "worker cores."
    )


# --- orchestration ----------------------------------------------------------------------


@contextlib.contextmanager
def timed(report: Report, what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    load1 = os.getloadavg()[0]
    report.line(f"[{what}: {time.perf_counter() - started:.1f} s; load average now {load1:.2f}]")


def guarded(report: Report, name: str, action: Callable[[], object]) -> object:
    """Run a section; report a failure (the worker may be mid-edit) and go on."""
    try:
        return action()
    except (
        redis.RedisError,
        OSError,
        RuntimeError,
        ValueError,
        AssertionError,
        KeyError,
        ImportError,
        AttributeError,
        TypeError,
        subprocess.SubprocessError,
    ) as exc:
        report.line(f"section {name} FAILED: {type(exc).__name__}: {exc}")
        report.line(traceback.format_exc(limit=4).rstrip())
        return None


@contextlib.contextmanager
def replicas_of(server: RedisServer, count: int) -> Iterator[list[RedisServer]]:
    """``count`` redis-servers replicating ``server``, in sync before the block starts."""
    replicas = [RedisServer(cpu=None).start() for _ in range(count)]
    try:
        for replica in replicas:
            replica.client().replicaof("127.0.0.1", server.port)
        deadline = time.monotonic() + 30
        while server.client().info("replication")["connected_slaves"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas did not connect")
            time.sleep(0.05)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.perf_counter()
    report = Report()
    header(report, opts)
    tmpdir = Path(tempfile.mkdtemp(prefix="stitch-bench-"))
    with RedisServer(cpu=CPU_REDIS) as server, replicas_of(server, opts.wait_replicas):
        report.line(f"private redis-server on 127.0.0.1:{server.port} (no persistence)")
        if opts.wait_replicas:
            report.line(
                f"{opts.wait_replicas} replica(s) beside it; section A's workers run with "
                f"STITCH_WAIT_REPLICAS={opts.wait_replicas}"
            )
        data: DataSet | None = None
        if "A" in opts.sections or "E" in opts.sections:
            gen_start = time.perf_counter()
            data = generate(opts.events)
            gen_s = time.perf_counter() - gen_start
            load_start = time.perf_counter()
            load(server.client(), "events", data.entries)
            report.line(f"data set: {data.describe()}")
            report.line(
                f"generated in {gen_s:.1f} s, loaded with pipelined XADD (1000 per round "
                f"trip) in {time.perf_counter() - load_start:.1f} s"
            )
        startup = 0.0
        if "A" in opts.sections and data is not None:
            with timed(report, "section A"):
                got = guarded(report, "A", lambda: section_a(report, server, opts, data))
                startup = got if isinstance(got, float) else 0.0
        if "E" in opts.sections and data is not None:
            with timed(report, "section E"):
                guarded(report, "E", lambda: section_e(report, server, opts, startup, data))
        if data is not None:
            server.client().delete("events", "events:enriched", "events:dead")
        if "B" in opts.sections:
            with timed(report, "section B"):
                guarded(report, "B", lambda: section_b(report, server, opts, tmpdir))
        if "C" in opts.sections:
            with timed(report, "section C"):
                guarded(report, "C", lambda: section_c(report, server))
    shutil.rmtree(tmpdir, ignore_errors=True)
    if "D" in opts.sections:
        with timed(report, "section D"):
            guarded(report, "D", lambda: section_d(report, opts))
    if "F" in opts.sections:
        with timed(report, "section F"):
            guarded(report, "F", lambda: run_section_f(report, opts.events))
    report.line()
    copy = RESULTS.with_name(f"latest-{'quick' if opts.quick else 'full'}.txt")
    report.line(
        f"total bench time {time.perf_counter() - started:.0f} s; results written to "
        f"{RESULTS.relative_to(ROOT)} (and {copy.name})"
    )
    report.save(RESULTS)
    report.save(copy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
