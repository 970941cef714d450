"""Builders for events and in-process workers, shared by the test modules."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import redis
import structlog

from tests.redis_proc import WORKER_PASSWORD
from worker import Metrics, Settings, Worker
from worker.acl import WORKER_USER
from worker.connection import NO_CLIENT_SETINFO

INPUT, OUTPUT, DEAD = "events", "events:enriched", "events:dead"


def event(user_id: str, name: str = "product_view", **extra: Any) -> dict[str, Any]:
    return {
        "event_family": "commerce",
        "event_name": name,
        "user_id": user_id,
        "properties": {"sku": "SKU-1", "price": 12.5},
        **extra,
    }


def identify(user_id: str, previous_user_id: str) -> dict[str, Any]:
    return {
        "event_family": "system",
        "event_name": "identify",
        "user_id": user_id,
        "previous_user_id": previous_user_id,
    }


def add(
    client: redis.Redis, tenant: str, payload: dict[str, Any] | bytes | str, **fields: str
) -> str:
    """XADD one input entry; dict payloads are JSON-encoded."""
    body = json.dumps(payload) if isinstance(payload, dict) else payload
    entry_id = client.xadd(INPUT, {"tenant": tenant, "event": body, **fields})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "consumer": "test-consumer",
        "metrics_port": 0,
        "block_ms": 10,
        "claim_interval_ms": 1_000_000,
    }
    values.update(overrides)
    return Settings.from_env({}, values)


def as_worker_user(client: redis.Redis) -> redis.Redis:
    """A client of the same real server logged in as ``stitch-worker`` (fakeredis as is)."""
    if isinstance(client, fakeredis.FakeRedis):
        return client
    kwargs = client.connection_pool.connection_kwargs
    return redis.Redis(
        host=kwargs["host"],
        port=kwargs["port"],
        protocol=2,
        username=WORKER_USER,
        password=WORKER_PASSWORD,
        **NO_CLIENT_SETINFO,
    )


def make_worker(client: redis.Redis, **overrides: Any) -> Worker:
    """An in-process worker on ``client``'s server, as the ACL user the daemon runs as."""
    return Worker(
        settings(**overrides), as_worker_user(client), Metrics(), structlog.get_logger("test")
    )


def drain(client: redis.Redis, **overrides: Any) -> Worker:
    worker = make_worker(client, **overrides)
    worker.run(drain=True)
    return worker


def output(client: redis.Redis, stream: str = OUTPUT) -> list[dict[str, str]]:
    """Every entry of ``stream`` as a str dict, in order."""
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(stream)
    ]


def resolved_by_source(client: redis.Redis) -> dict[str, str]:
    return {e["source_id"]: e["resolved_user_id"] for e in output(client)}


def metric(worker: Worker, name: str, **labels: str) -> float | None:
    """A sample of the worker's registry, as Prometheus would scrape it."""
    return worker.metrics.registry.get_sample_value(name, labels)
