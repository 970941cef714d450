"""The outage state machine: back off through Redis failures, log once, stop or give up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import backoff
from worker.backoff import Backoff
from worker.errors import RedisUnavailableError
from worker.outage import Outage, Reconnector


class Stop(threading.Event):
    """The stop event, recording each backoff wait instead of sleeping through it."""

    def __init__(self, on_wait: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self.on_wait = on_wait

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.on_wait is not None:
            self.on_wait()
        return self.is_set()


class Hooks:
    """OutageHooks that record every call; connect fails while ``connect_failures`` lasts."""

    def __init__(self, connect_failures: int = 0) -> None:
        self.calls: list[str] = []
        self.connect_failures = connect_failures
        self.down: list[Exception] = []
        self.backoffs: list[Backoff] = []
        self.outages: list[Outage] = []
        self.kinds: list[str] = []

    def connect(self) -> None:
        self.calls.append("connect")
        if self.connect_failures:
            self.connect_failures -= 1
            raise RedisConnectionError("still down")

    def went_down(self, exc: Exception) -> None:
        self.calls.append("went_down")
        self.down.append(exc)

    def failed(self, kind: str) -> None:
        self.kinds.append(kind)

    def reconnected(self) -> None:
        self.calls.append("reconnected")

    def recovered(self, outage: Outage) -> None:
        self.calls.append("recovered")
        self.backoffs.append(outage.backoff)
        self.outages.append(outage)

    def beat(self) -> None:
        self.calls.append("beat")


class Log:
    """Records warnings as (event, fields)."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


def failing(*errors: Exception, result: str = "done") -> Callable[[], str]:
    """An action that raises ``errors`` one per call, then returns ``result``."""
    pending: Iterator[Exception] = iter(errors)

    def action() -> str:
        error = next(pending, None)
        if error is not None:
            raise error
        return result

    return action


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond delays, in case a test's wait ever really sleeps."""
    monkeypatch.setattr(backoff, "BASE_S", 0.001)
    monkeypatch.setattr(backoff, "CAP_S", 0.004)


OUTAGES = {
    "connection lost": (RedisConnectionError("Connection refused"), "connection"),
    "timeout": (RedisTimeoutError("Timeout reading from socket"), "timeout"),
    "socket error": (OSError(104, "Connection reset by peer"), "connection"),
    "group lost with the data": (
        ResponseError("NOGROUP No such key 'events' or consumer group"),
        "nogroup",
    ),
}


@pytest.mark.parametrize(("error", "kind"), OUTAGES.values(), ids=list(OUTAGES))
def test_outage_then_recovery(error: Exception, kind: str) -> None:
    """Two failures then success: down once, reconnect after each wait, recovered once."""
    hooks, log, stop = Hooks(), Log(), Stop()
    reconnector = Reconnector(60, stop, hooks, log)
    assert reconnector.run(failing(error, error), when_stopped="stopped") == "done"
    assert hooks.calls == [
        "went_down",
        "beat",
        "connect",
        "reconnected",
        "beat",
        "connect",
        "reconnected",
        "recovered",
    ]
    assert hooks.down == [error]
    assert hooks.backoffs[0].attempts == 2
    assert log.warnings == [
        ("redis unavailable, reconnecting", {"error": str(error), "kind": kind})
    ]
    assert hooks.kinds == [kind, kind]
    assert len(stop.waits) == 2
    for n, delay in enumerate(stop.waits):
        assert delay is not None
        assert 0 <= delay <= 0.001 * 2**n


def test_no_outage_touches_no_hook() -> None:
    """An action that succeeds first time returns its result and calls no hook."""
    hooks, log, stop = Hooks(), Log(), Stop()
    assert Reconnector(60, stop, hooks, log).run(lambda: 7, when_stopped=0) == 7
    assert (hooks.calls, log.warnings, stop.waits) == ([], [], [])


