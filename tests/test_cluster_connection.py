"""``redis+cluster://`` URLs: the client follows the primary that owns its keys' slot, and
what a Redis Cluster answers while slots move or primaries fail reaches the worker as outages
of their own kind (real clusters of 3 primaries and 3 replicas on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
from redis.crc import key_slot

from tests.cluster_proc import Cluster
from tests.redis_proc import WORKER_PASSWORD, RedisServer, free_port
from worker.acl import CLUSTER_COMMANDS, WORKER_USER, setuser_args, worker_rules
from worker.config import Settings
from worker.connection import connect, redact
from worker.errors import ConfigError
from worker.server_state import outage_kind

SCRIPT = "return redis.call('XADD', KEYS[1], '*', 'n', ARGV[1])"
"""A write by EVALSHA, as the commit script's."""


def tagged(url: str, tag: str, **settings: str) -> Settings:
    """Settings whose keys all share ``{tag}``: one slot, as one shard's."""
    env = {
        "STITCH_REDIS_URL": url,
        "STITCH_INPUT_STREAM": f"events:{{{tag}}}",
        "STITCH_OUTPUT_STREAM": f"events:enriched:{{{tag}}}",
        "STITCH_DEAD_STREAM": f"events:dead:{{{tag}}}",
        "STITCH_ALIAS_PREFIX": f"alias:{{{tag}}}:",
        **settings,
    }
    return Settings.from_env(env)


def tags_on_every_primary(cluster: Cluster) -> dict[int, str]:
    """One tag per primary (by port)."""
    found: dict[int, str] = {}
    for n in range(1000):
        found.setdefault(cluster.owner(f"{{t{n}}}").port, f"t{n}")
        if len(found) == cluster.primary_count:
            return found
    raise AssertionError("no tag for some primary")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One cluster for the tests that leave it whole (slots moved back and forth are fine)."""
    started = Cluster().start()
    yield started
    started.stop()


@pytest.fixture
def acl_clean(cluster: Cluster) -> Iterator[None]:
    """Fails the test if any node refused ``stitch-worker`` something."""
    for node in cluster.live():
        node.client().acl_log_reset()
    yield
    assert not cluster.worker_refusals()


@pytest.mark.parametrize(
    ("url", "seeds"),
    [
        ("redis+cluster://h1:7000,h2:7001", [("h1", 7000), ("h2", 7001)]),
        ("redis+cluster://u:p%40ss@h1/0", [("h1", 6379)]),
        ("rediss+cluster://u:p@[::1]:7000,h2", [("::1", 7000), ("h2", 6379)]),
    ],
)
def test_cluster_url_names_seeds_and_credentials(
    monkeypatch: pytest.MonkeyPatch, url: str, seeds: list[tuple[str, int]]
) -> None:
    """Seeds as host[:port] (6379 when left out), the user and password the nodes', TLS from
    the scheme; the client's pool connects lazily (nothing is reached here)."""
    client = connect(tagged(url, "t"))
    kwargs = client.connection_pool.connection_kwargs
    owner = kwargs["slot_owner"]
    assert owner._seeds == seeds
    assert owner.slot == key_slot(b"t")
    if "u:" in url:
        assert (kwargs["username"], kwargs["password"]) == ("u", "p@ss" if "40" in url else "p")
    assert client.connection_pool.connection_class.__name__ == (
        "SlotSSLConnection" if url.startswith("rediss") else "SlotConnection"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://h1:7000/1",
        "redis+cluster://h1:7000?socket_timeout=1",
        "redis+cluster://h1:port",
        "redis+cluster://h1:7000,",
    ],
    ids=["db-1", "options", "bad-port", "empty-seed"],
)
def test_unusable_cluster_url_is_a_config_error(url: str) -> None:
    """A database other than 0, query options or a seed that is not host:port stop start-up
    naming STITCH_REDIS_URL."""
    with pytest.raises(ConfigError, match=r"^STITCH_REDIS_URL: "):
        connect(tagged(url, "t"))


