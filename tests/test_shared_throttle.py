"""The shared limiter's settings, its checks of Redis, and how it reports and rides out
trouble, in-process against a real redis-server on a loopback port (the admission script's
arithmetic is in tests/test_shared_limit.py).

What is asserted is the documented behaviour (docs/fleet.md, the design's "never exceed
it"): a setting that cannot work is refused before anything is sent, with a message naming
it; a Redis that may evict the limiter's keys is warned about; a Redis that cannot answer
holds every call back until it can, and says so; a broken script or key is an error, never a
silent admission.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmtasks._shared as shared
from llmtasks._errors import ConfigError
from llmtasks._shared import (
    FUNCTIONS,
    RedisThrottle,
    account_key,
    make_throttle,
    redacted,
    shared_throttle,
)
from llmtasks._transport import Reply
from tests.conftest import LOGIN, RedisServer, require, require_module

require_module("redis")
require("redis-server")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _throttle(server: RedisServer, **kw: Any) -> RedisThrottle:
    settings: dict[str, Any] = {
        "rate": 10,
        "period_s": 1.0,
        "margin_s": 0.0,
        "max_in_flight": 100,
        "account_key": account_key(LOGIN),
    }
    settings.update(kw)
    return make_throttle(server.url, **settings)


# -- settings ---------------------------------------------------------------------------------

URL = "redis://127.0.0.1:1/0"  # never connected to: construction does not connect


def _make(**kw: Any) -> RedisThrottle:
    settings: dict[str, Any] = {
        "rate": 100,
        "period_s": 60.0,
        "margin_s": None,
        "max_in_flight": 30,
        "account_key": "k",
    }
    settings.update(kw)
    return make_throttle(URL, **settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"burst": 0}, "burst must be an integer from 1 to rate (100), not 0"),
        ({"burst": 101}, "burst must be an integer from 1 to rate (100), not 101"),
        ({"burst": True}, "burst must be an integer from 1 to rate (100), not True"),
        ({"burst": 2.0}, "burst must be an integer from 1 to rate (100), not 2.0"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1, not 0"),
        ({"max_in_flight": True}, "max_in_flight must be at least 1, not True"),
        ({"lease_ttl_s": 0}, "lease_ttl_s, poll_s and cap_recovery_s must be positive"),
        ({"poll_s": -1}, "lease_ttl_s, poll_s and cap_recovery_s must be positive"),
        ({"poll_s": 0}, "lease_ttl_s, poll_s and cap_recovery_s must be positive"),
        ({"cap_recovery_s": 0}, "lease_ttl_s, poll_s and cap_recovery_s must be positive"),
        ({"account_key": ""}, "account_key must be a non-empty word (see account_key())"),
        ({"account_key": "a{b"}, "account_key must be a non-empty word (see account_key())"),
        ({"account_key": "a}b"}, "account_key must be a non-empty word (see account_key())"),
        ({"account_key": "a:b"}, "account_key must be a non-empty word (see account_key())"),
        ({"account_key": "a b"}, "account_key must be a non-empty word (see account_key())"),
        ({"function": "live"}, "function must be one of " + ", ".join(FUNCTIONS) + ", not 'live'"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_name(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _make(**settings)
    assert str(info.value) == message


def test_rate_and_period_have_the_in_process_buckets_meaning() -> None:
    with pytest.raises(ConfigError, match="rate"):
        _make(rate=0)
    with pytest.raises(ConfigError, match="period"):
        _make(period_s=0)
    t = _make(rate=2000, period_s=60.0, margin_s=None)
    # The design's margin: about 1% of the window by default.
    assert (t.rate, t.period_s, t.margin_s) == (2000, 60.0, pytest.approx(0.6))
    assert t.burst == 10 and t.max_in_flight == 30 and t.function == "task_post"
    assert _make(rate=100, burst=100).burst == 100  # no pacing: allowed
    assert _make(rate=100, burst=1).burst == 1  # even spacing: allowed


def test_each_function_is_its_own_budget_on_the_accounts_one_in_flight_cap() -> None:
    post = _make(function="task_post")
    get = _make(function="task_get")
    assert post.keys[0] == get.keys[0] == "llmtasks:{k}:leases"
    assert post.keys[1:] == ("llmtasks:{k}:task_post:log", "llmtasks:{k}:task_post:state")
    assert get.keys[1:] == ("llmtasks:{k}:task_get:log", "llmtasks:{k}:task_get:state")
    assert _make(account_key="other").keys[0] == "llmtasks:{other}:leases"


def test_a_url_redis_cannot_read_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        make_throttle(
            "ftp://user:s3cret@host/0",
            rate=10,
            period_s=1.0,
            margin_s=None,
            max_in_flight=5,
            account_key="k",
        )
    message = str(info.value)
    assert message.startswith("--limiter ftp://host/0: ") and "s3cret" not in message
    assert redacted("not a url") == "(not a URL)"
    # A password may hold "://" itself: the scheme ends at the first one.
    assert redacted("redis://user:pa://ss@host:6379/0") == "redis://host:6379/0"
    assert redacted("redis://host:6379/2") == "redis://host:6379/2"
    assert redacted("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert _make().name == "redis://127.0.0.1:1/0"


# -- starting -----------------------------------------------------------------------------------


async def test_without_a_url_there_is_no_shared_throttle() -> None:
    for url in (None, ""):
        async with shared_throttle(
            url, login=LOGIN, rate=10, period_s=1.0, margin_s=None, max_in_flight=None
        ) as t:
            assert t is None


async def test_shared_throttle_is_started_for_the_account_and_closed(redis_server) -> None:
    async with shared_throttle(
        redis_server.url,
        login=LOGIN,
        rate=600,
        period_s=60.0,
        margin_s=None,
        max_in_flight=None,
        function="task_get",
    ) as t:
        assert t is not None
        assert t.keys[1] == f"llmtasks:{{{account_key(LOGIN)}}}:task_get:log"
        # Enough simultaneous calls for the full rate at a second per call: 10.
        assert t.max_in_flight == 10
        async with t.slot():
            pass
        assert t.admissions == 1
    async with shared_throttle(
        redis_server.url, login=LOGIN, rate=600, period_s=60.0, margin_s=None, max_in_flight=4
    ) as t:
        assert t is not None and t.max_in_flight == 4 and t.function == "task_post"


async def test_a_redis_that_may_evict_the_log_is_warned_about(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmtasks")
    async with _throttle(redis_server) as t:
        assert caplog.records == []  # noeviction (the test server's setting)
        await t._client.config_set("maxmemory-policy", "allkeys-lru")
        await t.start()
        assert caplog.records == []  # no maxmemory: nothing is ever evicted
        await t._client.config_set("maxmemory", "100mb")
        await t.start()
        (record,) = caplog.records
        assert record.getMessage() == (
            f"the limiter's Redis at {t.name} may evict keys (maxmemory-policy allkeys-lru): "
            "a lost log of admissions lets the fleet exceed the limit; set maxmemory-policy "
            "noeviction"
        )
        await t._client.config_set("maxmemory-policy", "noeviction")
        caplog.clear()
        await t.start()
        assert caplog.records == []


# -- reporting the service's complaints ---------------------------------------------------------


async def test_a_429_cuts_the_shared_rate_like_a_40202_and_other_replies_do_not(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmtasks")
    async with _throttle(redis_server, rate=10, burst=10, period_s=30.0) as t:
        async with t.slot() as at:
            pass
        for reply in (
            Reply("ok", 200, 20000, "Ok."),
            Reply("unknown", 500, None, "HTTP 500"),
            Reply("retry", None, None, "connection refused"),
        ):
            t.react(reply, at)
        assert not t._reports
        assert await t._client.hget(t.keys[2], "cut_to") is None
        t.react(Reply("retry", 429, None, "HTTP 429 Too Many Requests"), at)
        await asyncio.wait(t._reports, timeout=5)
        assert float(await t._client.hget(t.keys[2], "cut_to")) == 0.5
        assert caplog.messages == [
            "the service said 40202: halving the rate for every process sharing the limiter"
        ]
        caplog.clear()
        t.react(Reply("retry", 200, 40209, "Too many requests at once."), at)
        await asyncio.wait(t._reports, timeout=5)
        assert caplog.messages == [
            "the service said 40209: one simultaneous call fewer for every process sharing "
            "the limiter"
        ]
        assert int(await t._client.hget(t.keys[2], "cap_to")) == 99
        # The same volley again: nothing more is cut, nothing more said.
        caplog.clear()
        t.react(Reply("retry", 200, 40209, "Too many requests at once."), at)
        t.react(Reply("retry", 200, 40202, "Rate limit exceeded."), at)
        await asyncio.wait(t._reports, timeout=5)
        assert caplog.messages == []


async def test_closing_waits_for_the_reports_in_flight(redis_server) -> None:
    t = _throttle(redis_server, rate=10, burst=10, period_s=30.0)
    await t.start()
    async with t.slot() as at:
        pass
    t.react(Reply("retry", 200, 40202, "Rate limit exceeded."), at)
    await t.aclose()  # the cut reaches Redis before the client closes
    async with _throttle(redis_server, rate=10, burst=10, period_s=30.0) as other:
        assert float(await other._client.hget(other.keys[2], "cut_to")) == 0.5


async def test_a_report_redis_cannot_take_is_dropped_quietly(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmtasks")
    async with _throttle(redis_server) as t:
        async with t.slot() as at:
            pass
        redis_server.kill()
        t.react(Reply("retry", 200, 40202, "Rate limit exceeded."), at)
        await asyncio.wait(t._reports, timeout=15)
        assert any(
            r.levelno == logging.DEBUG
            and r.getMessage().startswith("could not report a rate cut: ConnectionError")
            for r in caplog.records
        )


# -- trouble with Redis -------------------------------------------------------------------------


def test_what_counts_as_redis_being_unable_to_answer_now() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # Pause and try again: Redis is down, busy, loading, failing over or out of memory.
    for exc in (
        RedisConnectionError("Connection refused"),
        RedisTimeoutError("Timeout reading from socket"),
        *(
            ResponseError(f"{word} something")
            for word in ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING")
        ),
    ):
        assert shared._is_outage(exc), exc
    # A bug or a wrong setting: raise.
    for exc in (
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("NOSCRIPT No matching script"),
        ResponseError("ERR oom in lowercase is not the reply"),
    ):
        assert not shared._is_outage(exc), exc
    assert shared._describe(RedisConnectionError("refused\nmore lines")) == (
        "ConnectionError: refused"
    )
    assert shared._describe(RedisConnectionError()) == "ConnectionError"


async def test_a_long_outage_is_reported_again_and_the_backoff_grows(
    redis_server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="llmtasks")
    monkeypatch.setattr(shared, "OUTAGE_REPEAT_S", 0.3)
    monkeypatch.setattr(shared, "OUTAGE_MAX_BACKOFF_S", 0.2)
    async with _throttle(redis_server) as t:
        redis_server.kill()
        waiting = asyncio.create_task(_enter(t))
        await asyncio.sleep(1.2)
        assert not waiting.done()
        again = [m for m in caplog.messages if m.startswith("limiter still unreachable after ")]
        # Every 0.3 s at most, and at least once in 1.2 s.
        assert 1 <= len(again) <= 4
        assert again[0].endswith(")") and "still pausing (ConnectionError" in again[0]
        waited = float(again[0].removeprefix("limiter still unreachable after ").split(" s,")[0])
        assert 0 <= waited < 5
        assert t._outage_tries >= 4
        redis_server.start()
        await asyncio.wait_for(waiting, 10)
        assert t._outage_tries == 0 and t.outages == 1
        resumed = caplog.messages[-1]
        assert re.fullmatch(r"limiter reachable again after \d+\.\d s, resuming", resumed)
        assert float(resumed.split()[4]) < 10
        # A second outage is a new one, said again from the start.
        caplog.clear()
        redis_server.kill()
        waiting = asyncio.create_task(_enter(t))
        await asyncio.sleep(0.3)
        assert t.outages == 2
        paused = caplog.messages[0]
        assert paused.startswith("limiter unreachable, pausing (ConnectionError")
        assert paused.endswith(f" at {t.name}): nothing is sent until it answers")
        redis_server.start()
        await asyncio.wait_for(waiting, 10)


async def test_a_broken_key_is_an_error_not_a_pause(redis_server) -> None:
    async with _throttle(redis_server) as t:
        await t._client.set(t.keys[1], "not a sorted set")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await asyncio.wait_for(_enter(t), 5)
        assert t.outages == 0 and t.admissions == 0


async def test_the_in_flight_cap_wakes_a_waiter_when_this_process_releases(
    redis_server,
) -> None:
    # poll_s is long: only the release's wake-up can let the second call in quickly.
    async with _throttle(redis_server, max_in_flight=1, poll_s=30.0) as t:
        order: list[str] = []

        async def call(name: str, hold_s: float) -> None:
            async with t.slot():
                order.append(name)
                await asyncio.sleep(hold_s)

        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(asyncio.gather(call("a", 0.2), call("b", 0.0)), 10)
        assert order == ["a", "b"]
        assert asyncio.get_running_loop().time() - started < 5
        assert t.refusals == {"in_flight": 1} and t.admissions == 2


async def test_a_release_redis_cannot_take_expires_by_itself(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmtasks")
    async with _throttle(redis_server, lease_ttl_s=0.3) as t:
        async with t.slot():
            redis_server.kill()
            await asyncio.sleep(0.15)  # a renewal fails too
        messages = caplog.messages
        assert any(m.startswith("could not renew a lease: ConnectionError") for m in messages)
        assert any(
            m.startswith("could not release a lease (it expires by itself): ConnectionError")
            for m in messages
        )
        redis_server.start()


async def _enter(t: RedisThrottle) -> float:
    async with t.slot() as at:
        return at


def test_account_keys_are_the_same_in_every_process_and_version() -> None:
    # Processes of one fleet, upgraded one at a time, must still name the same budget: the
    # key of a login never changes (a keyed blake2b, 8 bytes, in hex).
    assert account_key("login") == "5f55c04e58940177"
    assert account_key("another") != account_key("login")
    assert len(account_key("x")) == 16


def test_a_direct_throttle_has_the_documented_defaults() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    t = RedisThrottle(client, rate=100, period_s=60.0, account_key="XY")
    # 30 simultaneous requests per account; the task_post budget; messages say "redis".
    assert (t.max_in_flight, t.function, t.name) == (30, "task_post", "redis")
    assert t.keys[1] == "llmtasks:{XY}:task_post:log"


def test_without_the_redis_client_the_limiter_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared, "aioredis", None)
    with pytest.raises(ConfigError) as info:
        _make()
    assert str(info.value) == "--limiter needs the redis client: pip install 'llmtasks[redis]'"


async def test_an_unreachable_limiter_is_named_with_the_reason(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    t = make_throttle(
        f"redis://127.0.0.1:{port}/0",
        rate=10,
        period_s=1.0,
        margin_s=None,
        max_in_flight=5,
        account_key="k",
    )
    with pytest.raises(ConfigError) as info:
        await t.start()
    await t.aclose()
    assert str(info.value).startswith(
        f"cannot reach the limiter at redis://127.0.0.1:{port}/0: ConnectionError: "
    )


async def test_each_process_holds_leases_of_its_own(redis_server) -> None:
    # Each process names its leases apart: two processes' first calls are two calls.
    async with _throttle(redis_server) as a, _throttle(redis_server) as b, a.slot(), b.slot():
        assert await a._client.zcard(a.keys[0]) == 2


async def test_a_restart_of_redis_between_calls_is_not_an_outage(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmtasks")
    async with _throttle(redis_server, period_s=0.2) as t:
        await _enter(t)
        redis_server.kill()
        redis_server.start()
        # The pooled connection died with the old server: one quick retry, no pause.
        await asyncio.wait_for(_enter(t), 10)
        assert t.outages == 0 and caplog.messages == []


async def test_waiting_for_a_slot_another_process_holds(redis_server) -> None:
    # Only asking again can find another process's release: the wait is poll_s at a time.
    async with (
        _throttle(redis_server, max_in_flight=1, poll_s=0.02) as t,
        _throttle(redis_server, max_in_flight=1) as other,
    ):

        async def hold() -> None:
            async with other.slot():
                await asyncio.sleep(0.3)

        holding = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(_enter(t), 5)
        await holding
        assert t.refusals["in_flight"] >= 2  # every refusal counted


async def test_a_second_cut_soon_after_the_first_cuts_from_where_the_first_left(
    redis_server,
) -> None:
    async with _throttle(redis_server, rate=10, burst=10, period_s=30.0, max_in_flight=3) as t:
        first = await t.admit("a")
        assert await t.cut("rate", first.at_s)
        second = await t.admit("b")
        assert await t.cut("rate", second.at_s)
        # Milliseconds after a cut to 0.5 the rate has barely recovered: halved again.
        assert 0.25 <= float(await t._client.hget(t.keys[2], "cut_to")) < 0.26
        assert await t.cut("cap", first.at_s)
        third = await t.admit("c")
        assert await t.cut("cap", third.at_s)
        assert int(await t._client.hget(t.keys[2], "cap_to")) == 1  # 3 -> 2 -> 1


async def test_outage_pauses_back_off_from_the_first_to_the_longest(
    redis_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[float, float]] = []
    nine = asyncio.Event()

    class Draws:
        @staticmethod
        def uniform(a: float, b: float) -> float:
            asked.append((a, b))
            if len(asked) == 9:
                nine.set()
            return 0.001

    monkeypatch.setattr(shared, "random", Draws)
    async with _throttle(redis_server) as t:
        redis_server.kill()
        waiting = asyncio.create_task(_enter(t))
        await asyncio.wait_for(nine.wait(), 10)
        redis_server.start()
        await asyncio.wait_for(waiting, 10)
    first, longest = shared.OUTAGE_BACKOFF_S, shared.OUTAGE_MAX_BACKOFF_S
    caps = [min(longest, first * 2**i) for i in range(9)]
    # Drawn from the upper half of a range that doubles up to the longest.
    assert asked[:9] == [(cap / 2, cap) for cap in caps]