def test_reconnected_only_after_a_connect_that_worked() -> None:
    """While connect itself fails, no reconnected(); the action is retried after each wait."""
    hooks, stop = Hooks(connect_failures=2), Stop()
    down = RedisConnectionError("down")
    result = Reconnector(60, stop, hooks, Log()).run(failing(down, down, down), when_stopped="")
    assert result == "done"
    assert hooks.calls == [
        "went_down",
        "beat",
        "connect",
        "beat",
        "connect",
        "beat",
        "connect",
        "reconnected",
        "recovered",
    ]
    assert hooks.backoffs[0].attempts == 3


def test_other_response_errors_propagate_at_once() -> None:
    """A ResponseError that says nothing about Redis's state is a bug or bad data, not an
    outage: raised unchanged."""
    hooks, log, stop = Hooks(), Log(), Stop()
    error = ResponseError("ERR wrong number of arguments for 'xadd' command")
    with pytest.raises(ResponseError) as raised:
        Reconnector(60, stop, hooks, log).run(failing(error), when_stopped="")
    assert raised.value is error
    assert (hooks.calls, log.warnings, stop.waits) == ([], [], [])


def test_other_errors_propagate_at_once() -> None:
    """Errors that are not Redis outages (a bug in the action) are not retried."""
    hooks, stop = Hooks(), Stop()
    with pytest.raises(KeyError):
        Reconnector(60, stop, hooks, Log()).run(failing(KeyError("x")), when_stopped="")
    assert hooks.calls == []


def test_stop_already_requested_returns_when_stopped() -> None:
    """Stop set when the outage starts: went_down once, no wait, ``when_stopped`` returned."""
    hooks, log, stop = Hooks(), Log(), Stop()
    stop.set()
    error = RedisConnectionError("down")
    assert Reconnector(60, stop, hooks, log).run(failing(error), when_stopped="stopped") == (
        "stopped"
    )
    assert hooks.calls == ["went_down"]
    assert hooks.down == [error]
    assert stop.waits == []
    assert log.warnings == [
        (
            "stopping during a redis outage; uncommitted entries stay pending",
            {"error": "down", "kind": "connection"},
        )
    ]


def test_stop_requested_during_the_outage_returns_when_stopped() -> None:
    """Stop set while backing off: the next failure returns ``when_stopped``, went_down once."""
    hooks, log, stop = Hooks(connect_failures=99), Log(), Stop()
    stop.on_wait = stop.set
    down = RedisConnectionError("down")
    result = Reconnector(60, stop, hooks, log).run(failing(down, down, down), when_stopped="s")
    assert result == "s"
    assert hooks.calls == ["went_down", "beat", "connect"]
    assert len(stop.waits) == 1
    assert [event for event, _ in log.warnings] == [
        "redis unavailable, reconnecting",
        "stopping during a redis outage; uncommitted entries stay pending",
    ]


def test_give_up_raises_naming_the_setting() -> None:
    """Past STITCH_RECONNECT_GIVE_UP_S the outage becomes RedisUnavailableError naming it."""
    hooks, stop = Hooks(), Stop()
    error = RedisConnectionError("Connection refused")
    with pytest.raises(RedisUnavailableError) as raised:
        Reconnector(0, stop, hooks, Log()).run(failing(error), when_stopped="")
    assert str(raised.value) == (
        "Redis unreachable for 0s (STITCH_RECONNECT_GIVE_UP_S=0): Connection refused"
    )
    assert hooks.calls == ["went_down"]
    assert stop.waits == []


