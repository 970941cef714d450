"""lehnz-stitch: the identity-stitching stream worker."""

from .config import Settings
from .errors import ConfigError, RedisUnavailableError, StaleCommitError, StitchError
from .metrics import Metrics
from .worker import Worker

__all__ = [
    "ConfigError",
    "Metrics",
    "RedisUnavailableError",
    "Settings",
    "StaleCommitError",
    "StitchError",
    "Worker",
]
