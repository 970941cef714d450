"""One frozen, typed configuration built from the environment (and CLI flags), validated once."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from resolver import DEFAULT_MAX_DEPTH
from resolver.sharding import MAX_SHARDS, parse_subset, shard_keys

from .errors import ConfigError

__all__ = [
    "DEPRECATED",
    "ENTRY_OVERHEAD",
    "ENV_PREFIX",
    "MAX_FIELDS_CAP",
    "Settings",
    "StitchDeprecationWarning",
    "env_name",
]

ENV_PREFIX = "STITCH_"
DEPRECATED = {"STITCH_SHUTDOWN_TIMEOUT": "shutdown_timeout_s"}
"""Old variable -> the setting that replaced it; the old name still works, with a warning."""
MIN_STALL_S = 30.0
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ENTRY_OVERHEAD = 1_024
"""Room an entry needs beside its event: field names, the tenant, a domain."""
MAX_FIELDS_CAP = 1_000
"""Field pairs per entry: commit.lua refuses more than 2,000 pairs (Lua's unpack limit is
8,000 values), so the setting can never let through an entry the script cannot copy."""
DEFAULT_CHANGES_NAME = "changes"
"""The change feed is ``<alias prefix>changes`` unless STITCH_CHANGES_STREAM names it."""
KEY_SETTINGS = ("input_stream", "output_stream", "dead_stream", "alias_prefix", "changes_stream")
"""The names each shard gets its own copy of (resolver/sharding.py)."""
MAX_JSON_DEPTH_CAP = 500
"""msgspec recurses once per level through CPython's recursion limit (1,000): stay well below."""


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting; the environment variable is ``STITCH_`` + the upper-cased name."""

    redis_url: str = "redis://localhost:6379/0"
    redis_password_file: str = ""
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    input_stream: Name = "events"
    output_stream: Name = "events:enriched"
    dead_stream: Name = "events:dead"
    alias_prefix: Name = "alias:"
    shards: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)] = 1
    """1: today's key names. N > 1: N sets of streams and alias maps, one hash tag each
    (resolver/sharding.py)."""
    shard_subset: str = ""
    """The shards this replica works on, e.g. ``0,2-5``; empty: all of them."""
    group: Name = "stitch"
    group_start_id: Name = "0"
    consumer: Name = msgspec.field(default_factory=_default_consumer)
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    block_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 2_000
    cache_size: Annotated[int, msgspec.Meta(ge=2)] = 1_000_000
    max_chain_depth: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = DEFAULT_MAX_DEPTH
    max_component_size: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_links_per_root_per_hour: NonNegativeInt = 100
    max_event_bytes: PositiveInt = 64 * 1024
    max_entry_bytes: PositiveInt = 128 * 1024
    max_fields: Annotated[int, msgspec.Meta(ge=2, le=MAX_FIELDS_CAP)] = 64
    max_id_bytes: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 256
    max_json_depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_JSON_DEPTH_CAP)] = 256
    forward_identify: bool = False
    extra_placeholders: str = ""
    output_maxlen: NonNegativeInt = 10_000_000
    dead_maxlen: NonNegativeInt = 1_000_000
    changes_stream: str = ""
    """Empty: the alias prefix + ``changes`` (``alias:changes``), same hash tag as the maps."""
    changes_maxlen: NonNegativeInt = 10_000_000
    refusals_maxlen: NonNegativeInt = 100_000
    tombstone_key: str = ""
    """The secret tombstones are keyed with (HMAC-SHA256): needed by ``forget``, and by the
    worker once any tenant has tombstones."""
    forgotten_events: Literal["drop", "pass"] = "drop"
    claim_idle_ms: PositiveInt = 60_000
    claim_interval_ms: PositiveInt = 5_000
    max_deliveries: PositiveInt = 5
    consumer_idle_ms: PositiveInt = 3_600_000
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 25.0
    reconnect_give_up_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    wait_replicas: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    wait_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 1_000
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 9108
    metrics_addr: str = "0.0.0.0"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    def __post_init__(self) -> None:
        _check_redis_url(self)
        if self.max_entry_bytes < self.max_event_bytes + ENTRY_OVERHEAD:
            raise ConfigError(
                f"{env_name('max_entry_bytes')}: {self.max_entry_bytes} leaves no room for an "
                f"event of {env_name('max_event_bytes')} ({self.max_event_bytes}) and its "
                f"tenant; make it at least {self.max_event_bytes + ENTRY_OVERHEAD}"
            )
        streams = (self.input_stream, self.output_stream, self.dead_stream)
        clash = [name for name in streams if name.startswith(self.alias_prefix)]
        if clash:
            raise ConfigError(
                f"{env_name('alias_prefix')}: stream {clash[0]!r} starts with the alias prefix "
                f"{self.alias_prefix!r}, so a tenant's alias hash could be that stream"
            )
        _check_changes_stream(self)
        _ = self.shard_numbers  # refuses a bad STITCH_SHARD_SUBSET now, not at start-up
        if self.block_ms / 1000 >= self.shutdown_timeout_s:
            raise ConfigError(
                f"{env_name('block_ms')}: {self.block_ms} ms must be shorter than "
                f"{env_name('shutdown_timeout_s')} ({self.shutdown_timeout_s:g} s), or a blocked "
                "read could outlast a graceful shutdown"
            )

    @property
    def changes_key(self) -> str:
        """The change feed: one stream for every tenant's alias map."""
        return self.changes_stream or self.alias_prefix + DEFAULT_CHANGES_NAME

    @property
    def reserved_tenant(self) -> str | None:
        """The tenant whose alias key would be the change feed (``changes`` by default):
        its entries are dead-lettered as ``reserved_tenant``."""
        key = self.changes_key
        return key[len(self.alias_prefix) :] if key.startswith(self.alias_prefix) else None

    @property
    def shard_numbers(self) -> tuple[int, ...]:
        """The shards this replica works on: STITCH_SHARD_SUBSET, or all of them."""
        try:
            return parse_subset(self.shard_subset, self.shards)
        except ValueError as exc:
            raise ConfigError(f"{env_name('shard_subset')}: {exc}") from None

    def for_shard(self, shard: int) -> Settings:
        """A copy with shard ``shard``'s key names, the subset narrowed to it. With one shard,
        the same names."""
        if not 0 <= shard < self.shards:
            raise ConfigError(
                f"{env_name('shard_subset')}: shard {shard} does not exist with "
                f"{env_name('shards')}={self.shards}"
            )
        if self.shards == 1:
            return self
        _check_unbraced(self)
        keys = shard_keys(self, shard, self.shards)
        return msgspec.structs.replace(
            self,
            input_stream=keys.input_stream,
            output_stream=keys.output_stream,
            dead_stream=keys.dead_stream,
            alias_prefix=keys.alias_prefix,
            changes_stream=keys.changes_stream,
            shard_subset=str(shard),
        )

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.extra_placeholders.split(",") if p.strip())

    @property
    def stall_after_s(self) -> float:
        """/healthz fails when the loop has not beaten for this long (a blocked read included)."""
        return max(MIN_STALL_S, 3 * self.block_ms / 1000)

    @property
    def socket_timeout_s(self) -> float:
        """Always above BLOCK and WAIT's timeout, so neither can time out the socket."""
        return max(self.block_ms, self.wait_timeout_ms) / 1000 + 5.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        """Build from ``STITCH_*`` variables, then ``overrides`` (CLI flags) on top."""
        env = os.environ if env is None else env
        env = _renamed(env)
        known = {env_name(name) for name in cls.__struct_fields__}
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: unknown setting (a typo would otherwise be ignored "
                "silently); see README.md for the list"
            )
        raw: dict[str, object] = {}
        for name in cls.__struct_fields__:
            value = env.get(env_name(name))
            if value is not None and value != "":
                lowered = name in ("log_level", "log_format", "forgotten_events")
                raw[name] = value.lower() if lowered else value
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_setting(str(exc))) from None


