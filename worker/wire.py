"""Send commands without waiting, read their replies later: the worker's hot I/O path.

hiredis packs each command in one C call; redis-py's own packing walks every argument in
Python, and a 500-event commit carries about 6000 arguments. :class:`PipelinedConnection`
splits send from receive so the worker plans the next batch while Redis runs the previous
commit; :class:`RoundTrip` is the same path for one command waited for at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ResponseError

__all__ = ["PipelinedConnection", "RoundTrip", "pack"]

Command = Sequence[Any]


def pack(*commands: Command) -> bytes:
    """RESP for ``commands``, to send now or later."""
    return b"".join(hiredis.pack_command(tuple(c)) for c in commands)


class RoundTrip:
    """One command at a time on a pooled connection, packed by hiredis."""

    __slots__ = ("_client",)

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def request(self, packed: bytes) -> Any:
        """Send one packed command and wait; an error reply is returned as its ResponseError."""
        connection = PipelinedConnection(self._client)
        connection.send(packed, 1)
        return connection.reply()

    def requests(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` packed commands and wait for all their replies (errors returned)."""
        connection = PipelinedConnection(self._client)
        connection.send(packed, count)
        return [connection.reply() for _ in range(count)]

    def call(self, *args: Any) -> Any:
        """One command, waited for; an error reply is raised."""
        reply = self.request(pack(args))
        if isinstance(reply, ResponseError):
            raise reply
        return reply


class PipelinedConnection:
    """One connection held while replies are owed: send packed commands now, read their
    replies later, one at a time.

    Any failure drops the connection and every reply still owed: what was sent is either
    committed in Redis or still pending there, and recovery re-reads it.
    """

    __slots__ = ("_conn", "_owed", "_pool")

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None
        self._owed = 0

    def send(self, packed: bytes, count: int) -> None:
        """Write ``packed`` (``count`` commands) without waiting for anything."""
        if self._conn is None:
            self._conn = self._pool.get_connection()
        try:
            self._conn.send_packed_command([packed], check_health=False)
        except BaseException:
            self.reset()
            raise
        self._owed += count

    def reply(self) -> Any:
        """The oldest reply owed; an error reply is returned as its ResponseError."""
        if not self._owed:
            raise RuntimeError("no reply is owed on this channel")
        try:
            reply = self._conn.read_response()
        except ResponseError as exc:
            reply = exc
        except BaseException:
            self.reset()
            raise
        self._owed -= 1
        if not self._owed:  # back to the pool between bursts: nothing is held while idle
            self._pool.release(self._conn)
            self._conn = None
        return reply

    def reset(self) -> None:
        """Drop the connection (and the replies owed on it)."""
        conn, self._conn, self._owed = self._conn, None, 0
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)
