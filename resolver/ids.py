"""How ids cross between Redis (bytes) and Python (str): one rule for the library and worker.

Ids are UTF-8. A value another program wrote that is not UTF-8 is still followed, losslessly:
it decodes with ``surrogateescape`` and encodes back to the same bytes. The worker's cache
never holds such an id (see ``worker.committer``): the commit script resolves it byte for byte.
"""

from __future__ import annotations

__all__ = ["decode_id", "encode_id", "utf8_id"]


def decode_id(value: bytes | str) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def encode_id(uid: str) -> bytes:
    return uid.encode("utf-8", "surrogateescape")


def utf8_id(value: bytes | str) -> str | None:
    """The id, or None if it is not UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None
