"""What every call counted against the account goes through: a concurrency slot, then a
rate-limit token; and the reaction to the service's own complaints (40202, 40209).

``Throttle`` is the seam for sharing one account's limits between processes: anything with
the same ``slot()`` / ``react()`` does.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Protocol

from llmtasks._errors import ConfigError
from llmtasks._ratelimit import ConcurrencyGate, RateLimiter
from llmtasks._transport import Reply

#: Auth errors after earlier successes: the service answers 401 for a few seconds under load.
AUTH_GLITCH_RETRIES: Final = 3


def default_concurrency(rate: int, period_s: float, *, latency_s: float = 1.0) -> int:
    """Enough simultaneous calls for the full rate at ``latency_s`` per call, at most 30."""
    return max(1, min(30, math.ceil(rate / period_s * latency_s)))


def default_burst(rate: int) -> int:
    """Bucket capacity C. With C = 1 every late timer wake-up (a millisecond or so on a busy
    loop) is lost for good; a few tokens of slack absorb it. Each token costs 1/rate of the
    limit, so keep C near 1% of the rate: at least 2, at most 10."""
    return max(1, min(rate - 1, max(2, min(10, rate // 100))))


def local_throttle(
    rate: int,
    period_s: float,
    *,
    margin_s: float | None = None,
    concurrency: int | None = None,
    burst: int | None = None,
    gate: ConcurrencyGate | None = None,
) -> LocalThrottle:
    """This process's throttle for one function: a bucket of ``rate`` calls per
    ``period_s`` (``burst`` tokens, by default ``default_burst``) behind ``gate``, or a gate
    of its own of ``concurrency`` calls (by default ``default_concurrency``). The one place
    where a limiter and a gate are built; an impossible value is a ``ConfigError``."""
    try:
        limiter = RateLimiter(
            rate=rate,
            period_s=period_s,
            margin_s=margin_s,
            burst=default_burst(rate) if burst is None else burst,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if gate is None:
        gate = ConcurrencyGate(limit=concurrency or default_concurrency(rate, period_s))
    return LocalThrottle(limiter, gate)


class Throttle(Protocol):
    def slot(self) -> contextlib.AbstractAsyncContextManager[float]:
        """Hold one of the account's simultaneous calls and one rate token; yields the
        admission time to pass back to ``react``."""
        ...

    def react(self, reply: Reply, admitted_at: float) -> None:
        """Slow down on 40202/429, narrow on 40209, widen again on success."""
        ...


class LocalThrottle:
    """This process's token bucket and concurrency gate."""

    def __init__(self, limiter: RateLimiter, gate: ConcurrencyGate) -> None:
        self.limiter = limiter
        self.gate = gate

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        # The slot first, then the token: a token taken while waiting for a slot would let
        # calls that queued behind a full gate leave together, over the rate.
        async with self.gate:
            yield await self.limiter.acquire()

    def react(self, reply: Reply, admitted_at: float) -> None:
        if reply.kind == "ok":
            self.gate.success()
        elif reply.status_code == 40202 or reply.http_status == 429:
            self.limiter.slow_down(admitted_at)
        elif reply.status_code == 40209:
            self.gate.lower()


@dataclass(frozen=True)
class RetryPolicy:
    """Which replies to try again, and how long to wait: exponential backoff with jitter."""

    max_attempts: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def retryable(
        self, reply: Reply, *, successes: int, auth_glitches: int, idempotent: bool = False
    ) -> bool:
        """``retry`` replies created nothing; a lost reply (``unknown``) may be asked again
        only by calls that create nothing (``idempotent``: GETs, id_list); an auth error
        after earlier successes is the service's load glitch, worth a few tries."""
        return (
            reply.kind == "retry"
            or (idempotent and reply.kind == "unknown")
            or (reply.kind == "auth" and successes > 0 and auth_glitches < AUTH_GLITCH_RETRIES)
        )

    def delay_s(self, attempt: int) -> float:
        # Drawn from the upper half of the range, so that senders that failed together do
        # not come back together, and no wait is much shorter than planned.
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)
