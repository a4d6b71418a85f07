"""Client-side limits: calls per sliding window, and simultaneous calls.

RateLimiter is a token bucket of capacity C (``burst``) refilled at (L - C)/T tokens per
second, with L = ``rate`` and T = ``period_s + margin_s``. Over any closed interval [a, b]
the bucket admits at most C + refill * (b - a) calls, so at most L in any window of T, from
a standing start and at any phase; and L calls per T arriving with up to ``margin_s`` of
delay jitter still make at most L per ``period_s`` where the service counts them.

This is the bucket of design.md, but not aiolimiter's code: aiolimiter fixes its rate in
``__init__`` (a private ``_rate_per_sec``) and offers no way to change it. Replacing the
limiter to slow down would start a fresh, full bucket (a burst of C) and strand its waiters;
its only public lever, ``acquire(amount)``, cannot slow down by more than a factor C. It also
lets a newcomer overtake a waiter it has just woken. Here the rate can fall and recover
while the bucket level is kept, so a change of rate never admits a burst, and waiters are
served strictly in order.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from types import TracebackType

# A timer lands on a float clock, a hair before or after the exact moment the bucket
# reaches the admission threshold; the tolerance saves a second wake-up for that hair.
# 1e-9 of a token cannot add a call: a window would need a whole extra token for that.
_EPS = 1e-9


class RateLimiter:
    """Never more than `rate` admissions in any sliding window of `period_s + margin_s` seconds.

    Every call, retries included, takes one token with ``await acquire()``. On a 40202 call
    ``slow_down(admitted_at)``: the refill rate halves (down to FLOOR of the configured one)
    and then climbs back linearly, RECOVERY of the configured refill per ``period_s``.
    """

    FLOOR = 1 / 16  # slowest refill, as a fraction of the configured refill
    RECOVERY = 0.1  # refill regained per period_s after a cut, as a fraction of the configured
    HOLDOFF = 0.05  # slow_down() without admitted_at: ignored this many periods after a cut

    def __init__(
        self, *, rate: int, period_s: float, margin_s: float | None = None, burst: int = 1
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 2:
            raise ValueError(f"rate must be an integer of at least 2 calls, not {rate!r}")
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be a positive number of seconds, not {period_s!r}")
        if margin_s is None:
            margin_s = period_s / 100
        if not (math.isfinite(margin_s) and margin_s >= 0):
            raise ValueError(f"margin_s must be zero or more seconds, not {margin_s!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst < rate:
            raise ValueError(
                f"burst must be an integer from 1 to rate - 1 ({rate - 1}), not {burst!r}"
            )
        self._rate = rate
        self._period_s = float(period_s)
        self._margin_s = float(margin_s)
        self._burst = burst
        self._max_refill = (rate - burst) / (self._period_s + self._margin_s)  # tokens per second
        self._level = 0.0  # tokens in the bucket at _checked_at; at most burst (+ _EPS)
        self._checked_at = 0.0
        self._cut_to = 1.0  # refill fraction right after the last cut
        self._cut_at = -math.inf
        self._waiters: deque[asyncio.Future[float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def period_s(self) -> float:
        return self._period_s

    @property
    def margin_s(self) -> float:
        return self._margin_s

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def current_rate(self) -> float:
        """Most admissions now allowed per window of period_s + margin_s; ``rate`` at full speed."""
        return self._burst + (self._rate - self._burst) * self._fraction(self._now())

    async def acquire(self) -> float:
        """Wait for a token, in order of arrival. Returns the admission time on the loop's clock."""
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        self._leak(now)
        if not self._waiters and self._ready():
            self._level += 1
            return now
        fut: asyncio.Future[float] = loop.create_future()
        self._waiters.append(fut)
        self._arm()
        try:
            return await fut
        except asyncio.CancelledError:
            # A token handed over just before the cancellation stays spent: errs on the slow side.
            if fut.cancelled():
                if fut in self._waiters:  # _wake() may have dropped it already
                    self._waiters.remove(fut)
                self._arm()
            raise

    def slow_down(self, admitted_at: float | None = None) -> bool:
        """Halve the refill rate for the whole run; True when it did.

        A call admitted before the last cut (``admitted_at`` from acquire()) reports on the old
        rate and is ignored, so a volley of 40202 from calls already in flight cuts only once.
        Without ``admitted_at``, signals within HOLDOFF periods of the last cut are ignored.
        """
        now = self._now()
        if admitted_at is not None:
            if admitted_at <= self._cut_at:
                return False
        elif now - self._cut_at < self.HOLDOFF * self._period_s:
            return False
        self._leak(now)  # the tokens drained so far drained at the old rate
        self._cut_to = max(self.FLOOR, self._fraction(now) / 2)
        self._cut_at = now
        self._arm()
        return True

    def _now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return self._loop.time() if self._loop is not None else time.monotonic()

    def _fraction(self, t: float) -> float:
        if self._cut_to >= 1.0:
            return 1.0
        return min(1.0, self._cut_to + self.RECOVERY * (t - self._cut_at) / self._period_s)

    def _leak(self, now: float) -> None:
        # Drain at the refill rate of the last check: the rate only rises between cuts, so this
        # never drains faster than the schedule allows.
        if now > self._checked_at:
            refill = self._max_refill * self._fraction(self._checked_at)
            self._level = max(0.0, self._level - (now - self._checked_at) * refill)
            self._checked_at = now

    def _ready(self) -> bool:
        return self._level <= self._burst - 1 + _EPS

    def _arm(self) -> None:
        """(Re)start the timer that admits the first waiter once the bucket has drained enough."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters and self._loop is not None:
            when = self._checked_at
            if not self._ready():
                refill = self._max_refill * self._fraction(self._checked_at)
                when += (self._level - (self._burst - 1)) / refill
                # A wait shorter than the clock's resolution rounds to "now": the timer would
                # find the bucket unchanged and re-arm for the same instant forever.
                when = max(when, math.nextafter(self._checked_at, math.inf))
            self._timer = self._loop.call_at(when, self._wake)

    def _wake(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        self._leak(now)
        while self._waiters and self._ready():
            fut = self._waiters.popleft()
            if not fut.done():
                self._level += 1
                fut.set_result(now)
        self._arm()


class ConcurrencyGate:
    """An adjustable cap on simultaneous calls (the service allows 30 per account).

    ``async with gate:`` holds one slot. ``lower()`` on a 40209 takes one off the cap (not
    below 1; calls already inside finish, new ones wait until they fit); each run of
    ``recover_after`` consecutive ``success()`` calls gives one back, up to ``max_limit``.
    """

    def __init__(self, *, limit: int, recover_after: int = 20) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer of at least 1, not {limit!r}")
        if (
            isinstance(recover_after, bool)
            or not isinstance(recover_after, int)
            or recover_after < 1
        ):
            raise ValueError(
                f"recover_after must be an integer of at least 1, not {recover_after!r}"
            )
        self._max_limit = limit
        self._limit = limit
        self._recover_after = recover_after
        self._in_use = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def max_limit(self) -> int:
        return self._max_limit

    @property
    def in_use(self) -> int:
        return self._in_use

    async def __aenter__(self) -> None:
        if not self._waiters and self._in_use < self._limit:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # _admit() has counted the slot for us
        except asyncio.CancelledError:
            if not fut.cancelled():
                self._release()
            elif fut in self._waiters:  # _admit() may have dropped it already
                self._waiters.remove(fut)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def lower(self) -> None:
        """One simultaneous call too many (40209): take one off the cap, not below 1."""
        self._limit = max(1, self._limit - 1)
        self._successes = 0

    def success(self) -> None:
        """A call went through: after a run of them, give one back to the cap."""
        self._successes += 1
        if self._successes >= self._recover_after and self._limit < self._max_limit:
            self._limit += 1
            self._successes = 0
            self._admit()

    def _release(self) -> None:
        self._in_use -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._in_use < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._in_use += 1
                fut.set_result(None)
