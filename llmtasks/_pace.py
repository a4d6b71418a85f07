"""A run's counters, and its calls in a sliding window said without misleading anyone.

The service counts calls per window (60 s by default); a pace figure that extrapolates a
shorter interval to a minute can read higher than the limit that was in fact kept. So what is
shown is only what happened: calls in the last window, the busiest window, or, before one
window has gone by, the calls so far and that the window never filled.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmtasks._words import count, seconds


class CallWindow:
    """Call times of the last ``period_s``. Bounded by the limit (plus one, so that a window
    holding more than the limit shows as such): the limiter keeps it that small anyway."""

    def __init__(
        self, *, limit: int, period_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.period_s = period_s
        self._clock = clock
        self._times: deque[float] = deque(maxlen=limit + 1)
        self.started = clock()
        self.busiest = 0
        """The most calls seen in any window of ``period_s`` (capped at limit + 1)."""

    def note(self, at: float | None = None) -> None:
        """One call, made at ``at`` (default now) on this window's clock."""
        t = self._clock() if at is None else at
        self._times.append(t)
        self._prune(t)
        # A window holding the most calls ends on a call: checking at each call finds it.
        self.busiest = max(self.busiest, len(self._times))

    def in_last_window(self, now: float | None = None) -> int:
        """Calls in the window that ends at ``now`` (default: now). Reading changes nothing,
        so a summary may ask about the moment the run ended after a later refresh."""
        edge = (self._clock() if now is None else now) - self.period_s
        return len(self._times) - bisect.bisect_right(self._times, edge)

    def elapsed_s(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self.started

    def _prune(self, now: float) -> None:
        times = self._times
        edge = now - self.period_s
        while times and times[0] <= edge:
            times.popleft()


def _calls(n: int, limit: int) -> str:
    return f"more than {count(limit, 'call')}" if n > limit else count(n, "call")


def progress_pace(window: CallWindow, now: float | None = None) -> str:
    """The pace part of a progress line: calls in the last window against the limit."""
    now = window._clock() if now is None else now
    n = window.in_last_window(now)
    period = f"{window.period_s:g} s"
    elapsed = window.elapsed_s(now)
    if elapsed < window.period_s:
        # Less than one window so far: every call made is in it.
        return (
            f"{_calls(n, window.limit)} so far in {seconds(elapsed)}, "
            f"limit {window.limit:,} per {period}"
        )
    return f"{_calls(n, window.limit)} in the last {period}, limit {window.limit:,}"


def summary_pace(
    window: CallWindow, *, calls: int, retries: int, elapsed_s: float, now: float | None = None
) -> str:
    """The calls part of the end-of-run summary (``now``: when the run ended)."""
    period = f"{window.period_s:g} s"
    limit = f"limit {count(window.limit, 'call')} per {period}"
    head = f"{count(calls, 'call')} ({retries:,} retried) in {seconds(elapsed_s)}"
    if elapsed_s < window.period_s:
        return f"{head}: shorter than one {period} window, which was never full ({limit})"
    return (
        f"{head}; busiest {period}: {_calls(window.busiest, window.limit)}, "
        f"last {period}: {_calls(window.in_last_window(now), window.limit)} ({limit})"
    )


@dataclass
class RunStats:
    """Counters of one session (one ``submit`` invocation)."""

    started: float = field(default_factory=time.monotonic)
    lines_read: int = 0
    already_done: int = 0
    calls: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    """The worst case of the calls in flight (``--max-cost-usd``); shared, with the other
    counters, by the engines of a fan-out."""
    by_state: dict[str, int] = field(default_factory=dict)
    ended: float | None = None
    window: CallWindow = field(default_factory=lambda: CallWindow(limit=2000, period_s=60.0))
    """Calls in the last period of the rate limit (what progress and summary show)."""

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def calls_per_minute(self) -> float:
        """The average over the whole session: not a count in any window (see ``window``)."""
        return self.calls / self.elapsed_s * 60 if self.elapsed_s > 0 else 0.0

    def note_call(self, at: float) -> None:
        """One call (retries too), made at ``at`` on ``time.monotonic()``'s clock."""
        self.calls += 1
        self.window.note(at)

    def count(self, state: str, n: int = 1) -> None:
        self.by_state[state] = self.by_state.get(state, 0) + n
