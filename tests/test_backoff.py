"""Reconnect backoff: exponential ceiling, full jitter, a bounded exponent, the give-up time."""

from __future__ import annotations

import random

import pytest

from worker import backoff
from worker.backoff import BASE_S, CAP_S, Backoff


def ceiling(n: int) -> float:
    return min(CAP_S, BASE_S * 2.0**n)


def test_constants() -> None:
    """The first delay is at most 50 ms and no delay exceeds 5 s."""
    assert (BASE_S, CAP_S) == (0.05, 5.0)


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
def test_delays_lie_under_the_exponential_ceiling(seed: int) -> None:
    """The n-th delay lies in [0, min(CAP_S, BASE_S * 2**n)] for n = 0..30."""
    random.seed(seed)
    pacing = Backoff(60)
    for n in range(31):
        delay = pacing.next_delay()
        assert 0 <= delay <= ceiling(n), (n, delay)


def test_delays_are_uniform_draws_from_the_ceiling() -> None:
    """Each delay is exactly random.uniform(0, ceiling(n)): same seed, same sequence."""
    pacing = Backoff(60)
    random.seed(7)
    actual = [pacing.next_delay() for _ in range(20)]
    random.seed(7)
    expected = [random.uniform(0, ceiling(n)) for n in range(20)]
    assert actual == expected


def test_full_jitter_goes_below_half_the_ceiling() -> None:
    """Early delays often fall below half their ceiling (equal jitter never does)."""
    below = 0
    for seed in range(50):
        random.seed(seed)
        pacing = Backoff(60)
        for n in range(4):
            below += pacing.next_delay() < ceiling(n) / 2
    assert 50 <= below <= 150  # 200 draws, about half below


def test_attempts_count_the_delays_handed_out() -> None:
    """attempts is the number of delays asked for so far."""
    pacing = Backoff(60)
    assert pacing.attempts == 0
    for n in range(1, 6):
        pacing.next_delay()
        assert pacing.attempts == n


def test_many_attempts_stay_capped_without_overflow() -> None:
    """5000 attempts raise no OverflowError and never exceed CAP_S."""
    random.seed(3)
    pacing = Backoff(60)
    delays = [pacing.next_delay() for _ in range(5000)]
    assert pacing.attempts == 5000
    assert max(delays) <= CAP_S
    assert max(delays[-100:]) > CAP_S / 2  # still drawn from the full capped range


def test_expired_after_the_give_up_time() -> None:
    """A give-up of 0 s is expired at once; a long one is not, and elapsed_s grows from 0."""
    assert Backoff(0).expired
    pacing = Backoff(3600)
    assert not pacing.expired
    assert 0 <= pacing.elapsed_s < 1
    assert pacing.give_up_at == pacing.started_at + 3600


def test_constants_are_read_when_a_backoff_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patched BASE_S/CAP_S apply to backoffs started afterwards (keeps outage tests fast)."""
    monkeypatch.setattr(backoff, "BASE_S", 0.001)
    monkeypatch.setattr(backoff, "CAP_S", 0.002)
    pacing = Backoff(60)
    assert max(pacing.next_delay() for _ in range(100)) <= 0.002
