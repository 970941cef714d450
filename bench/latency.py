"""Section B: end-to-end delay at a steady offered load, worker in normal (blocking) mode.

Three processes besides Redis: the worker (``python -m worker run``, pinned to the worker
CPU), a paced producer and an output reader (both pinned with Redis). Two delays:

* *id delay* (server clock, ms resolution): output entry id ms - ``source_id`` ms, for every
  emitted event; both ids are stamped by the Redis server, so no clock skew. Integer ms
  on both sides, so each value is within +-1 ms.
* *receive delay* (wall clock, us resolution): the producer puts ``time.time()`` into a
  field ``t`` just before sending its pipeline; the reader XREAD-BLOCKs the output and
  records its receive time - ``t``. Includes the producer's pipeline and the reader's own
  wake-up, so it is an upper bound of what a downstream consumer sees.

Subprocess roles: ``python -m bench.latency produce|read ...``.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis

from .datagen import generate
from .redis_server import CPU_REDIS, CPU_WORKER, RedisServer, pinned
from .sysstat import MachineCpu, proc_cpu
from .throughput import ROOT, worker_env

__all__ = ["LatencyResult", "main", "percentile", "run_latency", "run_redis_probe"]

INPUT, OUTPUT, DEAD, ALIAS = "lat:events", "lat:enriched", "lat:dead", "lat:alias:"
PRODUCER_SEED = 777
READER_IDLE_S = 2.0
TICK_S = 0.002
"""The producer sends what is due once per tick (20 entries per 2 ms at 10k/s)."""


@dataclass
class LatencyResult:
    rate: int
    seconds: float
    block_ms: int
    produced: int = 0
    produce_s: float = 0.0
    emitted: int = 0
    id_delays_ms: list[int] = field(default_factory=list)
    recv_delays_ms: list[float] = field(default_factory=list)
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    """Machine CPU seconds not spent by bench processes while the producer ran."""
    producer_cpu_s: float = 0.0
    """Total, including generating its data before pacing starts."""
    pacing_cpu_s: float = 0.0
    reader_cpu_s: float = 0.0
    producer_rtt_ms: list[float] = field(default_factory=list)
    """Round trip of each of the producer's XADD pipelines (Redis's own responsiveness)."""
    error: str = ""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --- subprocess roles ---------------------------------------------------------------------


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RawConnection:
    """A minimal RESP connection (socket + hiredis parser): the load generator and the
    reader must cost Redis's core as little CPU as possible, so no client library here."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def call(self, payload: bytes, replies: int) -> list[Any]:
        """Send ``payload`` (one or more packed commands) and read ``replies`` replies."""
        self.sock.sendall(payload)
        out: list[Any] = []
        while len(out) < replies:
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("redis closed the connection")
                self.reader.feed(data)
                continue
            if isinstance(reply, Exception):
                raise reply
            out.append(reply)
        return out


def produce(url: str, rate: int, seconds: float) -> dict[str, Any]:
    """XADD at ``rate``/s: every ms, the entries due so far, in one pipelined write."""
    conn = RawConnection(url)
    conn.call(_resp(b"PING"), 1)
    stream = INPUT.encode()
    heads = []
    for fields in generate(int(rate * seconds), seed=PRODUCER_SEED).entries:
        args = [b"XADD", stream, b"*"]
        for key, value in fields.items():
            args += [key, value]
        packed = _resp(*args, b"t", b"")
        # everything but the trailing empty 't' value, with the array length kept
        heads.append(packed[: -len(b"$0\r\n\r\n")])
    sent = 0
    rtts: list[float] = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    setup_cpu = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    while sent < len(heads):
        elapsed = time.perf_counter() - started
        due = min(len(heads), int(elapsed * rate) + 1)
        if due <= sent:
            time.sleep(TICK_S - elapsed % TICK_S)
            continue
        stamp = repr(time.time()).encode()
        tail = b"$%d\r\n%s\r\n" % (len(stamp), stamp)
        payload = b"".join(head + tail for head in heads[sent:due])
        before = time.perf_counter()
        conn.call(payload, due - sent)
        rtts.append((time.perf_counter() - before) * 1000)
        sent = due
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total_cpu = usage.ru_utime + usage.ru_stime
    return {
        "sent": sent,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": total_cpu,
        "pacing_cpu_seconds": total_cpu - setup_cpu,
        "rtt_ms": rtts,
    }


