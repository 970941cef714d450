"""The Redis client the daemon and the command line use."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings

__all__ = ["connect"]


def connect(settings: Settings) -> redis.Redis:
    """A RESP2 client whose socket timeout always exceeds BLOCK; retries are the worker's job."""
    return redis.Redis.from_url(
        settings.redis_url,
        protocol=2,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        client_name="lehnz-stitch",
    )
