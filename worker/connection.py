"""The Redis client built from the settings: URL, ACL user, password file, TLS; and the
redaction every printed URL goes through.

Errors the operator can fix (an unreadable password file, a CA file that is not PEM) are
raised as :class:`ConfigError` naming the variable, before the first connection: the worker
would otherwise retry them as outages until ``STITCH_RECONNECT_GIVE_UP_S``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.credentials import CredentialProvider
from redis.retry import Retry
from redis.sentinel import Sentinel

from .cluster import cluster_client, same_slot
from .config import CLUSTER_SCHEMES, SENTINEL_SCHEMES, Settings, env_name
from .errors import ConfigError

__all__ = ["CLIENT_NAME", "NO_CLIENT_SETINFO", "PasswordFile", "connect", "redact"]

CLIENT_NAME = "lehnz-stitch"
"""CLIENT SETNAME on every connection, so CLIENT LIST shows which clients are ours."""
NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if importlib.util.find_spec("redis.driver_info") is not None
    else {"lib_name": None, "lib_version": None}
)
"""redis-py sends CLIENT SETINFO on connect and ignores a refusal, but Redis 7.2+ and Valkey
log the worker's ACL denying it, and Redis 7.0 has no such command to allow: not sent."""
REDACTED = "***"
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


SENTINEL_PORT = 26379
REDIS_PORT = 6379


def connect(settings: Settings, route_key: str | None = None) -> redis.Redis:
    """A RESP2 client whose socket timeout always exceeds BLOCK; retries are the worker's job.

    With a cluster URL the client talks to the primary that owns ``route_key``'s slot (by
    default the input stream's), and ``settings``' keys must all lie in that slot; with any
    other URL ``route_key`` is ignored."""
    scheme = urlsplit(settings.redis_url).scheme
    sentinel, cluster = scheme in SENTINEL_SCHEMES, scheme in CLUSTER_SCHEMES
    try:
        from_url: dict[str, Any] = (
            _sentinel_url(settings.redis_url)
            if sentinel
            else _cluster_url(settings.redis_url)
            if cluster
            else parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        )
    except ValueError as exc:
        raise ConfigError(f"{env_name('redis_url')}: {exc}") from None
    options: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "client_name": CLIENT_NAME,
        **NO_CLIENT_SETINFO,
        **_tls_options(settings),
        **from_url,  # as Redis.from_url does: the URL's options win
    }
    if settings.redis_password_file:
        options["credential_provider"] = PasswordFile(
            settings.redis_password_file, options.pop("username", None)
        )
    if sentinel:
        return _sentinel_client(options)
    if cluster:
        return _cluster_client(settings, route_key or settings.input_stream, options)
    return redis.Redis(connection_pool=redis.ConnectionPool(**options))


def _sentinel_url(url: str) -> dict[str, Any]:
    """``redis[s]+sentinel://[user:password@]host:port[,host:port...]/service-name[/db]``:
    the user and password are the Redis servers' (the sentinels are asked without them)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL ends with /service-name or /service-name/db")
    return {
        "sentinels": _addresses(hosts, SENTINEL_PORT, "sentinel"),
        "service_name": path[0],
        "db": int(path[1]) if len(path) == 2 else 0,
        **_credentials(userinfo),
        **({"ssl": True} if parts.scheme.startswith("rediss") else {}),
    }


def _cluster_url(url: str) -> dict[str, Any]:
    """``redis[s]+cluster://[user:password@]host:port[,host:port...][/0]``: seed nodes (any
    of them reachable is enough, the cluster names the others); a cluster has only db 0."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: end the URL with /0 or nothing")
    if parts.query:
        raise ValueError("a cluster URL takes no ?options")
    return {
        "seeds": _addresses(hosts, REDIS_PORT, "cluster node"),
        **_credentials(userinfo),
        **({"ssl": True} if parts.scheme.startswith("rediss") else {}),
    }


