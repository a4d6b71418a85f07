"""One account's limits shared by many processes (and hosts) through Redis.

Every process that names the same Redis and account asks one Lua script for each call. The
script runs atomically on the server and reads the server's clock (``TIME``), so hosts whose
clocks disagree still share one exact timeline. It checks, in this order:

1. a hold: after Redis lost its keys (a restart without persistence), nobody knows what was
   sent in the last window, so the first process that notices holds everybody for one window;
2. the in-flight cap: a sorted set of leases (id → expiry); expired leases are dropped, so a
   process that died holds capacity until its leases expire (``lease_ttl_s``), no longer;
3. the rate: a sorted set of admission times (an exact log, not a counter); at most ``rate``
   admissions in any window of ``period_s + margin_s`` (the design.md margin absorbs the
   varying delay between admission and arrival at the service);
4. pacing: a virtual schedule at ``rate`` per window with ``burst`` calls of slack (GCRA).
   Without it the log admits a whole window's calls in a burst, and calls that leave a busy
   process in a burst are the ones whose arrival is delayed most: the margin must cover that.

Then it writes the lease, the admission and the schedule (all or none) and answers with the server's
time. A refusal carries the wait until the refusing condition lifts.

A process asks with one coroutine at a time (the others queue behind it in order), so a
fleet of N processes makes about N requests per admission at most, whatever its concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from llmtasks._errors import ConfigError
from llmtasks._ratelimit import RateLimiter
from llmtasks._throttle import default_burst, default_concurrency
from llmtasks._transport import Reply

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the optional extra is missing
    aioredis = None  # type: ignore[assignment]

log = logging.getLogger("llmtasks")

LIMITER_ENV: Final = "LLMTASKS_LIMITER"
#: A lease outlives its process by at most this; renewed every LEASE_TTL_S / 3 while the call runs.
LEASE_TTL_S: Final = 30.0
#: In-flight cap full: ask again after this. Releases by this process wake the asker at once;
#: releases by other processes are found by asking.
POLL_S: Final = 0.01
#: After a 40209 the shared cap grows back by one every this many seconds. (The in-process gate
#: counts 20 successes instead; counting them across processes would cost a round trip per call.)
CAP_RECOVERY_S: Final = 1.0
#: Redis unreachable: first and longest pause between tries, and how often to say so again.
OUTAGE_BACKOFF_S: Final = 0.1
OUTAGE_MAX_BACKOFF_S: Final = 5.0
OUTAGE_REPEAT_S: Final = 60.0
#: The state hash (instance, cuts, hold) outlives the last admission by this.
_STATE_TTL_MS: Final = 24 * 3600 * 1000
_US: Final = 1_000_000

# KEYS: 1 leases, 2 log, 3 state.  ARGV: 1 lease id, 2 rate, 3 burst, 4 period µs, 5 margin µs,
# 6 cap, 7 lease ttl µs, 8 instance the caller saw last ('' if none), 9 poll µs, 10 floor,
# 11 recovery per period, 12 cap recovery µs, 13 state ttl ms.
# Returns {admitted 0/1, now µs, wait µs, why, instance}. Times are integers of µs (exact in a
# double up to 2^53); '%.0f' writes them without the 14-digit rounding of Lua's tostring.
_ADMIT_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local leases, log, state = KEYS[1], KEYS[2], KEYS[3]
local id, seen = ARGV[1], ARGV[8]
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local period, margin = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap_max, ttl, poll = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[9])
local floor_frac, recovery, cap_every = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local span = period + margin
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function s(x) return string.format('%.0f', x) end
local function num(v) if v then return tonumber(v) end return nil end

-- 1. Redis lost our keys while this caller was running: hold everyone for a window.
local inst = redis.call('HGET', state, 'instance')
if not inst then
  inst = s(now) .. ':' .. id
  redis.call('HSET', state, 'instance', inst)
end
if seen ~= '' and seen ~= inst and redis.call('HGET', state, 'held_for') ~= inst then
  redis.call('HSET', state, 'held_for', inst, 'hold_until', s(now + span))
end
redis.call('PEXPIRE', state, ARGV[13])
local hold = num(redis.call('HGET', state, 'hold_until'))
if hold and now < hold then return {0, now, hold - now, 'hold', inst} end

-- 2. Simultaneous calls: leases scored by expiry.
redis.call('ZREMRANGEBYSCORE', leases, '-inf', s(now))
local cap = cap_max
local low = num(redis.call('HGET', state, 'cap_to'))
if low then
  local back = math.floor((now - num(redis.call('HGET', state, 'cap_at'))) / cap_every)
  cap = math.min(cap_max, low + back)
  if cap >= cap_max then redis.call('HDEL', state, 'cap_to') end
end
local busy = redis.call('ZCARD', leases)
if busy >= cap then
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  return {0, now, math.max(1, math.min(poll, tonumber(first[2]) - now)), 'in_flight', inst}
end

-- 3. Calls per window: the log of admissions; a 40202 cut scales the limit down for a while.
local limit = rate
local cut = num(redis.call('HGET', state, 'cut_to'))
if cut then
  local frac = cut + recovery * (now - num(redis.call('HGET', state, 'cut_at'))) / period
  if frac >= 1 then
    redis.call('HDEL', state, 'cut_to')
  else
    limit = math.max(1, math.floor(rate * math.max(floor_frac, frac)))
  end
end
redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. s(now - span))
local count = redis.call('ZCARD', log)
if count >= limit then
  local e = redis.call('ZRANGE', log, count - limit, count - limit, 'WITHSCORES')
  return {0, now, tonumber(e[2]) + span + 1 - now, 'rate', inst}
end

-- 4. Pacing: a virtual schedule at limit per span with burst - 1 intervals of slack (GCRA).
-- A log alone would chain each admission to the one burst places before it, so every late
-- wake-up would be lost for good; the schedule absorbs lateness up to its slack.
local tat = nil
if burst < limit then
  local interval = span / limit
  tat = math.max(num(redis.call('HGET', state, 'tat')) or now, now)
  local allow_at = tat - (burst - 1) * interval
  if now < allow_at then return {0, now, math.ceil(allow_at - now), 'pace', inst} end
  tat = tat + interval
end

-- Admitted: the lease and the admission, both or neither.
redis.call('ZADD', leases, s(now + ttl), id)
redis.call('ZADD', log, s(now), id)
if tat then redis.call('HSET', state, 'tat', s(tat)) end
redis.call('PEXPIRE', leases, s(math.ceil(ttl / 1000) + 1000))
redis.call('PEXPIRE', log, s(math.ceil(span / 1000) + 1000))
return {1, now, 0, 'ok', inst}
"""

