"""Placeholder ids that must never take part in a link.

Starts from PostHog's server-side list (``person-merge-service.ts``): junk ids such as
``"null"`` or ``"undefined"`` would otherwise fold thousands of shoppers into one person.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_CASE_INSENSITIVE", "DEFAULT_CASE_SENSITIVE", "PlaceholderRule"]

DEFAULT_CASE_INSENSITIVE: tuple[str, ...] = (
    "anonymous",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
)
DEFAULT_CASE_SENSITIVE: tuple[str, ...] = ("[object Object]", "NaN", "None", "none", "null", "0")


def _quoted(values: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        out.update((value, f"'{value}'", f'"{value}"'))
    return out


class PlaceholderRule:
    """Decides whether an id is a placeholder; extra ids are matched case-insensitively."""

    __slots__ = ("_exact", "_folded")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._folded = frozenset(_quoted(v.casefold() for v in (*DEFAULT_CASE_INSENSITIVE, *extra)))
        self._exact = frozenset(_quoted(DEFAULT_CASE_SENSITIVE))

    def __call__(self, uid: str) -> bool:
        stripped = uid.strip()
        if not stripped:
            return True
        return stripped in self._exact or stripped.casefold() in self._folded