def read(url: str, out_path: str, max_s: float) -> dict[str, Any]:
    """XREAD BLOCK the output; delay = receive time - the producer's ``t`` field."""
    conn = RawConnection(url)
    conn.call(_resp(b"PING"), 1)
    print("ready", flush=True)
    delays: list[float] = []
    last_id = b"0-0"
    deadline = time.monotonic() + max_s
    last_seen = time.monotonic()
    stream = OUTPUT.encode()
    while time.monotonic() < deadline:
        [reply] = conn.call(
            _resp(b"XREAD", b"COUNT", b"1000", b"BLOCK", b"100", b"STREAMS", stream, last_id), 1
        )
        now = time.time()
        if not reply:
            if delays and time.monotonic() - last_seen > READER_IDLE_S:
                break
            continue
        last_seen = time.monotonic()
        for entry_id, fields in reply[0][1]:
            for i in range(0, len(fields) - 1, 2):
                if fields[i] == b"t":
                    delays.append((now - float(fields[i + 1])) * 1000)
                    break
            last_id = entry_id
    Path(out_path).write_text(json.dumps(delays))
    return {"received": len(delays)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.latency")
    parser.add_argument("role", choices=("produce", "read"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="/tmp/stitch-bench-recv.json")
    args = parser.parse_args(argv)
    if args.role == "produce":
        result = produce(args.url, args.rate, args.seconds)
    else:
        result = read(args.url, args.out, args.seconds + 30)
    print(json.dumps(result), flush=True)
    return 0


# --- orchestration ------------------------------------------------------------------------


def _wait_group(client: redis.Redis, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.exists(INPUT) and client.xinfo_groups(INPUT):
            return True
        time.sleep(0.05)
    return False


def _id_delays(client: redis.Redis) -> list[int]:
    delays: list[int] = []
    start = "-"
    while True:
        chunk: Any = client.xrange(OUTPUT, min=start, count=10_000)
        if not chunk:
            return delays
        for entry_id, fields in chunk:
            source = fields.get(b"source_id")
            if source is not None:
                delays.append(int(entry_id.split(b"-")[0]) - int(source.split(b"-")[0]))
        start = "(" + chunk[-1][0].decode()


def _drive(
    server: RedisServer, worker: subprocess.Popen[bytes], result: LatencyResult, recv_path: Path
) -> None:
    """Start the reader, run the paced producer to the end, wait for the reader."""
    seconds = result.seconds
    reader = subprocess.Popen(
        pinned(
            [
                sys.executable,
                "-m",
                "bench.latency",
                "read",
                "--url",
                server.url,
                "--seconds",
                str(seconds),
                "--out",
                str(recv_path),
            ],
            CPU_REDIS,
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        reader.stdout.readline()  # "ready"
        redis_cpu0 = server.cpu_seconds()
        cpu0, reader_cpu0 = proc_cpu(worker.pid), proc_cpu(reader.pid)
        machine = MachineCpu().start()
        if not _produce(server, result):
            return
        result.worker_cpu_s = proc_cpu(worker.pid) - cpu0
        result.redis_cpu_s = server.cpu_seconds() - redis_cpu0
        result.reader_cpu_s = proc_cpu(reader.pid) - reader_cpu0
        result.other_cpu_s = machine.other(
            result.worker_cpu_s + result.redis_cpu_s + result.reader_cpu_s + result.producer_cpu_s
        )
        deadline = time.monotonic() + seconds + 90
        while reader.poll() is None and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


def run_redis_probe(server: RedisServer, *, rate: int, seconds: float) -> LatencyResult:
    """The producer alone, nobody consuming: how responsive Redis itself is at this load."""
    result = LatencyResult(rate, seconds, 0)
    client = server.client()
    client.delete(INPUT)
    _produce(server, result)
    client.delete(INPUT)
    return result


def _produce(server: RedisServer, result: LatencyResult) -> bool:
    """Run the paced producer to the end and record what it reports; False if it failed."""
    seconds = result.seconds
    done = subprocess.run(
        pinned(
            [
                sys.executable,
                "-m",
                "bench.latency",
                "produce",
                "--url",
                server.url,
                "--rate",
                str(result.rate),
                "--seconds",
                str(seconds),
            ],
            CPU_REDIS,
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds * 5 + 60,
    )
    if done.returncode != 0:
        result.error = f"producer failed: {done.stderr.strip()[-600:]}"
        return False
    produced = json.loads(done.stdout.strip().splitlines()[-1])
    result.produced, result.produce_s = int(produced["sent"]), float(produced["seconds"])
    result.producer_cpu_s = float(produced["cpu_seconds"])
    result.pacing_cpu_s = float(produced["pacing_cpu_seconds"])
    result.producer_rtt_ms = sorted(float(v) for v in produced["rtt_ms"])
    return True


def run_latency(
    server: RedisServer,
    *,
    rate: int,
    seconds: float,
    block_ms: int,
    batch_size: int = 500,
    tmpdir: Path,
    copy_loop: bool = False,
) -> LatencyResult:
    """The worker under a paced load; with ``copy_loop``, the copy loop as the baseline."""
    result = LatencyResult(rate, seconds, block_ms)
    client = server.client()
    client.delete(INPUT, OUTPUT, DEAD, *client.scan_iter(match=ALIAS + "*"))
    env = worker_env(
        server.url,
        input_stream=INPUT,
        output_stream=OUTPUT,
        dead_stream=DEAD,
        alias_prefix=ALIAS,
        consumer="lat-1",
        block_ms=block_ms,
        batch_size=batch_size,
        log_level="warning",
    )
    command = [sys.executable, "-m", "worker", "run"]
    if copy_loop:
        command = [
            sys.executable,
            "-m",
            "bench.copyloop",
            "--url",
            server.url,
            "--stream",
            INPUT,
            "--output",
            OUTPUT,
            "--batch",
            str(batch_size),
            "--follow",
            str(block_ms),
        ]
    recv_path = tmpdir / "recv-delays.json"
    with open(tmpdir / "latency-worker.log", "wb") as log:
        worker = subprocess.Popen(
            pinned(command, CPU_WORKER), env=env, cwd=ROOT, stdout=log, stderr=log
        )
        try:
            if _wait_group(client):
                _drive(server, worker, result, recv_path)
            else:
                result.error = "worker did not create its group"
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    if worker.returncode not in (0, -signal.SIGTERM) and not result.error:
        tail = (tmpdir / "latency-worker.log").read_text(errors="replace").strip()
        result.error = f"worker exit {worker.returncode}: ...{tail[-600:]}"
    result.id_delays_ms = sorted(_id_delays(client))
    result.emitted = len(result.id_delays_ms)
    try:
        result.recv_delays_ms = sorted(json.loads(recv_path.read_text()))
    except (OSError, ValueError):
        result.recv_delays_ms = []
    client.delete(INPUT, OUTPUT, DEAD, *client.scan_iter(match=ALIAS + "*"))
    return result


if __name__ == "__main__":
    sys.exit(main())
