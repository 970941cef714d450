"""Section E: 1, 2, 4 worker replicas in one group on one Redis, drain mode, same data.

Replicas are not pinned (a replica pinned next to its siblings would measure nothing):
the scheduler spreads them over both cores, one of which also runs Redis. Redis CPU per
1k events is INFO CPU (used_cpu_user + used_cpu_sys) delta over the run / events * 1000,
and "events/s per Redis core" is 1000 / that: what Redis alone could carry if the
workers had cores of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from .redis_server import RedisServer
from .throughput import Run, reset, run_workers

__all__ = ["run_replicas"]


def run_replicas(
    server: RedisServer, counts: Sequence[int], *, startup_s: float, batch_size: int, stall_s: float
) -> list[Run]:
    client = server.client()
    runs = []
    for n in counts:
        reset(client)
        runs.append(
            run_workers(
                server,
                n,
                cpu=None,
                startup_s=startup_s,
                batch_size=batch_size,
                stall_s=stall_s,
                name=f"{n} replica{'s' if n > 1 else ''}",
            )
        )
    reset(client)
    return runs
