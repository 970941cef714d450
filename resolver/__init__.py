"""Alias-chain resolution for lehnz identity stitching, usable on its own."""

from .cache import AliasCache
from .links import LinkOutcome, LinkRules
from .placeholders import PlaceholderRule
from .resolver import DEFAULT_KEY_PREFIX, DEFAULT_MAX_DEPTH, Resolver
from .sharding import Route, ShardKeys, route, shard_keys, shard_of
from .walk import UNRESOLVED, End, walk

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_DEPTH",
    "UNRESOLVED",
    "AliasCache",
    "End",
    "LinkOutcome",
    "LinkRules",
    "PlaceholderRule",
    "Resolver",
    "Route",
    "ShardKeys",
    "route",
    "shard_keys",
    "shard_of",
    "walk",
]
