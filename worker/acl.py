"""The Redis ACL rules of lehnz-stitch's two users, for the configured key names.

``stitch-worker`` (the daemon and ``resolve``) gets exactly the commands the worker sends,
found by running the whole suite as that user with an empty ``ACL LOG`` afterwards; commands
inside its Lua scripts are checked against the same rules, so the scripts' XACK, XADD,
XTRIM, HSET, TYPE, XINFO STREAM, TIME, XPENDING, XINFO CONSUMERS and XGROUP DELCONSUMER are
listed too; what it may delete is confined to the heights, sizes and protection hashes by an
ACL selector.
``stitch-admin`` adds what operators and the governance commands need. Both are confined
to the four keys (patterns) the settings name; ``lehnz-stitch acl`` prints the lines.
"""

from __future__ import annotations

import re

from resolver.heights import HEIGHTS_SUFFIX, SCRATCH_SUFFIX, SIZES_SUFFIX
from resolver.quarantine import PROTECTION_SUFFIX
from resolver.sharding import OVERRIDES_KEY

from .config import Settings

__all__ = [
    "ADMIN_COMMANDS",
    "ADMIN_USER",
    "CLUSTER_COMMANDS",
    "HEIGHTS_COMMANDS",
    "WORKER_COMMANDS",
    "WORKER_USER",
    "acl_lines",
    "admin_rules",
    "heights_selector",
    "key_patterns",
    "overrides_rules",
    "setuser_args",
    "setuser_line",
    "worker_rules",
]

WORKER_USER = "stitch-worker"
ADMIN_USER = "stitch-admin"

WORKER_COMMANDS = (
    # connection set-up by redis-py: CLIENT SETNAME (client_name), SELECT for a URL whose
    # db is not 0. Its CLIENT SETINFO is left out: Redis 7.0 lacks it (so the rule would be
    # refused), and redis-py ignores the refusal on 7.2+
    "+ping",
    "+client|setname",
    "+select",
    # the input stream's group: created at start-up, read, reclaimed, inspected, cleaned up
    "+xgroup|create",
    "+xgroup|delconsumer",
    "+xreadgroup",
    "+xautoclaim",
    "+xpending",
    "+xinfo|groups",
    "+xinfo|consumers",
    # the commit script's writes
    "+xack",
    "+xadd",
    "+xtrim",
    # the commit script checks its streams before its first write (issue 16)
    "+type",
    "+xinfo|stream",
    # the commit script stamps each link's provenance with Redis's clock (issue 10)
    "+time",
    # the alias hashes: resolution reads, link writes (inside the scripts); at start-up the
    # maps whose heights do not account for every link are listed and read (measuring.py)
    "+hget",
    "+hmget",
    "+hset",
    # a held link's entry in the quarantine, the first hold of an id standing (issue 12)
    "+hsetnx",
    # each link's entry in the children index beside its map; blocks and tombstones (issue 11)
    "+zadd",
    "+hexists",
    "+scan",
    "+hscan",
    "+hlen",
    # the scripts themselves, by SHA, loaded again after a restart or SCRIPT FLUSH
    "+evalsha",
    "+script|load",
    # STITCH_WAIT_REPLICAS: behind each commit, on its connection
    "+wait",
)
"""Everything ``python -m worker run`` and ``resolve`` send, scripts' inner calls included."""

CLUSTER_COMMANDS = ("+cluster|slots",)
"""Behind a ``redis+cluster://`` URL only: the topology, read before each new connection to
find the primary of the shard's slot (cluster.py)."""

HEIGHTS_COMMANDS = ("+hdel", "+del", "+rename")
"""Only on the heights hashes beside the alias maps (an ACL selector): a root that gains a
parent loses its height (HDEL), and a map measured at start-up gets its heights swapped in
(DEL, RENAME of a scratch hash). The worker can never delete a link or an alias map."""