# KEYS: 1 leases.  ARGV: 1 lease id, 2 lease ttl µs.  Extends a lease that still exists.
_RENEW_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(ttl / 1000) + 1000))
return 1
"""

# KEYS: 1 state.  ARGV: 1 'rate' or 'cap', 2 admitted µs, 3 period µs, 4 floor, 5 recovery,
# 6 cap, 7 cap recovery µs, 8 state ttl ms.  A reply from a call admitted before the last cut
# reports on the old limit and does not cut again: a volley of refusals cuts once.
_CUT_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local state, what, admitted = KEYS[1], ARGV[1], tonumber(ARGV[2])
local period, floor_frac, recovery = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cap_max, cap_every = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(v) if v then return tonumber(v) end return nil end
local at_key = what == 'rate' and 'cut_at' or 'cap_at'
local at = num(redis.call('HGET', state, at_key))
if at and admitted <= at then return 0 end
if what == 'rate' then
  local frac = 1
  local cut = num(redis.call('HGET', state, 'cut_to'))
  if cut then frac = math.min(1, cut + recovery * (now - at) / period) end
  redis.call('HSET', state, 'cut_to', math.max(floor_frac, frac / 2),
             'cut_at', string.format('%.0f', now))
else
  local cap = cap_max
  local low = num(redis.call('HGET', state, 'cap_to'))
  if low then cap = math.min(cap_max, low + math.floor((now - at) / cap_every)) end
  redis.call('HSET', state, 'cap_to', string.format('%.0f', math.max(1, cap - 1)),
             'cap_at', string.format('%.0f', now))
end
redis.call('PEXPIRE', state, ARGV[8])
return 1
"""