def test_give_up_counts_from_the_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts continue until the give-up time since the outage began, then it raises."""
    now = [1000.0]
    monkeypatch.setattr(backoff, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def advance() -> None:
        now[0] += 4.0

    hooks, stop = Hooks(connect_failures=99), Stop(on_wait=advance)
    down = RedisConnectionError("down")
    with pytest.raises(RedisUnavailableError, match=r"unreachable for 12s .*=10\)"):
        Reconnector(10, stop, hooks, Log()).run(failing(*[down] * 10), when_stopped="")
    assert len(stop.waits) == 3


def test_real_event_waits_only_milliseconds() -> None:
    """With a real threading.Event and patched constants, an outage costs milliseconds."""
    hooks, stop = Hooks(), threading.Event()
    down = RedisConnectionError("down")
    started = time.monotonic()
    assert Reconnector(60, stop, hooks, Log()).run(failing(down, down, down), when_stopped="") == (
        "done"
    )
    assert time.monotonic() - started < 0.5
    assert hooks.calls.count("reconnected") == 3


def _refused(line: str) -> ResponseError:
    """The exception redis-py raises for an error reply ``line``."""
    from redis._parsers.base import BaseParser

    error: ResponseError = BaseParser.parse_error(line)
    return error


REFUSALS = {
    "oom": "OOM command not allowed when used memory > 'maxmemory'. script: x, on @user_script:1.",
    "readonly": "READONLY You can't write against a read only replica.",
    "loading": "LOADING Redis is loading the dataset in memory",
    "busy": "BUSY Redis is busy running a script. You can only call SCRIPT KILL.",
    "masterdown": "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is 'no'.",
    "noreplicas": "NOREPLICAS Not enough good replicas to write.",
    "tryagain": "TRYAGAIN Multiple keys request during rehashing of slot",
    "clusterdown": "CLUSTERDOWN The cluster is down",
    "moved": "MOVED 3999 127.0.0.1:6381",
    "ask": "ASK 3999 127.0.0.1:6381",
}


@pytest.mark.parametrize(("kind", "line"), REFUSALS.items(), ids=list(REFUSALS))
def test_a_refusing_redis_is_an_outage_that_never_gives_up(kind: str, line: str) -> None:
    """Redis's own state: backed off like a lost link (went_down once, one warning, each
    error counted by kind), but past STITCH_RECONNECT_GIVE_UP_S it is still waited out;
    the end is reported once, with the kind and the error that started it."""
    hooks, log, stop = Hooks(), Log(), Stop()
    error = _refused(line)
    result = Reconnector(0, stop, hooks, log).run(failing(*[error] * 5), when_stopped="")
    assert result == "done"
    assert hooks.calls.count("went_down") == 1
    assert hooks.calls.count("recovered") == 1
    assert hooks.kinds == [kind] * 5
    assert len(stop.waits) == 5
    assert log.warnings == [
        ("redis refusing commands, retrying", {"kind": kind, "error": str(error)})
    ]
    [outage] = hooks.outages
    assert (outage.kind, outage.error, outage.refusing) == (kind, str(error), True)


def test_connect_refused_while_redis_refuses_is_retried() -> None:
    """A Redis still loading answers the reconnect's PING with LOADING: counted, no new log
    line (same kind), retried until the PING works."""
    loading = _refused(REFUSALS["loading"])

    class LoadingHooks(Hooks):
        def connect(self) -> None:
            self.calls.append("connect")
            if self.connect_failures:
                self.connect_failures -= 1
                raise loading

    hooks, log = LoadingHooks(connect_failures=2), Log()
    action = failing(loading, loading, loading)
    assert Reconnector(0, Stop(), hooks, log).run(action, when_stopped="") == "done"
    assert hooks.kinds == ["loading"] * 5  # three steps, two PINGs
    assert hooks.calls.count("reconnected") == 1
    assert [event for event, _ in log.warnings] == ["redis refusing commands, retrying"]


def test_give_up_clock_runs_only_while_the_link_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """OOM for 40s then the link lost: the give-up time (10s) counts from the loss, and each
    change of kind is logged once."""
    now = [1000.0]
    monkeypatch.setattr(backoff, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def advance() -> None:
        now[0] += 4.0

    hooks, log, stop = Hooks(), Log(), Stop(on_wait=advance)
    oom, down = _refused(REFUSALS["oom"]), RedisConnectionError("down")
    with pytest.raises(RedisUnavailableError, match=r"unreachable for 12s "):
        Reconnector(10, stop, hooks, log).run(failing(*[oom] * 10, *[down] * 10), when_stopped="")
    assert len(stop.waits) == 10 + 3
    assert [event for event, _ in log.warnings] == [
        "redis refusing commands, retrying",
        "redis outage changed",
    ]