def test_keys_outside_one_slot_are_a_config_error() -> None:
    """One shard with today's default names (no hash tag) would make every commit CROSSSLOT:
    refused before anything is sent, naming the URL and STITCH_SHARDS; each shard's settings
    of STITCH_SHARDS=8 are accepted."""
    url = "redis+cluster://h1:7000"
    with pytest.raises(ConfigError, match=r"^STITCH_REDIS_URL: .*STITCH_SHARDS above 1"):
        connect(Settings.from_env({"STITCH_REDIS_URL": url}))
    sharded = Settings.from_env({"STITCH_REDIS_URL": url, "STITCH_SHARDS": "8"})
    for shard in sharded.shard_numbers:
        own = sharded.for_shard(shard)
        owner = connect(own, route_key=own.input_stream).connection_pool.connection_kwargs
        assert owner["slot_owner"].slot == key_slot(own.input_stream.encode())


def test_cluster_url_is_redacted() -> None:
    assert redact("rediss+cluster://u:hunter2@h1:7000,h2:7001") == (
        "rediss+cluster://u:***@h1:7000,h2:7001"
    )


@pytest.mark.redis_server
def test_each_client_follows_its_slots_primary(cluster: Cluster, acl_clean: None) -> None:
    """Clients for tags on each of the three primaries write by EVALSHA (a wrong node would
    answer MOVED) and the entries are on the owners, as stitch-worker (CLUSTER SLOTS allowed)."""
    for port, tag in tags_on_every_primary(cluster).items():
        settings = tagged(cluster.url, tag)
        cluster.apply_acl_users(settings)
        client = connect(settings)
        sha = client.script_load(SCRIPT)
        client.evalsha(sha, 1, settings.input_stream, "1")
        owner = next(node for node in cluster.nodes if node.port == port)
        assert owner.client().xlen(settings.input_stream) == 1
        client.close()


@pytest.mark.redis_server
def test_migrated_slot_answers_moved_then_the_new_owner_serves(
    cluster: Cluster, acl_clean: None
) -> None:
    """While keys move, a command on keys some of which moved gets TRYAGAIN and one whose keys
    all moved gets ASK; once the slot is the target's, the old connection gets MOVED. All three
    are outages of their own kind; the connection that got MOVED reconnects to the target
    before its next command."""
    settings = tagged(cluster.url, "mig")
    cluster.apply_acl_users(settings)
    client = connect(settings)
    sha = client.script_load(SCRIPT)
    both = (2, settings.input_stream, settings.output_stream)
    client.evalsha(sha, *both, "1")
    client.evalsha(sha, 1, settings.output_stream, "1")
    source = cluster.owner(settings.input_stream)
    target = next(node for node in cluster.primaries() if node is not source)
    target.client().script_load(SCRIPT)
    assert cluster.begin_migration(settings.input_stream, target) is source
    kinds = []
    cluster.migrate_keys(settings.input_stream, source, target, 1)
    for _ in range(2):
        with pytest.raises(redis.ResponseError) as refused:
            client.evalsha(sha, *both, "2")
        kinds.append(outage_kind(refused.value))
        cluster.migrate_keys(settings.input_stream, source, target, 1)
    cluster.end_migration(settings.input_stream, source, target)
    with pytest.raises(redis.ResponseError) as moved:
        client.evalsha(sha, *both, "2")
    kinds.append(outage_kind(moved.value))
    assert kinds == ["tryagain", "ask", "moved"]
    client.evalsha(sha, *both, "3")  # the connection that got MOVED went to the new owner
    assert target.client().xlen(settings.input_stream) == 2
    assert target.client().xlen(settings.output_stream) == 1


