"""lehnz-stitch: the identity-stitching stream worker."""

from .config import Settings
from .consumer import Worker
from .errors import ConfigError, RedisUnavailableError, StaleCommitError, StitchError
from .metrics import Metrics

__all__ = [
    "ConfigError",
    "Metrics",
    "RedisUnavailableError",
    "Settings",
    "StaleCommitError",
    "StitchError",
    "Worker",
]
