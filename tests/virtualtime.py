"""An asyncio event loop on a virtual clock, for exact and fast timing tests.

The clock stands still while callbacks are ready and jumps straight to the next timer when
nothing is, so a test can run hours of simulated traffic in milliseconds and every timestamp
it records is exact. Sockets still work (the selector is polled without waiting), but
nothing real takes time: use it for code that only waits on timers.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

SPIN_LIMIT = 1_000_000  # loop passes at one instant before we call it a busy loop


class _VirtualSelector(selectors.DefaultSelector):
    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if not events and timeout != 0:
            self.loop._advance(timeout)
        elif self.loop.tick_s:
            self.loop._set_now(self.loop.time() + self.loop.tick_s)
        else:
            self.loop._passes += 1
            if self.loop._passes > SPIN_LIMIT:
                # Raised here, outside any callback, so the test fails instead of hanging:
                # the loop would swallow it (and pytest-timeout's) from a callback.
                raise RuntimeError(
                    f"virtual time: {SPIN_LIMIT} loop passes at t={self.loop.time()}"
                )
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0, tick_s: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.tick_s = tick_s
        self._set_now(float(start))

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float | None) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if timeout is None or not scheduled:
            raise RuntimeError("virtual time: every task waits and no timer is set (deadlock)")
        when = scheduled[0].when()  # _run_once has dropped cancelled timers from the head
        # Land exactly on the timer rather than on now + (when - now), which may round.
        self._set_now(max(self._now, when) if when <= self._now + timeout else self._now + timeout)

    def _set_now(self, now: float) -> None:
        self._now = now
        self._passes = 0
        # The loop runs the timers due before time() + resolution. The clock lands exactly on
        # each timer, so the resolution only has to make time() + resolution > time(); a fixed
        # one would be lost to rounding once the clock reads large enough, and the loop spin.
        self._clock_resolution = 2 * math.ulp(now)


def run(
    main: Callable[[], Coroutine[Any, Any, T]], *, start: float = 0.0, tick_s: float = 0.0
) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop starting at ``start``.

    With ``tick_s``, every pass of the loop that runs callbacks also moves the clock on by
    that much, as a real clock would: code that polls the clock until it has moved (such as
    aiolimiter, which re-arms a timer for "now" when float rounding leaves it a hair short)
    would otherwise spin forever at one instant.
    """
    loop = VirtualTimeLoop(start, tick_s)
    try:
        return loop.run_until_complete(main())
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
