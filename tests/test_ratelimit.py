"""The rate limiter and the concurrency gate, on a virtual clock (tests/virtualtime.py).

Every timestamp is exact, so the guarantees are checked exactly: closed windows (an
admission on either edge counts), every window that starts at an admission.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import pytest
from aiolimiter import AsyncLimiter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtualtime import run

from llmtasks._ratelimit import ConcurrencyGate, RateLimiter


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most timestamps in any closed window [t, t + window_s] that starts at one of them."""
    ts = sorted(times)
    return max(
        (bisect.bisect_right(ts, t + window_s) - bisect.bisect_left(ts, t) for t in ts),
        default=0,
    )


def saturate(
    acquire: Callable[[], Awaitable[object]], *, workers: int, until: float
) -> Callable[[], Coroutine[Any, Any, list[float]]]:
    """A main() where `workers` tasks acquire back to back until the clock reaches `until`."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []

        async def worker() -> None:
            while loop.time() < until:
                await acquire()
                times.append(loop.time())

        await asyncio.gather(*(worker() for _ in range(workers)))
        return times

    return main


# --- the window guarantee ------------------------------------------------------------------


@st.composite
def limiter_args(draw: st.DrawFn) -> dict[str, object]:
    rate = draw(st.integers(2, 120))
    period_s = draw(st.floats(0.05, 500.0))
    margin_s = draw(st.one_of(st.none(), st.floats(0.0, period_s / 5)))
    burst = draw(st.integers(1, min(rate - 1, 8)))
    return {"rate": rate, "period_s": period_s, "margin_s": margin_s, "burst": burst}


def arrivals(limiter: RateLimiter, rnd: random.Random, *, slow_downs: bool) -> list[float]:
    """Many acquirers with random bursts, pauses (some long enough to refill the bucket) and
    give-ups (acquire cancelled while waiting). Returns the admission times."""
    window_s = limiter.period_s + limiter.margin_s
    workers = rnd.randint(1, 40)
    calls = rnd.randint(limiter.rate, 4 * limiter.rate)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        left = [calls]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                pause = rnd.choice(
                    [0.0, 0.0, rnd.uniform(0, window_s / 3), rnd.uniform(0, 2 * window_s)]
                )
                await asyncio.sleep(pause)
                if rnd.random() < 0.1:  # give up while waiting: must not use a token
                    try:
                        async with asyncio.timeout(rnd.uniform(0, window_s / limiter.rate)):
                            times.append(await limiter.acquire())
                    except TimeoutError:
                        pass
                else:
                    admitted_at = await limiter.acquire()
                    assert admitted_at == loop.time()
                    times.append(admitted_at)
                    if slow_downs and rnd.random() < 0.05:
                        limiter.slow_down(admitted_at)

        await asyncio.gather(*(worker() for _ in range(workers)))
        return times

    return run(main, start=rnd.choice([0.0, rnd.uniform(0, 1e6)]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=limiter_args(), rnd=st.randoms(use_true_random=False), slow=st.booleans())
def test_never_more_than_rate_in_any_window(
    args: dict[str, object], rnd: random.Random, slow: bool
) -> None:
    limiter = RateLimiter(**args)  # type: ignore[arg-type]
    times = arrivals(limiter, rnd, slow_downs=slow)
    assert times
    window_s = limiter.period_s + limiter.margin_s
    assert max_in_window(times, window_s) <= limiter.rate
    # Where the service counts: the same calls arriving up to margin_s later, each by its own
    # delay, never make more than `rate` in a window of period_s.
    arrived = [t + rnd.uniform(0, limiter.margin_s) for t in times]
    assert max_in_window(arrived, limiter.period_s) <= limiter.rate


@settings(max_examples=100, deadline=None)
@given(args=limiter_args(), rnd=st.randoms(use_true_random=False))
def test_bucket_bound_holds_for_every_interval(args: dict[str, object], rnd: random.Random) -> None:
    # Stronger than the window check: any n admissions span at least (n - burst) / refill.
    limiter = RateLimiter(**args)  # type: ignore[arg-type]
    times = sorted(arrivals(limiter, rnd, slow_downs=False))
    refill = (limiter.rate - limiter.burst) / (limiter.period_s + limiter.margin_s)
    lowest = float("inf")
    for k, t in enumerate(times):
        lowest = min(lowest, k - refill * t)
        assert k - refill * t - lowest <= limiter.burst - 1 + 1e-6


def test_utilization_at_the_defaults_is_at_least_98_percent() -> None:
    limiter = RateLimiter(rate=2000, period_s=60)
    assert limiter.margin_s == pytest.approx(0.6)
    start, periods = 1000.0, 20
    times = run(saturate(limiter.acquire, workers=50, until=start + periods * 60), start=start)
    per_period = [
        sum(1 for t in times if start + k * 60 <= t < start + (k + 1) * 60) for k in range(periods)
    ]
    assert min(per_period) >= 0.98 * 2000, per_period
    assert max_in_window(times, 60.6) <= 2000
    # Expected: (L - C) / L * W / (W + m) = 1999/2000 * 60/60.6, about 98.96%
    assert sum(per_period) / (periods * 2000) >= 0.989


def test_plain_aiolimiter_lets_twice_the_rate_through_in_the_first_window() -> None:
    # Why the limiter is not a plain AsyncLimiter(2000, 60): its bucket starts full, so the
    # first 60 s admit the 2000 of the full bucket plus 2000 refilled.
    limiter = AsyncLimiter(2000, 60)
    times = run(saturate(limiter.acquire, workers=50, until=60.0), start=0.0)
    first_window = sum(1 for t in times if t <= 60.0)
    assert first_window >= 1.9 * 2000


@settings(max_examples=30, deadline=None)
@given(args=limiter_args(), workers=st.integers(1, 30), start=st.floats(0, 1e5))
def test_aiolimiter_with_the_design_arithmetic_holds_the_window(
    args: dict[str, object], workers: int, start: float
) -> None:
    # design.md's AsyncLimiter(max_rate=C, time_period=C*T/(L-C)) is sound; we only need our
    # own bucket because that one cannot change its rate (see the module docstring).
    rate, burst = int(args["rate"]), int(args["burst"])  # type: ignore[call-overload]
    limiter = RateLimiter(**args)  # type: ignore[arg-type]
    window_s = limiter.period_s + limiter.margin_s
    plain = AsyncLimiter(max_rate=burst, time_period=burst * window_s / (rate - burst))
    main = saturate(plain.acquire, workers=workers, until=start + 3 * window_s)
    times = run(main, start=start, tick_s=1e-6)
    assert max_in_window(times, window_s) <= rate


# --- slow_down -----------------------------------------------------------------------------


def admitted_integral(cuts: list[tuple[float, float]], recovery_per_s: float, t: float) -> float:
    """Integral from 0 to t of the refill fraction, for cuts [(cut_at, fraction_after)]."""
    total, segments = 0.0, [(-1e18, 1.0), *cuts]
    for k, (cut_at, frac) in enumerate(segments):
        end = min(t, segments[k + 1][0]) if k + 1 < len(segments) else t
        lo = max(cut_at, 0.0)
        if end <= lo:
            continue
        full_at = cut_at + (1.0 - frac) / recovery_per_s  # where the fraction is back to 1
        ramp_end = min(end, max(full_at, lo))
        f_lo = min(1.0, frac + recovery_per_s * (lo - cut_at))
        f_end = min(1.0, frac + recovery_per_s * (ramp_end - cut_at))
        total += (f_lo + f_end) / 2 * (ramp_end - lo) + (end - ramp_end)
    return total


def test_slow_down_halves_without_a_burst_and_recovers_to_the_configured_rate() -> None:
    limiter = RateLimiter(rate=2000, period_s=60)
    refill = 1999 / 60.6
    samples: list[tuple[float, float]] = []
    cuts: list[tuple[float, float]] = []

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        saturated = asyncio.ensure_future(saturate(limiter.acquire, workers=40, until=600.0)())
        await asyncio.sleep(100.0)
        assert limiter.current_rate == 2000
        assert limiter.slow_down()
        cuts.append((loop.time(), 0.5))
        assert limiter.current_rate == pytest.approx(1 + 1999 / 2)
        while loop.time() < 600:
            samples.append((loop.time(), limiter.current_rate))
            await asyncio.sleep(1.0)
        return await saturated

    times = sorted(run(main))
    # Right after the cut the spacing doubles: no call comes sooner than the halved rate allows.
    after = [t for t in times if t >= 100.0]
    gaps = [b - a for a, b in itertools.pairwise(after[:6])]
    assert after[0] >= 100.0 and min(gaps) >= 2 / refill * 0.99, gaps
    # Every interval holds at most burst + the admitted integral of the schedule.
    recovery = RateLimiter.RECOVERY / 60
    lowest = float("inf")
    for k, t in enumerate(times):
        g = k - refill * admitted_integral(cuts, recovery, t)
        lowest = min(lowest, g)
        assert g - lowest <= 1e-6
    # Recovery: rate climbs steadily back to, and never above, the configured rate.
    rates = [r for _, r in samples]
    assert rates == sorted(rates) and max(rates) == 2000
    assert all(r == 2000 for t, r in samples if t >= 100 + 5 * 60)
    assert max_in_window(times, 60.6) <= 2000
    late = sum(1 for t in times if 500 <= t < 560)
    assert late >= 0.98 * 2000


def test_a_volley_of_stale_40202_cuts_only_once() -> None:
    limiter = RateLimiter(rate=100, period_s=10)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        in_flight = [await limiter.acquire() for _ in range(30)]
        assert limiter.slow_down(in_flight[-1])
        rate = limiter.current_rate
        assert not any(limiter.slow_down(t) for t in in_flight)  # sent before the cut
        assert limiter.current_rate == rate
        assert limiter.slow_down(await limiter.acquire())  # sent after the cut: real news
        assert limiter.current_rate < rate
        # Without admitted_at, a hold-off of HOLDOFF periods stands in for it.
        rate = limiter.current_rate
        assert not limiter.slow_down()
        await asyncio.sleep(limiter.HOLDOFF * 10)
        assert limiter.slow_down()
        assert limiter.current_rate < rate
        for _ in range(20):  # repeated cuts stop at the floor
            await asyncio.sleep(1.0)
            limiter.slow_down()
        floor = 1 + 99 * RateLimiter.FLOOR
        assert limiter.current_rate == pytest.approx(floor, rel=0.05)
        assert limiter.current_rate >= floor
        await asyncio.sleep(10 / RateLimiter.RECOVERY + 1)
        assert limiter.current_rate == 100
        assert loop.time() > 0

    run(main)


# --- order, cancellation, real loop, arguments --------------------------------------------


def test_waiters_are_served_in_order_and_a_cancelled_one_uses_no_token() -> None:
    limiter = RateLimiter(rate=11, period_s=10, margin_s=0)  # one token a second

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await limiter.acquire() == 0.0
        order: list[tuple[int, float]] = []

        async def waiter(n: int) -> None:
            await limiter.acquire()
            order.append((n, loop.time()))

        tasks = [asyncio.ensure_future(waiter(n)) for n in range(5)]
        await asyncio.sleep(0.5)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == [(0, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]

    run(main)


async def test_works_on_a_real_event_loop() -> None:
    # Lower bounds only: a slow machine can make the limiter late, never early.
    limiter = RateLimiter(rate=5, period_s=0.1, margin_s=0.0, burst=2)  # 30 tokens a second
    times = await asyncio.gather(*(limiter.acquire() for _ in range(12)))
    assert max_in_window(times, 0.1) <= 5
    assert max(times) - min(times) >= (12 - 2) / 30 * 0.999


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1, "period_s": 60}, "rate must be an integer of at least 2"),
        ({"rate": 2000.0, "period_s": 60}, "rate must be an integer"),
        ({"rate": True, "period_s": 60}, "rate must be an integer"),
        ({"rate": 10, "period_s": 0}, "period_s must be a positive"),
        ({"rate": 10, "period_s": float("inf")}, "period_s must be a positive"),
        ({"rate": 10, "period_s": 60, "margin_s": -1}, "margin_s must be zero or more"),
        ({"rate": 10, "period_s": 60, "margin_s": float("nan")}, "margin_s must be zero or more"),
        (
            {"rate": 10, "period_s": 60, "burst": 10},
            r"burst must be an integer from 1 to rate - 1 \(9\)",
        ),
        ({"rate": 10, "period_s": 60, "burst": 0}, "burst must be an integer from 1"),
    ],
)
def test_limiter_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_limiter_properties() -> None:
    limiter = RateLimiter(rate=10, period_s=5, margin_s=0.25, burst=3)
    assert (limiter.rate, limiter.period_s, limiter.margin_s, limiter.burst) == (10, 5.0, 0.25, 3)
    assert limiter.current_rate == 10
    assert RateLimiter(rate=2000, period_s=60).margin_s == pytest.approx(0.6)


# --- ConcurrencyGate -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 30), rnd=st.randoms(use_true_random=False))
def test_gate_never_admits_more_than_its_limit(limit: int, rnd: random.Random) -> None:
    gate = ConcurrencyGate(limit=limit, recover_after=rnd.randint(1, 10))
    inside: list[int] = []

    async def call() -> None:
        await asyncio.sleep(rnd.uniform(0, 5))
        async with gate:
            inside.append(gate.in_use)
            # lower() comes right before a slot is given back, so this holds at every entry
            assert gate.in_use <= gate.limit
            await asyncio.sleep(rnd.choice([0.0, rnd.uniform(0, 2)]))
            if rnd.random() < 0.1:
                gate.lower()
            else:
                gate.success()

    async def main() -> None:
        await asyncio.gather(*(call() for _ in range(rnd.randint(1, 200))))

    run(main)
    assert gate.in_use == 0
    assert 1 <= gate.limit <= gate.max_limit == limit
    assert max(inside, default=0) <= limit


def test_gate_lowered_while_full_admits_nobody_until_below_the_new_limit() -> None:
    gate = ConcurrencyGate(limit=5, recover_after=3)

    async def main() -> None:
        release = asyncio.Event()
        entered: list[int] = []

        async def holder() -> None:
            async with gate:
                await release.wait()

        async def newcomer(n: int) -> None:
            async with gate:
                entered.append(n)
                await asyncio.sleep(1.0)

        holders = [asyncio.ensure_future(holder()) for _ in range(5)]
        await asyncio.sleep(0)
        assert gate.in_use == 5
        gate.lower()
        gate.lower()
        assert (gate.limit, gate.in_use) == (3, 5)
        newcomers = [asyncio.ensure_future(newcomer(n)) for n in range(3)]
        await asyncio.sleep(0.1)
        assert entered == []
        release.set()  # the five holders leave; only three may come in
        await asyncio.sleep(0.1)
        assert gate.in_use == 3 and entered == [0, 1, 2]
        await asyncio.gather(*holders, *newcomers)
        assert gate.in_use == 0

        for _ in range(10):
            gate.lower()
        assert gate.limit == 1  # floor
        gate.success()
        gate.success()
        gate.lower()  # a failure breaks the run of successes
        gate.success()
        gate.success()
        assert gate.limit == 1
        gate.success()
        assert gate.limit == 2
        for _ in range(3 * 10):
            gate.success()
        assert gate.limit == 5  # never above the configured limit

    run(main)


def test_gate_recovery_lets_a_waiter_in() -> None:
    gate = ConcurrencyGate(limit=2, recover_after=1)

    async def main() -> None:
        async with gate:
            gate.lower()
            waiter = asyncio.ensure_future(gate.__aenter__())
            await asyncio.sleep(0)
            assert not waiter.done()
            gate.success()  # limit back to 2: the waiter fits next to us
            await asyncio.sleep(0)
            assert waiter.done() and gate.in_use == 2
            await gate.__aexit__(None, None, None)
        assert gate.in_use == 0

    run(main)


def test_gate_cancelled_waiter_takes_no_slot() -> None:
    gate = ConcurrencyGate(limit=1)

    async def main() -> None:
        order: list[str] = []

        async def enter(name: str) -> None:
            async with gate:
                order.append(name)
                await asyncio.sleep(1)

        first = asyncio.ensure_future(enter("a"))
        await asyncio.sleep(0)
        cancelled = asyncio.ensure_future(enter("b"))
        last = asyncio.ensure_future(enter("c"))
        await asyncio.sleep(0.5)
        cancelled.cancel()
        await asyncio.gather(first, cancelled, last, return_exceptions=True)
        assert order == ["a", "c"] and gate.in_use == 0

        # Cancelled just after being handed the slot: the slot is given back.
        async with gate:
            handed = asyncio.ensure_future(gate.__aenter__())
            await asyncio.sleep(0)
        handed.cancel()
        await asyncio.gather(handed, return_exceptions=True)
        assert gate.in_use == 0

    run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be an integer of at least 1"),
        ({"limit": 2.5}, "limit must be an integer"),
        ({"limit": 5, "recover_after": 0}, "recover_after must be an integer of at least 1"),
    ],
)
def test_gate_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConcurrencyGate(**kwargs)  # type: ignore[arg-type]


def test_virtual_clock_reports_a_deadlock_instead_of_hanging() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(RuntimeError, match="deadlock"):
        run(main)


# --- sharper tests, from the survivors of mutation testing (docs/testing.md) ----------------


def test_slow_down_without_admission_time_is_held_off_for_5_percent_of_the_period() -> None:
    async def main() -> list[bool]:
        limiter = RateLimiter(rate=100, period_s=60.0)  # hold-off: 3 s
        got = [limiter.slow_down()]
        await asyncio.sleep(2.9)
        got.append(limiter.slow_down())  # the same volley: ignored
        await asyncio.sleep(0.2)
        got.append(limiter.slow_down())  # 3.1 s after the cut: a new complaint
        return got

    assert run(main, start=50.0) == [True, False, True]


def test_rate_read_outside_the_loop_uses_the_loop_clock_it_ran_on() -> None:
    """current_rate read after the loop has stopped (a summary at the end of a run) is
    computed on the clock the limiter ran on, not on another one."""

    async def main() -> RateLimiter:
        limiter = RateLimiter(rate=100, period_s=60.0, burst=2)
        await limiter.acquire()
        limiter.slow_down()
        return limiter

    limiter = run(main, start=1e7)  # a virtual clock far from time.monotonic()
    assert limiter.current_rate == pytest.approx(2 + 98 / 2)


def test_a_waiter_cancelled_as_its_token_comes_raises_cancelled_and_takes_none() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(rate=2, period_s=1.0, margin_s=0.0, burst=1)  # 1 token per s
        start = loop.time()
        await limiter.acquire()
        # Registered before the limiter's own timer for the same instant: runs just before it.
        waiter = asyncio.ensure_future(limiter.acquire())
        loop.call_at(start + 1.0, waiter.cancel)
        await asyncio.sleep(0)  # the waiter queues and arms the timer for start + 1
        [outcome] = await asyncio.gather(waiter, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert await limiter.acquire() == start + 1.0  # its token was not used

    run(main, start=10.0)


def test_gate_recovers_one_slot_per_20_successes_by_default() -> None:
    gate = ConcurrencyGate(limit=5)
    gate.lower()
    gate.lower()
    limits = []
    for _ in range(40):
        gate.success()
        limits.append(gate.limit)
    assert limits == [3] * 19 + [4] * 20 + [5]


def test_gate_rejects_a_fractional_recover_after() -> None:
    with pytest.raises(ValueError, match="recover_after must be an integer"):
        ConcurrencyGate(limit=5, recover_after=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recover_after must be an integer"):
        ConcurrencyGate(limit=5, recover_after=True)


def test_gate_waiter_cancelled_raises_cancelled_whether_or_not_a_release_came_first() -> None:
    async def main() -> None:
        gate = ConcurrencyGate(limit=1)
        await gate.__aenter__()
        queued = asyncio.ensure_future(gate.__aenter__())
        await asyncio.sleep(0)
        queued.cancel()  # still queued when it learns of it
        [outcome] = await asyncio.gather(queued, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError) and gate.in_use == 1

        dropped = asyncio.ensure_future(gate.__aenter__())
        await asyncio.sleep(0)
        dropped.cancel()
        await gate.__aexit__(None, None, None)  # the release drops it before it learns
        [outcome] = await asyncio.gather(dropped, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError) and gate.in_use == 0
        async with gate:  # nothing stale left behind: the free slot is taken at once
            assert gate.in_use == 1

    run(main)


def test_limiter_refuses_a_burst_that_is_not_a_whole_number() -> None:
    # bool is an int subclass: True would pass for a burst of 1 without its own check.
    for burst in (True, 2.0, 2.5):
        with pytest.raises(ValueError, match=r"burst must be an integer from 1 to rate - 1 \(9\)"):
            RateLimiter(rate=10, period_s=60, burst=burst)  # type: ignore[arg-type]


def test_after_a_full_burst_the_next_waits_only_for_one_token_to_drain() -> None:
    # 7 tokens a second drain from a bucket of 3: the fourth call waits until the level is
    # back at burst - 1 (1/7 s), not until the bucket is empty.
    limiter = RateLimiter(rate=10, period_s=1.0, margin_s=0.0, burst=3)

    async def main() -> list[float]:
        return [await limiter.acquire() for _ in range(6)]

    times = run(main)
    assert times[:3] == [0.0, 0.0, 0.0]
    assert times[3:] == pytest.approx([1 / 7, 2 / 7, 3 / 7])
