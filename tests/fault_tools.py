"""Shared tools of the fault tests: polling, group state and worker logs.

The reference alias model they check against is tests/model.py, the one model every
property and fault test uses.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import redis

from tests.helpers import INPUT, OUTPUT

__all__ = [
    "GROUP",
    "PLACEHOLDER_IDS",
    "add_many",
    "alias_map",
    "assert_running",
    "consumers",
    "group_state",
    "has_cycle",
    "log_lines",
    "output_sources",
    "record_alias_writes",
    "stop_gracefully",
    "stopped_summary",
    "wait_for",
    "wait_group_done",
]

GROUP = "stitch"
PLACEHOLDER_IDS = frozenset({"null", "anonymous", "undefined"})
"""The only placeholder ids the generators use (all on the worker's default list)."""


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def add_many(
    client: redis.Redis, rows: Iterable[tuple[str, dict[str, Any]]], stream: str = INPUT
) -> list[str]:
    """XADD (tenant, payload) rows in one pipeline; returns their ids in order."""
    pipe = client.pipeline(transaction=False)
    for tenant, payload in rows:
        pipe.xadd(stream, {"tenant": tenant, "event": json.dumps(payload)})
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


def group_state(client: redis.Redis, stream: str = INPUT, group: str = GROUP) -> dict[str, Any]:
    """XINFO GROUPS of ``group`` as a str-keyed dict (lag, pending, consumers, ...)."""
    for row in client.xinfo_groups(stream):
        info = {(k.decode() if isinstance(k, bytes) else k): v for k, v in row.items()}
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return info
    raise AssertionError(f"group {group!r} does not exist on {stream!r}")


def wait_group_done(client: redis.Redis, timeout: float, stream: str = INPUT) -> None:
    """Wait until the group has delivered everything (lag 0) and acked everything (pending 0)."""

    def done() -> bool:
        try:
            state = group_state(client, stream)
        except AssertionError:
            return False
        return state["lag"] == 0 and state["pending"] == 0

    wait_for(done, timeout, "group lag 0 and pending 0", interval=0.05)


def consumers(client: redis.Redis, stream: str = INPUT, group: str = GROUP) -> dict[str, int]:
    """Consumer name -> pending count."""
    return {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
        for c in client.xinfo_consumers(stream, group)
    }


def output_sources(client: redis.Redis, stream: str = OUTPUT) -> Counter[str]:
    """How many times each source_id occurs in ``stream``."""
    return Counter(fields[b"source_id"].decode() for _, fields in client.xrange(stream))


def alias_map(client: redis.Redis, tenant: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(f"alias:{tenant}").items()}


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines a worker subprocess wrote (anything else is skipped)."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def stopped_summary(path: Path) -> dict[str, int]:
    """The totals of the worker's final ``stopped`` log line (fails if there is none)."""
    stopped = [line for line in log_lines(path) if line.get("event") == "stopped"]
    assert len(stopped) == 1, f"expected one 'stopped' line in {path}, got {len(stopped)}"
    return {k: v for k, v in stopped[0].items() if isinstance(v, int) and not isinstance(v, bool)}


def assert_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Fail at once, with the worker's last log lines, if its process has exited."""
    if proc.poll() is not None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
        raise AssertionError(f"worker pid {proc.pid} exited with {proc.returncode}:\n{tail}")


def stop_gracefully(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM once and wait; returns the exit code (fails if it does not exit in time)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"worker pid {proc.pid} still running {timeout:g}s after SIGTERM"
        ) from None


@contextlib.contextmanager
def record_alias_writes(
    connect: Callable[[], redis.Redis],
) -> Iterator[list[tuple[str, str, str]]]:
    """Every HSET on an ``alias:<tenant>`` hash that Redis executes (scripts included), seen
    through MONITOR, as (tenant, previous id, user id) in execution order; not on its
    ``alias:<tenant>:heights`` hash (tenants never contain ':').

    A black-box record of the links that were applied, whichever replica applied them.
    """
    writes: list[tuple[str, str, str]] = []
    token = f"stop-recording-{uuid.uuid4().hex}"
    listening = threading.Event()
    errors: list[BaseException] = []

    def record() -> None:
        client = connect()
        try:
            with client.monitor() as monitor:
                listening.set()
                for command in monitor.listen():
                    words = command["command"].split()
                    if token in words:
                        return
                    if (
                        len(words) >= 4
                        and words[0].upper() == "HSET"
                        and words[1].startswith("alias:")
                        and ":" not in words[1][6:]
                    ):
                        tenant = words[1].removeprefix("alias:")
                        pairs = words[2:]
                        writes.extend(
                            (tenant, pairs[i], pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)
                        )
        except BaseException as exc:
            errors.append(exc)
            listening.set()
        finally:
            client.close()

    thread = threading.Thread(target=record, name="monitor", daemon=True)
    thread.start()
    assert listening.wait(10), "MONITOR did not start"
    try:
        yield writes
    finally:
        stopper = connect()
        try:
            stopper.echo(token)
        finally:
            stopper.close()
        thread.join(30)
        assert not thread.is_alive(), "MONITOR recorder did not stop"
        assert not errors, errors


def has_cycle(links: dict[str, str]) -> bool:
    """True when following links from some id comes back to an id already on the path."""
    done: set[str] = set()
    for start in links:
        path: set[str] = set()
        node: str | None = start
        while node is not None and node not in done:
            if node in path:
                return True
            path.add(node)
            node = links.get(node)
        done.update(path)
    return False
