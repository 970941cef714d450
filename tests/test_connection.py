"""Building the client from the settings (password file, TLS settings) and keeping the
password out of everything the worker prints."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.conftest import running_worker
from tests.redis_proc import WORKER_PASSWORD, RedisServer, free_port
from tests.test_cli import cli
from worker.acl import WORKER_USER
from worker.config import Settings
from worker.connection import PasswordFile, connect, redact
from worker.errors import ConfigError

SECRET = "s3cr:t@p/ss?#"
"""A password with every character that could end a URL's user part early."""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://stitch-worker@redis:6379/0", "redis://stitch-worker@redis:6379/0"),
        ("redis://stitch-worker:hunter2@redis:6379/0", "redis://stitch-worker:***@redis:6379/0"),
        ("rediss://:hunter2@redis:6380", "rediss://:***@redis:6380"),
        (f"redis://u:{SECRET}@redis:6379/0", "redis://u:***@redis:6379/0"),
        (f"redis://u:{quote(SECRET, safe='')}@h/0", "redis://u:***@h/0"),
        ("unix://u:hunter2@/run/redis.sock?db=1", "unix://u:***@/run/redis.sock?db=1"),
        (
            "unix:///run/redis.sock?password=hunter2&db=1",
            "unix:///run/redis.sock?password=***&db=1",
        ),
        ("redis://h:6379/0?db=2&Password=hunter2", "redis://h:6379/0?db=2&Password=***"),
    ],
)
def test_redact_hides_every_password(url: str, shown: str) -> None:
    """The password goes, in the user part or as a query option; the rest stays readable."""
    assert redact(url) == shown


def test_password_file_strips_the_trailing_newline(tmp_path: Path) -> None:
    """`kubectl create secret --from-file` keeps a trailing newline: it is not the password.
    Other whitespace is, and the user name comes from the URL."""
    path = tmp_path / "pw"
    path.write_text(" pass word \r\n")
    assert PasswordFile(str(path), "stitch-worker").get_credentials() == (
        "stitch-worker",
        " pass word ",
    )
    assert PasswordFile(str(path)).get_credentials() == (" pass word ",)


@pytest.mark.parametrize(
    "content", [None, "", "\n", b"\xff\xfe"], ids=["missing", "empty", "newline", "not-utf8"]
)
def test_unusable_password_file_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    """A missing, empty or undecodable file stops start-up naming the variable."""
    path = tmp_path / "pw"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    settings = Settings.from_env(
        {"STITCH_REDIS_URL": "redis://u@h/0", "STITCH_REDIS_PASSWORD_FILE": str(path)}
    )
    with pytest.raises(ConfigError, match=r"^STITCH_REDIS_PASSWORD_FILE: "):
        connect(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        (
            {"STITCH_REDIS_URL": "redis://u:pw@h/0", "STITCH_REDIS_PASSWORD_FILE": "/f"},
            "STITCH_REDIS_PASSWORD_FILE",
        ),
        (
            {"STITCH_REDIS_URL": "redis://h/0?password=pw", "STITCH_REDIS_PASSWORD_FILE": "/f"},
            "STITCH_REDIS_PASSWORD_FILE",
        ),
        (
            {"STITCH_REDIS_URL": "redis://h/0", "STITCH_REDIS_CA_FILE": "/ca.pem"},
            "STITCH_REDIS_CA_FILE",
        ),
        (
            {"STITCH_REDIS_URL": "rediss://h/0", "STITCH_REDIS_KEY_FILE": "/k.pem"},
            "STITCH_REDIS_KEY_FILE",
        ),
        ({"STITCH_REDIS_URL": "rediss://h/0?ssl_cert_reqs=none"}, "STITCH_REDIS_URL"),
        ({"STITCH_REDIS_URL": f"http://u:{SECRET}@h/0"}, "STITCH_REDIS_URL"),
        ({"STITCH_REDIS_URL": "redis://stitch-worker@h/0"}, "STITCH_REDIS_URL"),
    ],
    ids=[
        "password-twice",
        "query-password-twice",
        "ca-without-tls",
        "key-without-cert",
        "verification-off",
        "bad-scheme",
        "user-without-password",
    ],
)
def test_contradictory_connection_settings_are_refused(env: dict[str, str], variable: str) -> None:
    """Settings that would be ambiguous or silently ignored stop start-up, and the message
    never echoes the URL (it may hold a password)."""
    with pytest.raises(ConfigError, match=f"^{variable}: ") as caught:
        Settings.from_env(env)
    assert "pw" not in str(caught.value) and "s3cr" not in str(caught.value)


@pytest.mark.parametrize("variable", ["STITCH_REDIS_CA_FILE", "STITCH_REDIS_CERT_FILE"])
def test_unusable_tls_file_is_a_config_error(tmp_path: Path, variable: str) -> None:
    """A CA or certificate file that is missing or not PEM exits 2 naming the variable, instead
    of being retried as an outage."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for path in (tmp_path / "missing.pem", not_pem):
        result = cli(
            "resolve",
            "--tenant",
            "acme",
            "x",
            env={"STITCH_REDIS_URL": "rediss://127.0.0.1:1/0", variable: str(path)},
        )
        assert result.returncode == 2
        assert variable in result.stderr


@pytest.mark.redis_server
def test_logs_never_carry_the_password(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """With the password in the URL, the daemon's start-up line shows the URL redacted, and no
    line (nor stderr) holds the password, raw or URL-encoded."""
    log = tmp_path / "w.log"
    with running_worker(redis_server.url, "--drain", log_path=log, block_ms=50) as proc:
        assert proc.wait(timeout=60) == 0, log.read_text()
    text = log.read_text()
    assert f"redis://{WORKER_USER}:***@127.0.0.1:{redis_server.port}/0" in text
    assert WORKER_PASSWORD not in text
    assert quote(WORKER_PASSWORD, safe="") not in text


def test_error_messages_never_carry_the_password() -> None:
    """Redis unreachable (exit 3) and a bad URL (exit 2): the messages name the URL redacted."""
    url = f"redis://{WORKER_USER}:{quote(SECRET, safe='')}@127.0.0.1:{free_port()}/0"
    unreachable = cli("resolve", "--tenant", "acme", "x", env={"STITCH_REDIS_URL": url})
    assert unreachable.returncode == 3
    assert f"{WORKER_USER}:***@127.0.0.1" in unreachable.stderr
    bad = cli("run", env={"STITCH_REDIS_URL": url.replace("redis:", "http:")})
    assert bad.returncode == 2
    for result in (unreachable, bad):
        assert "s3cr" not in result.stdout + result.stderr
