"""Typed errors; only ``cli.py`` turns them into exit codes."""

from __future__ import annotations

__all__ = [
    "BadArgumentError",
    "ConfigError",
    "RedisUnavailableError",
    "StaleCommitError",
    "StitchError",
]


class StitchError(Exception):
    """Base class of every error lehnz-stitch raises on purpose."""


class ConfigError(StitchError):
    """A setting is missing or invalid; the message names the environment variable."""


class BadArgumentError(StitchError):
    """A command-line argument cannot be used (a tenant name outside the allowed alphabet)."""


class RedisUnavailableError(StitchError):
    """Redis stayed unreachable past ``STITCH_RECONNECT_GIVE_UP_S``."""


class StaleCommitError(StitchError):
    """A batch's commit kept finding stale assumptions (links raced by other replicas).

    The entries stay pending and are retried; seeing this often means a hot contested id.
    """
