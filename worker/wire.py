"""Send commands without waiting, read their replies later: the worker's hot I/O path.

hiredis packs each command in one C call; redis-py's own packing walks every argument in
Python, and a 500-event commit carries about 6000 arguments. Splitting send from receive
lets the worker plan the next batch while Redis runs the previous commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ResponseError

__all__ = ["InFlight", "Wire"]

Command = Sequence[Any]


class InFlight:
    """Commands written to a pooled connection whose replies have not been read yet."""

    __slots__ = ("_conn", "_count", "_pool")

    def __init__(self, pool: redis.ConnectionPool, conn: Any, count: int) -> None:
        self._pool = pool
        self._conn = conn
        self._count = count

    def replies(self) -> list[Any]:
        """Every reply in order; an error reply is returned as its ResponseError, not raised."""
        conn, out = self._conn, []
        try:
            for _ in range(self._count):
                try:
                    out.append(conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._pool.release(conn)
        return out


class Wire:
    __slots__ = ("_pool",)

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool

    def send(self, *commands: Command) -> InFlight:
        conn = self._pool.get_connection()
        try:
            packed = b"".join(hiredis.pack_command(tuple(c)) for c in commands)
            conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            self._pool.release(conn)
            raise
        return InFlight(self._pool, conn, len(commands))

    def call(self, *args: Any) -> Any:
        """One command, waited for; an error reply is raised."""
        [reply] = self.send(args).replies()
        if isinstance(reply, ResponseError):
            raise reply
        return reply
