"""AliasCache internals test_resolver.py leaves open: exact turnover, accounting, clear."""

from __future__ import annotations

import pytest

from resolver import AliasCache


def test_cap_below_two_is_refused() -> None:
    """A cache needs room for two generations of at least one entry."""
    with pytest.raises(ValueError, match="at least 2"):
        AliasCache(1)
    assert len(AliasCache(2)) == 0


def test_generation_turns_over_at_half_the_cap() -> None:
    """The young generation holds cap // 2 entries; the next insert retires it whole."""
    cache = AliasCache(4)
    for uid in ("a", "b", "c", "d"):
        cache.put("t", uid, uid)
    assert len(cache) == 4
    cache.put("t", "e", "e")  # young {c, d} becomes old, {a, b} is dropped
    assert [cache.get("t", uid) for uid in "ab"] == [None, None]
    assert len(cache) == 3
    assert [cache.get("t", uid) for uid in "cde"] == ["c", "d", "e"]


def test_promotion_moves_an_entry_not_copies_it() -> None:
    """A hit in the old generation moves the entry to the young one: len() is unchanged."""
    cache = AliasCache(4)
    for uid in ("a", "b", "c"):
        cache.put("t", uid, uid)
    assert len(cache) == 3
    assert cache.get("t", "a") == "a"
    assert len(cache) == 3


@pytest.mark.parametrize("cap", [2, 3, 4, 7, 10])
def test_cap_never_exceeded_with_hits_and_rewrites(cap: int) -> None:
    """Mixed puts, rewrites and promoting gets never push len() past the cap."""
    cache = AliasCache(cap)
    for i in range(200):
        cache.put("t" if i % 3 else "u", f"id-{i % 17}", f"to-{i}")
        cache.get("t", f"id-{(i * 7) % 17}")
        assert len(cache) <= cap


def test_put_rewrites_in_place() -> None:
    """Path compression rewrites an id's target without adding an entry."""
    cache = AliasCache(10)
    cache.put("t", "a", "b")
    cache.put("t", "a", "c")
    assert (cache.get("t", "a"), len(cache)) == ("c", 1)


def test_put_over_an_old_entry_replaces_it() -> None:
    """A new target for an id in the old generation wins over the old one."""
    cache = AliasCache(2)
    cache.put("t", "a", "b")
    cache.put("t", "x", "x")  # "a" is now old
    cache.put("t", "a", "c")
    assert cache.get("t", "a") == "c"
    assert len(cache) <= 2


def test_forget_tenant_keeps_the_count_right() -> None:
    """forget_tenant drops both generations of one tenant and len() counts what is left."""
    cache = AliasCache(8)
    for uid in ("a", "b", "c", "d"):
        cache.put("gone", uid, uid)  # fills young, then...
    cache.put("kept", "x", "x")  # ...retires it to old
    cache.put("gone", "e", "e")
    assert len(cache) == 6
    cache.forget_tenant("gone")
    assert len(cache) == 1
    assert cache.get("kept", "x") == "x"
    assert [cache.get("gone", uid) for uid in "abcde"] == [None] * 5
    cache.forget_tenant("never-seen")
    assert len(cache) == 1


def test_clear_empties_and_the_cache_stays_usable() -> None:
    """clear() forgets every tenant; the cap and later puts work as on a new cache."""
    cache = AliasCache(4)
    for i in range(7):
        cache.put(f"t{i % 2}", f"id-{i}", "r")
    cache.clear()
    assert len(cache) == 0
    assert cache.get("t0", "id-6") is None
    for i in range(20):
        cache.put("t", f"n-{i}", "r")
        assert len(cache) <= 4
    assert cache.get("t", "n-19") == "r"