ADMIN_COMMANDS = (
    # read any of the streams: dead letters, the output, the input's backlog (`status`,
    # `dead-letters list`)
    "+xrange",
    "+xrevrange",
    "+xlen",
    # repair: re-drive a dead letter (redrive.lua: XRANGE, then XADD, the worker's already,
    # and XDEL), purge dead letters, delete, move the group
    "+xdel",
    "+xclaim",
    "+xgroup|setid",
    "+xgroup|destroy",
    "+xgroup|createconsumer",
    # the alias map: list, read whole, unlink, erase
    "+hgetall",
    "+hkeys",
    "+hdel",
    "+del",
    "+unlink",
    "+exists",
    # import --dry-run stages its decisions in scratch hashes that expire if it is killed
    "+pexpire",
    # unlink and forget (issue 11): the children index, the generation and tombstone counts
    "+zrangebylex",
    "+zcard",
    "+zrem",
    "+hincrby",
    # move-tenant copies a tenant's keys to another shard, whatever their type, TTL kept
    "+dump",
    "+restore",
    "+pttl",
)
"""What operators and the governance commands need on top of the worker's rights."""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _literal(name: str) -> str:
    """An ACL key pattern matching ``name`` only (its glob characters escaped)."""
    return _GLOB_SPECIAL.sub(r"\\\1", name)


def key_patterns(settings: Settings) -> list[str]:
    """The streams and ``<prefix>*`` (alias maps, heights, provenance, refusal logs and, by
    default, the change feed); the feed gets its own pattern when it lies outside. With
    STITCH_SHARDS > 1, every shard's (a replica may be given any subset)."""
    patterns = []
    for names in _layouts(settings):
        patterns += [
            "~" + _literal(names.input_stream),
            "~" + _literal(names.output_stream),
            "~" + _literal(names.dead_stream),
            "~" + _literal(names.alias_prefix) + "*",
        ]
        if names.reserved_tenant is None:
            patterns.append("~" + _literal(names.changes_key))
    return patterns


def heights_selector(settings: Settings) -> str:
    """HEIGHTS_COMMANDS on ``<prefix>*:heights`` and its scratch copy, and on the sizes and
    protection hashes (a root that gains a parent loses its size and rate window too),
    nothing else."""
    patterns = []
    for names in _layouts(settings):
        heights = _literal(names.alias_prefix) + "*" + HEIGHTS_SUFFIX
        sizes = _literal(names.alias_prefix) + "*" + SIZES_SUFFIX
        protection = _literal(names.alias_prefix) + "*" + PROTECTION_SUFFIX
        patterns += [heights, heights + SCRATCH_SUFFIX, sizes, sizes + SCRATCH_SUFFIX, protection]
    return f"({' '.join(HEIGHTS_COMMANDS)} {' '.join('~' + p for p in patterns)})"


def overrides_rules(settings: Settings, *, write: bool) -> list[str]:
    """The shard override table (STITCH_SHARDS > 1): the worker reads it (HGETALL), the
    admin's ``route set`` writes it."""
    if settings.shards == 1:
        return []
    if write:
        return ["~" + _literal(OVERRIDES_KEY)]
    return [f"(+hgetall %R~{_literal(OVERRIDES_KEY)})"]


def _layouts(settings: Settings) -> list[Settings]:
    return [settings.for_shard(shard) for shard in range(settings.shards)]


def worker_rules(settings: Settings) -> list[str]:
    """ACL SETUSER rules after the password: no pub/sub, nothing outside the four keys."""
    return [
        "-@all",
        *WORKER_COMMANDS,
        *CLUSTER_COMMANDS,
        *key_patterns(settings),
        heights_selector(settings),
        *overrides_rules(settings, write=False),
    ]


def admin_rules(settings: Settings) -> list[str]:
    """The heights selector too: ``import`` measures a map's heights first, as the worker."""
    return [
        "-@all",
        *WORKER_COMMANDS,
        *CLUSTER_COMMANDS,
        *ADMIN_COMMANDS,
        *key_patterns(settings),
        *overrides_rules(settings, write=True),
        heights_selector(settings),
    ]


def setuser_args(user: str, password: str, rules: list[str]) -> list[str]:
    """The ``ACL SETUSER`` command: ``reset`` first, so the line is the whole definition."""
    return ["ACL", "SETUSER", user, "reset", "on", password, *rules]


def setuser_line(user: str, password: str, rules: list[str]) -> str:
    """One line for the redis-cli prompt (a word with spaces or quotes is double-quoted)."""
    return " ".join(_quoted(word) for word in setuser_args(user, password, rules))


def _quoted(word: str) -> str:
    if word and not any(c.isspace() or c in "\"'" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def acl_lines(settings: Settings) -> str:
    """Both users' lines, passwords left for the operator to fill in."""
    return "\n".join(
        (
            setuser_line(WORKER_USER, ">WORKER_PASSWORD", worker_rules(settings)),
            setuser_line(ADMIN_USER, ">ADMIN_PASSWORD", admin_rules(settings)),
        )
    )
