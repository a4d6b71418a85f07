"""The throttle's policy: default sizes, the reaction to the service's complaints, the order
slot-then-token, and which replies may be sent again (the retry policy)."""

from __future__ import annotations

import asyncio
import random

import pytest
from virtualtime import run

from llmtasks._errors import ConfigError
from llmtasks._ratelimit import ConcurrencyGate, RateLimiter
from llmtasks._throttle import (
    AUTH_GLITCH_RETRIES,
    LocalThrottle,
    RetryPolicy,
    default_burst,
    default_concurrency,
    local_throttle,
)
from llmtasks._transport import Kind, Reply


@pytest.mark.parametrize(
    ("rate", "period_s", "latency_s", "expected"),
    [
        (2000, 60.0, 1.0, 30),  # the documented cap of simultaneous requests
        (1800, 60.0, 1.0, 30),  # exactly 30 per second
        (1740, 60.0, 1.0, 29),
        (61, 60.0, 1.0, 2),  # rounded up: 1.02 calls in flight need 2
        (60, 60.0, 1.0, 1),
        (120, 60.0, 3.0, 6),  # three seconds per call: three times the calls in flight
        (120, 30.0, 1.0, 4),  # per period, not per minute
        (2, 60.0, 1.0, 1),
        (0, 60.0, 1.0, 1),  # never zero
    ],
)
def test_default_concurrency(rate: int, period_s: float, latency_s: float, expected: int) -> None:
    assert default_concurrency(rate, period_s, latency_s=latency_s) == expected


def test_default_concurrency_assumes_one_second_per_call() -> None:
    assert default_concurrency(300, 60.0) == 5


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(2, 1), (3, 2), (100, 2), (299, 2), (300, 3), (999, 9), (1000, 10), (2000, 10), (10**6, 10)],
)
def test_default_burst_is_one_percent_between_2_and_10_and_below_rate(
    rate: int, expected: int
) -> None:
    assert default_burst(rate) == expected


def _reply(kind: Kind, status_code: int | None = None, http_status: int | None = 200) -> Reply:
    return Reply(kind, http_status, status_code, "")


def test_react_slows_down_on_40202_and_429_only() -> None:
    async def main() -> list[float]:
        rates = []
        for reply in (
            _reply("retry", 40202),
            _reply("retry", None, 429),
            _reply("retry", 40209),
            _reply("unknown", 50000, 500),
            _reply("ok", 20000),
        ):
            limiter = RateLimiter(rate=100, period_s=60.0, burst=2)
            LocalThrottle(limiter, ConcurrencyGate(limit=5)).react(reply, admitted_at=1.0)
            rates.append(limiter.current_rate)
        return rates

    cut, cut_429, *untouched = run(main, start=10.0)
    assert cut == cut_429 == pytest.approx(2 + 98 / 2)
    assert untouched == [100.0] * 3


def test_react_passes_the_admission_time_so_a_stale_40202_does_not_cut_twice() -> None:
    async def main() -> tuple[float, float, float]:
        limiter = RateLimiter(rate=100, period_s=60.0, burst=2)
        throttle = LocalThrottle(limiter, ConcurrencyGate(limit=5))
        throttle.react(_reply("retry", 40202), admitted_at=5.0)  # cut at t=10
        await asyncio.sleep(10.0)  # well past the hold-off of a cut without an admission time
        once = limiter.current_rate
        throttle.react(_reply("retry", 40202), admitted_at=9.0)  # sent before the cut
        stale = limiter.current_rate
        throttle.react(_reply("retry", 40202), admitted_at=15.0)  # sent after it: cuts again
        return once, stale, limiter.current_rate

    once, stale, fresh = run(main, start=10.0)
    assert once == pytest.approx(2 + 98 * (0.5 + 0.1 * 10 / 60))  # recovering from one cut
    assert stale == once
    assert fresh == pytest.approx(2 + 98 * (0.5 + 0.1 * 10 / 60) / 2)


def test_react_narrows_the_gate_on_40209_and_widens_it_on_success() -> None:
    gate = ConcurrencyGate(limit=5, recover_after=2)
    limiter = RateLimiter(rate=100, period_s=60.0)
    throttle = LocalThrottle(limiter, gate)
    throttle.react(_reply("retry", 40209), admitted_at=0.0)
    assert gate.limit == 4
    throttle.react(_reply("retry", 40202), admitted_at=0.0)
    throttle.react(_reply("auth", 40100, 401), admitted_at=0.0)
    throttle.react(_reply("unknown", None, None), admitted_at=0.0)
    assert gate.limit == 4
    throttle.react(_reply("ok", 20000), admitted_at=0.0)
    assert gate.limit == 4
    throttle.react(_reply("ok", 20000), admitted_at=0.0)
    assert gate.limit == 5


