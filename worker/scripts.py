"""The worker's Lua scripts, loaded once and called by SHA with a NOSCRIPT fallback."""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.exceptions import NoScriptError

from resolver.scripts import LINK_RULES_LUA, load_lua

from .stream import command

__all__ = ["COMMIT_LUA", "DELCONSUMER_LUA", "Script"]

COMMIT_LUA = LINK_RULES_LUA + load_lua("worker", "commit.lua")
DELCONSUMER_LUA = load_lua("worker", "delconsumer.lua")


class Script:
    """EVALSHA, loading the source again after a Redis restart or SCRIPT FLUSH."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[Any], args: list[Any]) -> Any:
        try:
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            command(client, "SCRIPT", "LOAD", self.source)
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
