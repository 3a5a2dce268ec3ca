"""RetryPolicy: exponential backoff, its cap, and when it gives up."""

from __future__ import annotations

from datetime import timedelta

import pytest

import processor as p

MS = timedelta(milliseconds=1)


def test_delays_grow_by_the_multiplier_from_the_initial_interval() -> None:
    policy = p.RetryPolicy(initial_interval=100 * MS, multiplier=2)
    assert [policy.next_delay_ms(n, 0) for n in range(1, 6)] == [100, 200, 400, 800, 1600]


def test_a_multiplier_of_one_keeps_the_delay_constant() -> None:
    policy = p.RetryPolicy(initial_interval=250 * MS, multiplier=1)
    assert {policy.next_delay_ms(n, 0) for n in range(1, 20)} == {250}


def test_delays_are_capped_at_max_interval() -> None:
    policy = p.RetryPolicy(initial_interval=100 * MS, multiplier=3, max_interval=timedelta(seconds=1))
    assert [policy.next_delay_ms(n, 0) for n in range(1, 6)] == [100, 300, 900, 1000, 1000]
    assert policy.next_delay_ms(200, 0) == 1000  # no overflow far out


def test_max_attempts_counts_every_attempt_including_the_first() -> None:
    policy = p.RetryPolicy(initial_interval=100 * MS, max_attempts=3)
    assert policy.next_delay_ms(1, 0) == 100
    assert policy.next_delay_ms(2, 0) == 200
    assert policy.next_delay_ms(3, 0) is None  # the third failure was the last attempt
    assert policy.next_delay_ms(4, 0) is None


def test_max_attempts_of_one_never_retries() -> None:
    assert p.RetryPolicy(max_attempts=1).next_delay_ms(1, 0) is None


def test_max_duration_gives_up_when_the_next_wait_would_pass_it() -> None:
    policy = p.RetryPolicy(initial_interval=100 * MS, multiplier=2, max_duration=timedelta(seconds=1))
    assert policy.next_delay_ms(1, 0) == 100
    assert policy.next_delay_ms(3, 600) == 400      # retry at 1000 ms: still inside the budget
    assert policy.next_delay_ms(3, 601) is None     # retry at 1001 ms: past it
    assert policy.next_delay_ms(1, 5_000) is None


def test_the_default_policy_retries_with_a_capped_delay() -> None:
    policy = p.RetryPolicy()
    assert policy.next_delay_ms(1, 0) == 100
    assert policy.next_delay_ms(100, 10**9) == 30_000


def test_an_unlimited_policy_keeps_retrying_after_thousands_of_attempts() -> None:
    assert p.RetryPolicy().next_delay_ms(10_000, 10**12) == 30_000


@pytest.mark.parametrize("kwargs", [
    {"initial_interval": timedelta(0)},
    {"initial_interval": -MS},
    {"multiplier": 0.5},
    {"max_attempts": 0},
])
def test_nonsensical_policies_are_refused_when_built(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        p.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policies_are_frozen_values() -> None:
    policy = p.RetryPolicy(max_attempts=3)
    assert policy == p.RetryPolicy(max_attempts=3)
    with pytest.raises(AttributeError):
        policy.max_attempts = 4  # type: ignore[misc]
