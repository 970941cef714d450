"""A Redis Cluster of real processes on loopback for tests: primaries with one replica each
(redis-server, or valkey-server with TEST_REDIS_SERVER=valkey), built by ``redis-cli --cluster
create``; a primary SIGKILLed and its replica's promotion awaited; one slot migrated to
another primary the way ``redis-cli --cluster reshard`` does it, while workers run."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from urllib.parse import quote

import redis
from redis.crc import key_slot

from tests.redis_proc import (
    WORKER_PASSWORD,
    RedisServer,
    apply_acl_users,
    free_port,
    require_binary,
)
from worker.acl import WORKER_USER
from worker.config import Settings

__all__ = ["NODE_TIMEOUT_MS", "Cluster"]

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: a killed primary is failed over in about 2-3 s instead of 15 s."""
MIGRATE_BATCH = 10
"""Keys per MIGRATE, as ``redis-cli --cluster reshard --cluster-pipeline`` defaults to."""
SLOTS = 16384
BUS_OFFSET = 10_000
"""A node's cluster bus listens on its port + 10000, so its port must be at most 55535."""


def cluster_port() -> int:
    """A free port whose cluster bus port is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65_535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """``primaries`` primaries and as many replicas; every node has the README's ACL users."""

    def __init__(self, primaries: int = 3, binary: str | None = None) -> None:
        self.nodes = [RedisServer(port=cluster_port()) for _ in range(2 * primaries)]
        for node in self.nodes:
            node.binary = binary or node.binary  # valkey-server beside redis-server
            node.extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # a replica that lost its primary always stands for election, however long
                # ago it last heard from it (tests kill primaries right after a sync)
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",  # the replicas' first sync at once, not after 5 s
            ]
        self.primary_count = primaries

    @property
    def url(self) -> str:
        """The worker's URL: two seeds (the first two primaries), as the ``stitch-worker`` user."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        return f"redis+cluster://{WORKER_USER}:{quote(WORKER_PASSWORD, safe='')}@{seeds}"

    def start(self) -> Cluster:
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                require_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_stable()

    def apply_acl_users(self, settings: Settings) -> None:
        """The README's users for ``settings``' key names, on every node (ACLs are per node)."""
        for node in self.live():
            apply_acl_users(node.client(), settings)

    def worker_refusals(self) -> list[object]:
        """What any node's ACL LOG holds against ``stitch-worker``."""
        return [
            entry
            for node in self.live()
            for entry in node.client().acl_log()
            if entry["username"] == WORKER_USER
        ]

    def producer(self) -> redis.RedisCluster:
        """redis-py's cluster client as the default user: what a producer would use."""
        seed = self.live()[0]
        return redis.RedisCluster(host="127.0.0.1", port=seed.port, protocol=2)

    def wait_replicated(self, timeout: float = 30) -> None:
        """Every live primary's replicas have all it has written so far (nothing the tests
        wrote can be lost by a failover)."""

        def caught_up(node: RedisServer) -> bool:
            info = node.client().info("replication")
            replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
            return all(int(r["offset"]) >= info["master_repl_offset"] for r in replicas)

        _wait(lambda: all(caught_up(n) for n in self.primaries()), timeout, "the replicas")

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def wait_stable(self, timeout: float = 60) -> None:
        """Every live node says cluster_state:ok and agrees on every slot's primary, and
        every replica of a live primary is in sync with it."""

        def stable() -> bool:
            try:
                views = {self._owners(node) for node in self.live()}
                states = {node.client().cluster("INFO")["cluster_state"] for node in self.live()}
                links = [self._link_up(node) for node in self.live()]
            except redis.RedisError:
                return False
            return (
                states == {"ok"} and len(views) == 1 and len(next(iter(views))) == SLOTS
            ) and all(links)

        _wait(stable, timeout, "the cluster to be stable")

    def _link_up(self, node: RedisServer) -> bool:
        info = node.client().info("replication")
        if info["role"] != "slave":
            return True
        primary_alive = any(n.port == info["master_port"] for n in self.live())
        return not primary_alive or info["master_link_status"] == "up"

    @staticmethod
    def _owners(node: RedisServer) -> tuple[int, ...]:
        """The port of every slot's primary, as ``node`` sees it."""
        owners = [0] * SLOTS
        for first, last, primary, *_ in node.client().execute_command("CLUSTER SLOTS"):
            owners[first : last + 1] = [int(primary[1])] * (last - first + 1)
        return tuple(owners) if all(owners) else ()

    def owner(self, key: str) -> RedisServer:
        """The primary that serves ``key``'s slot now."""
        port = self._owners(self.live()[0])[key_slot(key.encode())]
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[RedisServer]:
        ports = set(self._owners(self.live()[0]))
        return [node for node in self.nodes if node.port in ports]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.live():
            info = node.client().info("replication")
            if info["role"] == "slave" and info["master_port"] == primary.port:
                return node
        raise LookupError(f"no replica of {primary.port}")

    @staticmethod
    def node_id(node: RedisServer) -> str:
        value: bytes = node.client().execute_command("CLUSTER MYID")
        return value.decode()

    def kill_primary(self, key: str) -> tuple[RedisServer, RedisServer]:
        """SIGKILL the primary of ``key``'s slot; (the killed node, its replica)."""
        primary = self.owner(key)
        replica = self.replica_of(primary)
        primary.kill()
        return primary, replica

    def wait_promoted(self, key: str, replica: RedisServer, timeout: float = 60) -> None:
        """``replica`` serves ``key``'s slot and the cluster is whole again."""
        _wait(lambda: self._serves(replica, key), timeout, f"{replica.port} to be promoted")
        self.wait_stable(timeout)

    def _serves(self, node: RedisServer, key: str) -> bool:
        try:
            return self.owner(key) is node
        except redis.RedisError:
            return False

    def migrate_slot(
        self, key: str, target: RedisServer, batch: int = MIGRATE_BATCH, pause_s: float = 0.0
    ) -> int:
        """Move ``key``'s slot to ``target``: IMPORTING/MIGRATING, MIGRATE ``batch`` keys at
        a time with ``pause_s`` between, SETSLOT NODE on every primary; the keys moved."""
        source = self.begin_migration(key, target)
        moved = 0
        while count := self.migrate_keys(key, source, target, batch):
            moved += count
            time.sleep(pause_s)
        self.end_migration(key, source, target)
        return moved

    def begin_migration(self, key: str, target: RedisServer) -> RedisServer:
        """Mark ``key``'s slot IMPORTING on ``target`` and MIGRATING on its owner (returned)."""
        slot, source = key_slot(key.encode()), self.owner(key)
        target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    @staticmethod
    def migrate_keys(key: str, source: RedisServer, target: RedisServer, count: int) -> int:
        """MIGRATE up to ``count`` keys of ``key``'s slot; how many there were."""
        client = source.client()
        keys = client.execute_command("CLUSTER GETKEYSINSLOT", key_slot(key.encode()), count)
        if keys:
            client.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *keys
            )
        return len(keys)

    def end_migration(self, key: str, source: RedisServer, target: RedisServer) -> None:
        """Give the slot to ``target`` on every primary, and wait for all to agree."""
        slot, target_id = key_slot(key.encode()), self.node_id(target)
        for node in [target, source, *self.primaries()]:
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self.wait_stable()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
