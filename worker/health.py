"""One HTTP port for Prometheus and the probes: /metrics, /healthz, /readyz."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics

__all__ = ["Health", "HealthServer"]


class Health:
    """What the loop reports about itself; read by the probe handlers from another thread."""

    __slots__ = ("connected", "group_ready", "in_outage", "progress_at", "stall_after_s")

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.progress_at = time.monotonic()
        self.connected = False
        self.group_ready = False
        self.in_outage = False
        """From an outage's first error to the step that worked: a reconnect alone (PING
        answered by a Redis that still refuses writes) does not make the worker ready."""

    def beat(self) -> None:
        self.progress_at = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.progress_at < self.stall_after_s

    @property
    def ready(self) -> bool:
        return self.connected and self.group_ready and not self.in_outage


class HealthServer:
    def __init__(self, addr: str, port: int, metrics: Metrics, health: Health) -> None:
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((addr, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._probe(health.live, "loop stalled")
            elif path == "/readyz":
                self._probe(
                    health.ready, "Redis unreachable or refusing commands, or group missing"
                )
            else:
                self._send(404, b"not found\n", "text/plain")

        def _probe(self, ok: bool, why: str) -> None:
            self._send(200 if ok else 503, b"ok\n" if ok else why.encode() + b"\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would drown the worker's own logs."""

    return Handler
