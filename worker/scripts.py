"""The worker's Lua scripts and the layout of the commit script's KEYS, in one place.

Scripts run through redis-py's :class:`~redis.commands.core.Script` (EVALSHA, loading the
source after a restart or SCRIPT FLUSH), except the commit, which is pipelined on a held
connection: the committer sends it packed and handles NOSCRIPT itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from resolver.scripts import LINK_RULES_LUA, load_lua

from .config import Settings
from .wire import pack

__all__ = [
    "COMMIT_LUA",
    "COMMIT_SHA",
    "DELCONSUMER_LUA",
    "FIXED_KEYS",
    "KEYS_PER_TENANT",
    "CommitCommand",
]

FIXED_KEYS = 4
"""The input, output, dead-letter and change-feed streams open every commit's KEYS;
KEYS_PER_TENANT keys per tenant of the batch follow, addressed by the tenant's ordinal n (see
commit.lua)."""

KEYS_PER_TENANT = 9
"""A tenant's alias hash, its heights hash (resolver/heights.py), its provenance hash and its
refusal log (resolver/provenance.py), its removals hash and children index
(resolver/removals.py), its sizes hash, quarantine and protection hash
(resolver/quarantine.py)."""

COMMIT_LUA = (
    f"local FIXED_KEYS, KEYS_PER_TENANT = {FIXED_KEYS}, {KEYS_PER_TENANT}\n"
    + LINK_RULES_LUA
    + load_lua("worker", "commit.lua")
)
COMMIT_SHA = hashlib.sha1(COMMIT_LUA.encode()).hexdigest()
DELCONSUMER_LUA = load_lua("worker", "delconsumer.lua")


class CommitCommand:
    """The commit script's EVALSHA with this worker's streams and limits bound once."""

    __slots__ = ("_fixed_args", "_fixed_keys", "sha", "source")

    def __init__(self, settings: Settings, source: str = COMMIT_LUA) -> None:
        self.source = source
        """Loaded by the committer after NOSCRIPT; tests may run a variant."""
        self.sha = COMMIT_SHA if source is COMMIT_LUA else hashlib.sha1(source.encode()).hexdigest()
        self._fixed_keys = (
            settings.input_stream,
            settings.output_stream,
            settings.dead_stream,
            settings.changes_key,
        )
        if len(self._fixed_keys) != FIXED_KEYS:
            raise AssertionError("the commit script's fixed KEYS changed without FIXED_KEYS")
        self._fixed_args = (
            settings.group,
            settings.output_maxlen,
            settings.dead_maxlen,
            settings.max_chain_depth,
            settings.changes_maxlen,
            settings.refusals_maxlen,
            settings.consumer,
            settings.alias_prefix,
            settings.forgotten_events,
            settings.max_component_size,
            settings.max_links_per_root_per_hour,
        )

    def pack(
        self,
        alias_keys: Sequence[str],
        n_verify: int,
        n_entries: int,
        generations: Sequence[str],
        verify: Sequence[Any],
        entries: Sequence[Any],
    ) -> bytes:
        """RESP for one commit; see commit.lua's header for the argument layout."""
        n_keys = FIXED_KEYS + len(alias_keys)  # KEYS_PER_TENANT per tenant
        return pack(
            ("EVALSHA", self.sha, n_keys, *self._fixed_keys, *alias_keys, *self._fixed_args,
             n_verify, n_entries, *generations, *verify, *entries)
        )  # fmt: skip
