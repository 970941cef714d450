"""What an operator sees: /metrics, /healthz, /readyz, JSON logs, and a real Prometheus scrape."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import running_worker
from tests.helpers import INPUT, OUTPUT, add, event, identify, make_worker
from tests.redis_proc import RedisServer, free_port, require_binary

pytestmark = pytest.mark.redis_server


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def sample(metrics_text: str, name: str) -> float | None:
    for line in metrics_text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextlib.contextmanager
def serving_worker(url: str, tmp_path: Path, port: int | None = None) -> Iterator[str]:
    """A worker subprocess with its HTTP port on loopback; yields the base URL once ready."""
    port = port or free_port()
    with running_worker(
        url, metrics_port=port, metrics_addr="127.0.0.1", block_ms=100, log_path=tmp_path / "w.log"
    ):
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: get(base + "/readyz")[0] == 200)
        yield base


def feed(client: redis.Redis, n: int) -> None:
    for i in range(n):
        add(client, "acme", event(f"anon-{i % 7}"))
    add(client, "acme", identify("real-1", "anon-1"))
    add(client, "acme", "{broken")


def test_metrics_and_probes_of_a_running_worker(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """/metrics counts what happened, /healthz and /readyz answer 200, unknown paths 404."""
    feed(real_redis, 30)
    with serving_worker(redis_server.url, tmp_path) as base:
        eventually(lambda: sample(get(base + "/metrics")[1], "stitch_events_emitted_total") == 30)
        text = get(base + "/metrics")[1]
        assert sample(text, "stitch_entries_read_total") == 32
        assert 'stitch_dead_letters_total{reason="event_not_json"} 1.0' in text
        assert 'stitch_identify_total{outcome="applied"} 1.0' in text
        assert sample(text, "stitch_group_lag") == 0
        assert sample(text, "stitch_group_pending") == 0
        assert sample(text, "stitch_last_commit_timestamp_seconds") > time.time() - 60  # type: ignore[operator]
        assert "_created" not in text
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/nope")[0] == 404


def test_readyz_fails_while_redis_is_down(tmp_path: Path) -> None:
    """Readiness follows the Redis connection; liveness stays up while reconnecting."""
    server = RedisServer().start()
    try:
        with serving_worker(server.url, tmp_path) as base:
            server.kill()
            eventually(lambda: get(base + "/readyz")[0] == 503)
            assert get(base + "/healthz")[0] == 200
            server.start()
            eventually(lambda: get(base + "/readyz")[0] == 200)
    finally:
        server.stop()


def test_null_lag_is_left_out_not_reported_as_zero(real_redis: redis.Redis) -> None:
    """When Redis reports lag as NULL (after XDEL) the lag gauge is absent, pending still shown."""
    from prometheus_client import generate_latest

    ids = [add(real_redis, "acme", event(f"u{i}")) for i in range(3)]
    worker = make_worker(real_redis)
    worker.startup()
    real_redis.xdel(INPUT, ids[-1])
    text = generate_latest(worker.metrics.registry).decode()
    assert worker.stream.group_stats().lag is None
    assert sample(text, "stitch_group_lag") is None
    assert sample(text, "stitch_group_pending") == 0


def test_promtool_accepts_the_real_metrics_output(real_redis: redis.Redis) -> None:
    """`promtool check metrics` finds no naming or format problems in what we expose."""
    from prometheus_client import generate_latest

    promtool = require_binary("promtool")
    feed(real_redis, 5)
    worker = make_worker(real_redis)
    worker.run(drain=True)
    text = generate_latest(worker.metrics.registry)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_logs_carry_the_consumer_and_end_with_a_summary(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """SIGTERM exits 0; every line is JSON with the consumer; the last line sums the run up."""
    feed(real_redis, 10)
    log = tmp_path / "w.log"
    with running_worker(redis_server.url, consumer="pod-7", block_ms=100, log_path=log) as proc:
        eventually(lambda: real_redis.xlen(OUTPUT) == 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(line["consumer"] == "pod-7" for line in lines)
    dead = next(line for line in lines if line["event"] == "dead-lettered")
    assert dead["entry_id"] and dead["error"].startswith("event_not_json")
    summary = lines[-1]
    assert summary["event"] == "stopped"
    assert summary["emitted"] == 10 and summary["read"] == 12
    assert not any("anon-" in json.dumps(line) for line in lines if line["level"] == "info")


def test_a_real_prometheus_scrapes_lag_and_emitted(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Prometheus itself scrapes the worker; its HTTP API returns the right values."""
    prometheus = require_binary("prometheus")
    feed(real_redis, 25)
    worker_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: stitch\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with running_worker(
            redis_server.url,
            metrics_port=worker_port,
            metrics_addr="127.0.0.1",
            block_ms=100,
            log_path=tmp_path / "w.log",
        ):
            eventually(lambda: real_redis.xlen(OUTPUT) == 25)

            def query(expr: str) -> float | None:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
                    {"query": expr}
                )
                status, body = get(url)
                result = json.loads(body)["data"]["result"] if status == 200 else []
                return float(result[0]["value"][1]) if result else None

            eventually(lambda: query("stitch_events_emitted_total") == 25, timeout=40)
            eventually(lambda: query("up{job='stitch'}") == 1, timeout=40)
            eventually(lambda: query("stitch_group_lag") == 0, timeout=40)
            eventually(lambda: query("stitch_group_pending") == 0, timeout=40)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