class StitchDeprecationWarning(FutureWarning):
    """A setting is set under a name that will stop working (shown to operators by default)."""


def _renamed(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with deprecated variables moved to their new names (a new name set wins)."""
    old = [name for name in DEPRECATED if name in env]
    if not old:
        return env
    moved = dict(env)
    for name in old:
        new = env_name(DEPRECATED[name])
        warnings.warn(f"{name} is deprecated: use {new}", StitchDeprecationWarning, stacklevel=3)
        value = moved.pop(name)
        moved.setdefault(new, value)
    return moved


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
"""``[user:password@]host:port[,host:port...]/service-name[/db]``: see connection.py."""
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""``[user:password@]host:port[,host:port...][/0]``: see connection.py and cluster.py."""


def _check_redis_url(settings: Settings) -> None:
    """The URL's shape and how it combines with the TLS and password settings (no I/O here:
    the files are read when connecting). The URL itself is never echoed: it may hold a
    password."""
    try:
        url = urlsplit(settings.redis_url)
    except ValueError as exc:
        raise ConfigError(f"{env_name('redis_url')}: not a URL ({exc})") from None
    if url.scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES):
        raise ConfigError(
            f"{env_name('redis_url')}: expected a redis://, rediss://, unix://, "
            "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL, "
            f"got one starting with {url.scheme + ':' if url.scheme else 'no scheme'}"
        )
    query = {name.lower() for name, _ in parse_qsl(url.query)}
    if any(name.startswith("ssl") for name in query):
        raise ConfigError(
            f"{env_name('redis_url')}: TLS options do not belong in the URL; set "
            f"{env_name('redis_ca_file')}, {env_name('redis_cert_file')} and "
            f"{env_name('redis_key_file')} (certificates are always verified)"
        )
    tls_files = [
        n for n in ("redis_ca_file", "redis_cert_file", "redis_key_file") if getattr(settings, n)
    ]
    if tls_files and not url.scheme.startswith("rediss"):
        raise ConfigError(
            f"{env_name(tls_files[0])}: set, but {env_name('redis_url')} is not a rediss:// "
            "(or rediss+sentinel://, rediss+cluster://) URL"
        )
    if settings.redis_key_file and not settings.redis_cert_file:
        raise ConfigError(
            f"{env_name('redis_key_file')}: set without {env_name('redis_cert_file')}"
        )
    has_password = url.password is not None or "password" in query
    if url.username and not has_password and not settings.redis_password_file:
        raise ConfigError(
            f"{env_name('redis_url')}: names the user {url.username!r} but no password; set "
            f"{env_name('redis_password_file')} (or put it in the URL)"
        )
    if settings.redis_password_file and has_password:
        raise ConfigError(
            f"{env_name('redis_password_file')}: set, but {env_name('redis_url')} holds a "
            "password too; keep only one (the file, with the user name in the URL)"
        )