def test_slot_holds_the_gate_then_takes_a_token_and_yields_its_time() -> None:
    """A call waiting for a free slot takes no token meanwhile: tokens taken while queued
    would let the queue leave together, over the rate."""

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(rate=10, period_s=9.0, margin_s=0.0, burst=1)  # 1 token per s
        gate = ConcurrencyGate(limit=1)
        throttle = LocalThrottle(limiter, gate)
        events: list[tuple[str, float]] = []

        async def call(name: str, hold_s: float) -> None:
            async with throttle.slot() as admitted_at:
                assert gate.in_use == 1
                events.append((name, admitted_at))
                events.append((name + " entered", loop.time()))
                await asyncio.sleep(hold_s)

        await asyncio.gather(call("a", 5.0), call("b", 0.0), call("c", 0.0))
        assert gate.in_use == 0
        return events

    # b and c queue for the slot from t=100. Their tokens are taken once they hold it: b's at
    # 105, c's a second later. Tokens taken while queued (at 101 and 102) would let b and c
    # leave together at 105, two calls in no time with one token per second.
    assert run(main, start=100.0) == [
        ("a", 100.0),
        ("a entered", 100.0),
        ("b", 105.0),
        ("b entered", 105.0),
        ("c", pytest.approx(106.0)),
        ("c entered", pytest.approx(106.0)),
    ]


RETRY_CASES = [
    # kind, successes, auth_glitches, idempotent -> retry?
    ("retry", 0, 0, False, True),  # 40202/40209/429: nothing was created
    ("retry", 5, 9, False, True),
    ("unknown", 3, 0, False, False),  # a lost reply of a POST may have created tasks
    ("unknown", 0, 0, True, True),  # ... but a GET or id_list may be asked again
    ("auth", 0, 0, False, False),  # refused from the first call: wrong credentials
    ("auth", 0, 0, True, False),
    ("auth", 1, 0, False, True),  # after a success: the service's glitch
    ("auth", 1, AUTH_GLITCH_RETRIES - 1, False, True),
    ("auth", 1, AUTH_GLITCH_RETRIES, False, False),  # a few tries, then stop
    ("funds", 3, 0, False, False),
    ("funds", 3, 0, True, False),
    ("fatal", 3, 0, True, False),
    ("ok", 3, 0, True, False),
]


@pytest.mark.parametrize(("kind", "successes", "glitches", "idempotent", "expected"), RETRY_CASES)
def test_retryable(
    kind: Kind, successes: int, glitches: int, idempotent: bool, expected: bool
) -> None:
    policy = RetryPolicy()
    reply = _reply(kind, 40100 if kind == "auth" else None)
    if idempotent:
        got = policy.retryable(
            reply, successes=successes, auth_glitches=glitches, idempotent=idempotent
        )
    else:  # the default is the careful one: a POST that may create tasks
        got = policy.retryable(reply, successes=successes, auth_glitches=glitches)
    assert got is expected


def test_a_few_auth_glitches_not_one_not_many() -> None:
    assert AUTH_GLITCH_RETRIES == 3


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.backoff_s, policy.max_backoff_s) == (8, 0.5, 30.0)


@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (20, 30.0)]
)
def test_delay_doubles_to_the_cap_drawn_from_the_upper_half(attempt: int, cap: float) -> None:
    random.seed(attempt)
    delays = [RetryPolicy().delay_s(attempt) for _ in range(2000)]
    assert cap / 2 <= min(delays) < cap / 2 * 1.01
    assert cap * 0.99 < max(delays) <= cap


def test_delay_follows_the_configured_backoff() -> None:
    policy = RetryPolicy(backoff_s=2.0, max_backoff_s=5.0)
    random.seed(1)
    assert all(1.0 <= policy.delay_s(1) <= 2.0 for _ in range(200))
    assert all(2.5 <= policy.delay_s(3) <= 5.0 for _ in range(200))


def test_local_throttle_builds_the_bucket_and_gate_from_the_rate() -> None:
    t = local_throttle(2000, 60.0)
    assert (t.limiter.rate, t.limiter.period_s) == (2000, 60.0)
    assert t.limiter.burst == default_burst(2000) == 10
    assert t.gate.limit == default_concurrency(2000, 60.0) == 30
    assert t.limiter.margin_s == pytest.approx(0.6)  # 1% of the period, the limiter's own
    given = local_throttle(120, 30.0, margin_s=0.5, concurrency=7, burst=3)
    assert (given.limiter.burst, given.limiter.margin_s, given.gate.limit) == (3, 0.5, 7)
    # A second function's bucket behind the same simultaneous calls.
    ready = local_throttle(20, 60.0, burst=1, gate=given.gate)
    assert ready.gate is given.gate and ready.limiter.rate == 20 and ready.limiter.burst == 1


@pytest.mark.parametrize(
    ("rate", "period_s", "burst", "words"),
    [
        (0, 60.0, None, "rate must be an integer of at least 2 calls, not 0"),
        (10, 0.0, None, "period_s must be a positive number of seconds, not 0.0"),
        (5, 60.0, 6, "burst must be an integer from 1 to rate - 1 (4), not 6"),
    ],
)
def test_local_throttle_says_what_is_impossible_as_a_config_error(
    rate: int, period_s: float, burst: int | None, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        local_throttle(rate, period_s, burst=burst)
    assert str(err.value) == words