def _addresses(hosts: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """``host[:port][,host[:port]...]`` (IPv6 in brackets)."""
    found = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if not name or (port and not port.isdigit()):
            raise ValueError(f"{what} address {host!r} is not host:port")
        found.append((name.strip("[]"), int(port) if port else default_port))
    return found


def _credentials(userinfo: str) -> dict[str, str]:
    user, has_password, password = userinfo.partition(":")
    credentials = {"username": unquote(user)} if user else {}
    if has_password:
        credentials["password"] = unquote(password)
    return credentials


def _cluster_client(settings: Settings, route_key: str, options: dict[str, Any]) -> redis.Redis:
    """Every key of one commit script must lie in one slot, or the cluster refuses it
    (CROSSSLOT): with STITCH_SHARDS > 1 each shard's names share its tag by construction;
    with one shard the operator's names must share one, checked here before anything is
    sent."""
    names = [
        settings.input_stream,
        settings.output_stream,
        settings.dead_stream,
        settings.changes_key,
        settings.alias_prefix + "a",
        settings.alias_prefix + "b",  # two tenants: the prefix must hold the whole tag
    ]
    if settings.shards == 1 and not same_slot(names):
        raise ConfigError(
            f"{env_name('redis_url')}: a Redis Cluster needs each shard's keys in one slot; "
            f"set {env_name('shards')} above 1 (or give the streams, the change feed and "
            f"{env_name('alias_prefix')} one {{hash tag}})"
        )
    return cluster_client(options.pop("seeds"), route_key, options)


def _sentinel_client(options: dict[str, Any]) -> redis.Redis:
    """The current primary of the service, found through the sentinels for each new
    connection: after a failover the pool's connections reconnect to the promoted replica
    (a primary turned replica answers READONLY, which drops the connection)."""
    sentinels, service = options.pop("sentinels"), options.pop("service_name")
    sentinel_options = {
        k: v for k, v in options.items() if k.startswith("socket_") or k.startswith("ssl")
    }
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
    client: redis.Redis = manager.master_for(service)  # type: ignore[no-untyped-call]
    return client


def _tls_options(settings: Settings) -> dict[str, Any]:
    """Verification is always on (CA chain and host name); the files are checked now."""
    if not urlsplit(settings.redis_url).scheme.startswith("rediss"):
        return {}
    ca, cert, key = settings.redis_ca_file, settings.redis_cert_file, settings.redis_key_file
    context = ssl.create_default_context()
    if ca:
        _load(env_name("redis_ca_file"), ca, lambda: context.load_verify_locations(cafile=ca))
    if cert:
        name = env_name("redis_key_file" if key else "redis_cert_file")
        _load(name, key or cert, lambda: context.load_cert_chain(cert, key or None))
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": ca or None,
        "ssl_certfile": cert or None,
        "ssl_keyfile": key or None,
    }


def _load(variable: str, path: str, load: Any) -> None:
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{variable}: cannot use {path} ({exc})") from None


class PasswordFile(CredentialProvider):
    """The password from a file (a Kubernetes Secret mounted as a volume), read again for
    every new connection so that a rotated Secret is picked up when the worker reconnects.

    The first read happens here and must work. Later, a file that cannot be read (a Secret
    being swapped) falls back to the last password read.
    """

    __slots__ = ("_last", "path", "username")

    def __init__(self, path: str, username: str | None = None) -> None:
        self.path = Path(path)
        self.username = username
        self._last = self._read()

    def _read(self) -> str:
        variable = env_name("redis_password_file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{variable}: cannot read {self.path} ({exc})") from None
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(f"{variable}: {self.path} is empty")
        return password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        with contextlib.suppress(ConfigError):  # keep the last password read
            self._last = self._read()
        if self.username is None:
            return (self._last,)
        return (self.username, self._last)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``: in the user part and in a ``password=``
    query option. Everything up to the last ``@`` counts as the user part, so a password
    with an unescaped ``@``, ``/`` or ``:`` is hidden too (at worst, more is hidden)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
        url = scheme + sep + rest
    return _QUERY_PASSWORD.sub(r"\g<1>" + REDACTED, url)
