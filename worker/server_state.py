"""What kind of Redis trouble an error is: a lost link, or a live Redis refusing commands.

Both are outages to the worker (back off, keep every entry pending, recover by itself), but
they end differently: a lost link gives up after ``STITCH_RECONNECT_GIVE_UP_S`` (a Redis that
never comes back is a deployment to fix), while a Redis that answers ``OOM``, ``READONLY`` or
``LOADING`` is waited out for as long as it lasts: restarting the worker would not help, and
``/readyz`` plus the ``StitchRedisRefusing`` alert say what is going on.
"""

from __future__ import annotations

from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "CONNECTION_KINDS",
    "ERROR_KINDS",
    "SERVER_STATE_CODES",
    "SERVER_STATE_KINDS",
    "error_code",
    "outage_kind",
]

SERVER_STATE_CODES = frozenset(
    {
        "NOGROUP",
        "BUSY",
        "MISCONF",
        "NOREPLICAS",
        "WRONGTYPE",
        "UNBLOCKED",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "LOADING",
        "READONLY",
        "OOM",
    }
)
"""Error codes Redis gives for its own state; redis-py leaves unknown codes in the message."""

CONNECTION_KINDS = ("connection", "timeout", "nogroup")
"""A link lost (or a Redis that came back empty, without the group): these give up."""
SERVER_STATE_KINDS = tuple(sorted(code.lower() for code in SERVER_STATE_CODES - {"NOGROUP"}))
"""A live Redis refusing commands for its own state: waited out however long it lasts."""
ERROR_KINDS = CONNECTION_KINDS + SERVER_STATE_KINDS
"""The values of ``stitch_redis_errors_total{kind}``, declared up front."""

_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (BusyLoadingError, "loading"),  # a ConnectionError subclass in redis-py: test it first
    (OutOfMemoryError, "oom"),
    (ReadOnlyError, "readonly"),
)
"""redis-py strips the code from these errors' text, so they are known by their class."""


def error_code(exc: ResponseError) -> str:
    """redis-py >= 6 keeps a code it stripped as ``status_code``; unknown codes stay in the
    text (BUSY, NOREPLICAS, MISCONF, ...)."""
    status: str | None = getattr(exc, "status_code", None)
    return status or str(exc).split(" ", 1)[0]


def outage_kind(exc: BaseException) -> str | None:
    """The ``kind`` of an outage, or None when ``exc`` is no outage (a bug, bad data)."""
    for cls, kind in _CLASSES:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, ResponseError):
        code = _class_code(exc) or error_code(exc)
        return code.lower() if code in SERVER_STATE_CODES else None
    if isinstance(exc, RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    return None


def _class_code(exc: ResponseError) -> str | None:
    """MASTERDOWN, CLUSTERDOWN, TRYAGAIN, MOVED and ASK have classes of their own in
    redis-py (which strips the code from the text before redis-py 6)."""
    name = type(exc).__name__
    return {
        "MasterDownError": "MASTERDOWN",
        "ClusterDownError": "CLUSTERDOWN",
        "TryAgainError": "TRYAGAIN",
        "MovedError": "MOVED",
        "AskError": "ASK",
    }.get(name)