def _check_unbraced(settings: Settings) -> None:
    braced = [name for name in KEY_SETTINGS if {"{", "}"} & set(getattr(settings, name))]
    if braced:
        raise ConfigError(
            f"{env_name(braced[0])}: holds a brace, which would choose its own hash tag; "
            f"with {env_name('shards')} > 1 each shard's names get theirs (or these "
            "settings are one shard's already)"
        )


def _check_changes_stream(settings: Settings) -> None:
    """The feed is one more stream: not one of the others, and under the alias prefix only as
    a name without ':' (so it can only ever be one tenant's alias key, which is reserved;
    never a heights, provenance or refusal key)."""
    key = settings.changes_key
    if len(key) > 256:
        raise ConfigError(f"{env_name('changes_stream')}: longer than 256 characters")
    if key in (settings.input_stream, settings.output_stream, settings.dead_stream):
        raise ConfigError(f"{env_name('changes_stream')}: {key!r} is already another stream")
    reserved = settings.reserved_tenant
    if reserved is not None and (not reserved or ":" in reserved):
        raise ConfigError(
            f"{env_name('changes_stream')}: {key!r} starts with {env_name('alias_prefix')} "
            f"{settings.alias_prefix!r}; there it must be the prefix and a name without ':'"
        )


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _name_setting(message: str) -> str:
    """Rewrite msgspec's ``- at `$.batch_size``` into the variable the operator set."""
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{env_name(path.rstrip('`'))}: {head}"