@pytest.mark.redis_server
def test_manual_failover_answers_moved_and_noscript(cluster: Cluster, acl_clean: None) -> None:
    """CLUSTER FAILOVER (no write lost): the old connection to the demoted primary gets MOVED
    (a cluster replica redirects writes, it does not answer READONLY) and reconnects; the
    promoted replica, whose script cache is empty, answers NOSCRIPT, which the committer
    handles by loading the script and sending the batch again."""
    settings = tagged(cluster.url, "fo")
    cluster.apply_acl_users(settings)
    client = connect(settings)
    sha = client.script_load(SCRIPT)
    client.evalsha(sha, 1, settings.input_stream, "1")
    replica = cluster.replica_of(cluster.owner(settings.input_stream))
    replica.client().execute_command("CLUSTER FAILOVER")
    cluster.wait_promoted(settings.input_stream, replica)
    with pytest.raises(redis.ResponseError) as moved:
        client.evalsha(sha, 1, settings.input_stream, "2")
    assert outage_kind(moved.value) == "moved"
    with pytest.raises(redis.exceptions.NoScriptError):
        client.evalsha(sha, 1, settings.input_stream, "2")
    assert client.script_load(SCRIPT) == sha
    client.evalsha(sha, 1, settings.input_stream, "2")
    assert replica.client().xlen(settings.input_stream) == 2


@pytest.mark.redis_server
def test_killed_primary_is_a_link_lost_until_its_replica_is_promoted() -> None:
    """SIGKILL: connections to the dead primary fail as link outages (the give-up clock runs)
    until the cluster promotes its replica; then a new connection goes there."""
    cluster = Cluster().start()
    try:
        settings = tagged(cluster.url, "kill")
        cluster.apply_acl_users(settings)
        client = connect(settings)
        client.xadd(settings.input_stream, {"n": "1"})
        _, replica = cluster.kill_primary(settings.input_stream)
        with pytest.raises(redis.ConnectionError) as lost:
            client.xadd(settings.input_stream, {"n": "2"})
        assert outage_kind(lost.value) == "connection"
        cluster.wait_promoted(settings.input_stream, replica)
        client.connection_pool.disconnect()
        client.xadd(settings.input_stream, {"n": "2"})
        assert replica.client().xlen(settings.input_stream) >= 1
        assert not cluster.worker_refusals()
    finally:
        cluster.stop()


@pytest.mark.redis_server
def test_a_standalone_redis_behind_a_cluster_url_is_a_config_error(
    redis_server: RedisServer,
) -> None:
    """A node that refuses CLUSTER SLOTS is no cluster node: the first command stops the
    worker naming STITCH_REDIS_URL (exit 2) instead of retrying an outage forever."""
    url = f"redis+cluster://{WORKER_USER}:{quote(WORKER_PASSWORD, safe='')}@127.0.0.1:"
    client = connect(tagged(url + str(redis_server.port), "t"))
    with pytest.raises(ConfigError, match=r"^STITCH_REDIS_URL: a node refused CLUSTER SLOTS"):
        client.ping()


def test_unreachable_seeds_are_a_link_outage() -> None:
    """No seed answers: a lost link, retried and given up like a standalone Redis's."""
    client = connect(tagged(f"redis+cluster://127.0.0.1:{free_port()}", "t"))
    with pytest.raises(redis.ConnectionError) as lost:
        client.ping()
    assert outage_kind(lost.value) == "connection"


@pytest.mark.redis_server
def test_the_worker_user_needs_cluster_slots(cluster: Cluster) -> None:
    """Without ``+cluster|slots`` (CLUSTER_COMMANDS) the topology cannot be read: a
    configuration error naming the URL, and the nodes log the refusal of that very command."""
    settings = tagged(cluster.url, "acl")
    rules = [rule for rule in worker_rules(settings) if rule not in CLUSTER_COMMANDS]
    for node in cluster.live():
        node.client().execute_command(*setuser_args(WORKER_USER, ">" + WORKER_PASSWORD, rules))
        node.client().acl_log_reset()
    try:
        with pytest.raises(ConfigError, match=r"^STITCH_REDIS_URL: .*cluster\|slots"):
            connect(settings).ping()
        assert "cluster|slots" in {str(entry["object"]) for entry in cluster.worker_refusals()}
    finally:
        cluster.apply_acl_users(settings)
