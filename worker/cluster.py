"""A plain client for one hash slot of a Redis Cluster: its pool connects to the primary that
owns the slot now, and asks the cluster again (CLUSTER SLOTS, through redis-py's
``NodesManager``) on every new connection, the way redis-py's Sentinel pool asks the sentinels.

Why not ``RedisCluster``: every key a worker touches lies in one slot (its shard's hash tag),
so slot routing per command buys nothing, and it costs a ``COMMAND GETKEYS`` round trip before
every XREADGROUP (redis/redis-py#2229), hides MOVED, ASK and TRYAGAIN behind retries of its
own, and cannot pipeline WAIT behind a commit on the same connection. Here MOVED, ASK,
TRYAGAIN and CLUSTERDOWN reach the worker as outages (server_state.py): it drops its
connections, the next one goes to the slot's owner of the moment, and the same batch is sent
again (the commit script's XACK gate makes a resent batch safe).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.cluster import ClusterNode, NodesManager
from redis.connection import Connection, SSLConnection
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import env_name
from .errors import ConfigError

__all__ = ["SlotOwner", "cluster_client", "same_slot"]


class SlotOwner:
    """Where one slot is served now: the cluster's topology, read again on every call."""

    __slots__ = ("_lock", "_manager", "_options", "_seeds", "slot")

    def __init__(self, seeds: list[tuple[str, int]], slot: int, options: dict[str, Any]) -> None:
        self.slot = slot
        self._seeds = seeds
        self._options = {k: v for k, v in options.items() if k != "retry"}  # set per node
        self._manager: NodesManager | None = None
        self._lock = threading.Lock()

    def address(self) -> tuple[str, int]:
        """The slot's primary, from a fresh CLUSTER SLOTS (seeds first, then every node the
        last answer named, so the seeds may go); raises an outage error while there is none."""
        with self._lock:
            try:
                if self._manager is None:  # created here: its constructor already connects
                    nodes = [ClusterNode(host, port) for host, port in self._seeds]  # type: ignore[no-untyped-call]
                    self._manager = NodesManager(
                        nodes, require_full_coverage=False, **self._options
                    )
                else:
                    self._manager.initialize()
                node = self._manager.get_node_from_slot(self.slot)
            except SlotNotCoveredError:
                raise ClusterDownError(f"slot {self.slot} has no primary now") from None
            except RedisClusterException as exc:
                raise _topology_error(exc) from None
        return node.host, int(node.port)


def _topology_error(exc: RedisClusterException) -> Exception:
    """A link lost stays a link lost; a node that refuses CLUSTER SLOTS is no cluster node (or
    the ACL user lacks ``cluster|slots``): the URL is wrong, retrying would not help."""
    cause = exc.__cause__
    if isinstance(cause, RedisConnectionError | RedisTimeoutError):
        return cause
    refusal = cause.__context__ if cause is not None else None
    if isinstance(refusal, ResponseError):
        return ConfigError(
            f"{env_name('redis_url')}: a node refused CLUSTER SLOTS ({refusal}): "
            "not a Redis Cluster node, or the user may not run cluster|slots"
        )
    return ClusterDownError(str(exc))


class SlotConnection(Connection):
    """A connection whose address is the slot owner's, looked up when it connects; after a
    MOVED it connects again (to the new owner) before sending anything else."""

    def __init__(self, *, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.slot_owner = slot_owner
        self.moved = False
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    def _connect(self) -> Any:
        self.host, self.port = self.slot_owner.address()
        return super()._connect()  # type: ignore[no-untyped-call]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except MovedError:
            # not dropped here: a pipeline's later replies (WAIT's) are still to be read.
            # The worker drops its connections only when an outage starts, and a slot
            # migration starts one with TRYAGAIN or ASK, long before the MOVED
            self.moved = True
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.moved:
            self.moved = False
            self.disconnect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class SlotSSLConnection(SlotConnection, SSLConnection):
    """The same over TLS (``rediss+cluster://``)."""


def cluster_client(
    seeds: list[tuple[str, int]], route_key: str, options: dict[str, Any]
) -> redis.Redis:
    """A client whose pool follows the owner of ``route_key``'s slot; ``options`` are the
    connections' (credentials, TLS, timeouts), used for the topology queries too."""
    owner = SlotOwner(seeds, key_slot(route_key.encode()), options)
    pool_options = {k: v for k, v in options.items() if k != "ssl"}
    connection_class = SlotSSLConnection if options.get("ssl") else SlotConnection
    pool = redis.ConnectionPool(connection_class=connection_class, slot_owner=owner, **pool_options)
    return redis.Redis(connection_pool=pool)


def same_slot(names: list[str]) -> bool:
    """All of ``names`` hash to one slot (a commit script's keys must)."""
    return len({key_slot(name.encode()) for name in names}) == 1