#: The published limits, each its own budget (user_data's per-function minute limits; id_list
#: has its documented 10 per minute).
FUNCTIONS: Final = ("task_post", "task_get", "tasks_ready", "id_list", "models")

_OUTAGE_REPLIES: Final = ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING")


def account_key(login: str) -> str:
    """The account's name in Redis keys: a keyed hash of the login, never the login itself."""
    return hashlib.blake2b(login.encode(), key=b"llmtasks-limiter", digest_size=8).hexdigest()


def redacted(url: str) -> str:
    """``scheme://host:port/db`` without user or password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(not a URL)"
    return f"{scheme}://{rest.rpartition('@')[2]}"


@dataclass(frozen=True)
class Admission:
    """One answer of the admission script: ``wait_s`` is the hint when refused."""

    admitted: bool
    at_s: float  # the Redis server's time, seconds
    wait_s: float
    why: str  # ok, hold, in_flight, rate, pace


class RedisThrottle:
    """The ``Throttle`` of a fleet: one rate and one in-flight cap per account, in Redis.

    ``slot()`` waits for admission (and for Redis: when it cannot be reached, nothing is
    admitted; the caller pauses and tries again with backoff), holds a lease renewed while
    the call runs, and releases it when the call ends. ``react()`` reports the service's
    40202 (cut the shared rate) and 40209 (lower the shared cap) to every process.
    Use ``async with`` (or ``start()`` / ``aclose()``).
    """

    def __init__(
        self,
        client: Any,
        *,
        rate: int,
        period_s: float,
        margin_s: float | None = None,
        burst: int | None = None,
        max_in_flight: int = 30,
        account_key: str,
        lease_ttl_s: float = LEASE_TTL_S,
        poll_s: float = POLL_S,
        cap_recovery_s: float = CAP_RECOVERY_S,
        name: str = "redis",
        function: str = "task_post",
    ) -> None:
        try:
            # The same checks as the in-process bucket: one meaning for --rate/--period/--margin.
            checked = RateLimiter(rate=rate, period_s=period_s, margin_s=margin_s)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if burst is None:
            burst = default_burst(rate)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= rate:
            # burst == rate: no pacing, the bare log (whole windows in a burst).
            raise ConfigError(f"burst must be an integer from 1 to rate ({rate}), not {burst!r}")
        if isinstance(max_in_flight, bool) or max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, not {max_in_flight!r}")
        if not lease_ttl_s > 0 or not poll_s > 0 or not cap_recovery_s > 0:
            raise ConfigError("lease_ttl_s, poll_s and cap_recovery_s must be positive")
        if not account_key or any(c in account_key for c in "{}: "):
            raise ConfigError("account_key must be a non-empty word (see account_key())")
        if function not in FUNCTIONS:
            raise ConfigError(f"function must be one of {', '.join(FUNCTIONS)}, not {function!r}")
        self.rate = rate
        self.period_s = checked.period_s
        self.margin_s = checked.margin_s
        self.burst = burst
        self.max_in_flight = max_in_flight
        self.lease_ttl_s = lease_ttl_s
        self.name = name
        self.function = function
        # One hash tag: every key of an account lands on one node of a Redis Cluster. The
        # leases (simultaneous calls) are the account's, whatever the function; the log and
        # the schedule are the function's own budget (each published limit is its own).
        prefix = f"llmtasks:{{{account_key}}}:"
        self.keys = (prefix + "leases", f"{prefix}{function}:log", f"{prefix}{function}:state")
        self._client = client
        self._admit_script = client.register_script(_ADMIT_LUA)
        self._renew_script = client.register_script(_RENEW_LUA)
        self._cut_script = client.register_script(_CUT_LUA)
        self._args = [
            rate,
            burst,
            round(checked.period_s * _US),
            round(checked.margin_s * _US),
            max_in_flight,
            round(lease_ttl_s * _US),
            "",
            round(poll_s * _US),
            RateLimiter.FLOOR,
            RateLimiter.RECOVERY,
            round(cap_recovery_s * _US),
            _STATE_TTL_MS,
        ]
        self._cut_args = [
            round(checked.period_s * _US),
            RateLimiter.FLOOR,
            RateLimiter.RECOVERY,
            max_in_flight,
            round(cap_recovery_s * _US),
            _STATE_TTL_MS,
        ]
        self._instance = ""  # the Redis keyspace this process last saw (see the hold)
        self._client_id = secrets.token_hex(8)
        self._leases = 0
        self._line: asyncio.Lock | None = None  # one asker per process, the others in order
        self._released: asyncio.Event | None = None
        self._reports: set[asyncio.Task[None]] = set()
        self._down_since: float | None = None
        self._down_said: float = 0.0
        self._outage_tries = 0
        self.admissions = 0
        self.refusals: dict[str, int] = {}
        self.outages = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> RedisThrottle:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Check that Redis answers (fail fast on a wrong URL or password) and warn when it may
        evict the limiter's keys."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise ConfigError(
                f"cannot reach the limiter at {self.name}: {_describe(exc)}"
            ) from None
        try:
            conf = await self._client.config_get("maxmemory*")
        except (RedisError, OSError):
            return  # CONFIG is often disabled on managed Redis: nothing to check
        policy = _text(conf.get(b"maxmemory-policy", conf.get("maxmemory-policy", b"")))
        maxmemory = _text(conf.get(b"maxmemory", conf.get("maxmemory", b"0")))
        if policy and policy != "noeviction" and maxmemory not in ("", "0"):
            log.warning(
                "the limiter's Redis at %s may evict keys (maxmemory-policy %s): a lost log "
                "of admissions lets the fleet exceed the limit; set maxmemory-policy noeviction",
                self.name,
                policy,
            )

    async def aclose(self) -> None:
        if self._reports:
            await asyncio.wait(self._reports, timeout=2.0)
        await self._client.aclose()

    # -- Throttle ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        self._leases += 1
        lease = f"{self._client_id}:{self._leases}"
        at_s = await self._acquire(lease)
        renewer = asyncio.create_task(self._renew(lease))
        try:
            yield at_s
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._release(lease)

    def react(self, reply: Reply, admitted_at: float) -> None:
        if reply.status_code == 40202 or reply.http_status == 429:
            what = "rate"
        elif reply.status_code == 40209:
            what = "cap"
        else:
            return
        task = asyncio.create_task(self._report(what, admitted_at))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    # -- the parts -------------------------------------------------------------------------

    async def admit(self, lease: str) -> Admission:
        """One try of the admission script (no waiting, no retry)."""
        args = list(self._args)
        args.insert(0, lease)
        args[7] = self._instance
        ok, now_us, wait_us, why, inst = await self._admit_script(keys=self.keys, args=args)
        self._instance = _text(inst)
        return Admission(bool(ok), int(now_us) / _US, int(wait_us) / _US, _text(why))

    async def cut(self, what: str, admitted_at: float) -> bool:
        """Cut the shared rate (``'rate'``) or cap (``'cap'``) unless a cut already came after
        ``admitted_at``; True when it did."""
        args = [what, round(admitted_at * _US), *self._cut_args]
        return bool(await self._cut_script(keys=self.keys[2:], args=args))

    async def _acquire(self, lease: str) -> float:
        if self._line is None:
            self._line = asyncio.Lock()
            self._released = asyncio.Event()
        released = self._released
        assert released is not None
        async with self._line:
            while True:
                try:
                    a = await self.admit(lease)
                except (RedisError, OSError) as exc:
                    if isinstance(exc, RedisError) and not _is_outage(exc):
                        raise
                    await self._pause(exc)
                    continue
                self._resumed()
                if a.admitted:
                    self.admissions += 1
                    return a.at_s
                self.refusals[a.why] = self.refusals.get(a.why, 0) + 1
                if a.why == "in_flight":
                    released.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(released.wait(), a.wait_s)
                else:
                    await asyncio.sleep(a.wait_s)

    async def _renew(self, lease: str) -> None:
        ttl_us = round(self.lease_ttl_s * _US)
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                await self._renew_script(keys=self.keys[:1], args=[lease, ttl_us])
            except (RedisError, OSError) as exc:
                # The lease expires on its own; the next admission waits for Redis anyway.
                log.debug("could not renew a lease: %s", _describe(exc))

    async def _release(self, lease: str) -> None:
        try:
            await asyncio.wait_for(self._client.zrem(self.keys[0], lease), 5.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("could not release a lease (it expires by itself): %s", _describe(exc))
        if self._released is not None:
            self._released.set()

    async def _report(self, what: str, admitted_at: float) -> None:
        try:
            if await self.cut(what, admitted_at):
                log.info(
                    "the service said %s: %s for every process sharing the limiter",
                    "40202" if what == "rate" else "40209",
                    "halving the rate" if what == "rate" else "one simultaneous call fewer",
                )
        except (RedisError, OSError) as exc:
            log.debug("could not report a %s cut: %s", what, _describe(exc))

    async def _pause(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._down_said = now
            self.outages += 1
            log.warning(
                "limiter unreachable, pausing (%s at %s): nothing is sent until it answers",
                _describe(exc),
                self.name,
            )
        elif now - self._down_said >= OUTAGE_REPEAT_S:
            self._down_said = now
            log.warning(
                "limiter still unreachable after %.0f s, still pausing (%s)",
                now - self._down_since,
                _describe(exc),
            )
        self._outage_tries += 1
        cap = min(OUTAGE_MAX_BACKOFF_S, OUTAGE_BACKOFF_S * 2 ** (self._outage_tries - 1))
        await asyncio.sleep(random.uniform(cap / 2, cap))

    def _resumed(self) -> None:
        if self._down_since is not None:
            log.warning(
                "limiter reachable again after %.1f s, resuming",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._outage_tries = 0


def _is_outage(exc: RedisError) -> bool:
    """Errors that mean "Redis cannot answer now" rather than a bug or a wrong setting."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True
    return str(exc).startswith(_OUTAGE_REPLIES)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def make_throttle(
    url: str,
    *,
    rate: int,
    period_s: float,
    margin_s: float | None,
    max_in_flight: int,
    account_key: str,
    burst: int | None = None,
    lease_ttl_s: float = LEASE_TTL_S,
    poll_s: float = POLL_S,
    cap_recovery_s: float = CAP_RECOVERY_S,
    function: str = "task_post",
) -> RedisThrottle:
    """A ``RedisThrottle`` on ``url`` (``redis://HOST:PORT/DB``, ``rediss://`` for TLS,
    ``unix:///path``). Connects lazily: ``await start()`` (or ``async with``) to check it."""
    if aioredis is None:
        raise ConfigError("--limiter needs the redis client: pip install 'llmtasks[redis]'")
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            # One quick retry picks up a pooled connection that died with a Redis restart;
            # longer outages are paced by slot() itself.
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError as exc:
        raise ConfigError(f"--limiter {redacted(url)}: {exc}") from None
    return RedisThrottle(
        client,
        rate=rate,
        period_s=period_s,
        margin_s=margin_s,
        burst=burst,
        max_in_flight=max_in_flight,
        account_key=account_key,
        lease_ttl_s=lease_ttl_s,
        poll_s=poll_s,
        cap_recovery_s=cap_recovery_s,
        name=redacted(url),
        function=function,
    )


@contextlib.asynccontextmanager
async def shared_throttle(
    url: str | None,
    *,
    login: str,
    rate: int,
    period_s: float,
    margin_s: float | None,
    max_in_flight: int | None,
    function: str = "task_post",
) -> AsyncIterator[RedisThrottle | None]:
    """``None`` without a URL (the in-process throttle stays); else a started RedisThrottle for
    the budget of ``function`` on the account of ``login``, closed on exit. Every process that
    calls ``function`` must pass that function's limit as ``rate`` per ``period_s``."""
    if not url:
        yield None
        return
    throttle = make_throttle(
        url,
        rate=rate,
        period_s=period_s,
        margin_s=margin_s,
        max_in_flight=max_in_flight or default_concurrency(rate, period_s),
        account_key=account_key(login),
        function=function,
    )
    try:
        await throttle.start()
        yield throttle
    finally:
        await throttle.aclose()


__all__ = [
    "FUNCTIONS",
    "LIMITER_ENV",
    "Admission",
    "RedisThrottle",
    "account_key",
    "make_throttle",
    "shared_throttle",
]
