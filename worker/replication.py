"""``STITCH_WAIT_REPLICAS``: a commit counts as done once that many replicas have it.

``WAIT replicas timeout`` goes out right behind each commit on the same connection (in the
same packed bytes: no extra round trip), and its reply is read after the verdict. Redis
answers with the number of replicas that acknowledged every write of that connection so
far; fewer than asked (a replica down or lagging past the timeout) is counted, and logged
once as it starts and once as it ends. The commit stays done: it is in the primary, and
WAIT cannot undo it; what is lost is the guarantee that a failover keeps it.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .wire import pack

__all__ = ["ReplicaWait"]


class ReplicaWait:
    __slots__ = ("_log", "_short", "_under_replicated", "packed", "replicas", "replies")

    def __init__(self, replicas: int, timeout_ms: int, under_replicated: Any, log: Any) -> None:
        self.replicas = replicas
        self.packed = pack(("WAIT", replicas, timeout_ms)) if replicas else b""
        """Sent right behind each commit's EVALSHA (nothing when not waiting)."""
        self.replies = 1 if replicas else 0
        """Replies ``packed`` adds to the connection."""
        self._under_replicated = under_replicated
        self._log = log
        self._short = False

    def check(self, reply: Any) -> None:
        """The WAIT reply of a commit that wrote: count and log a shortfall."""
        acked = 0 if isinstance(reply, ResponseError) else int(reply)
        if acked >= self.replicas:
            if self._short:
                self._short = False
                self._log.info("commits acknowledged by enough replicas again", replicas=acked)
            return
        self._under_replicated.inc()
        if not self._short:
            self._short = True
            self._log.warning(
                "commit acknowledged by fewer replicas than STITCH_WAIT_REPLICAS",
                replicas=acked,
                wanted=self.replicas,
                error=str(reply) if isinstance(reply, ResponseError) else None,
            )
