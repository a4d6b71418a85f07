"""The one retry loop (``AccountClient.call``), in-process: a transport in memory, a
throttle that records, and sleeps that are only written down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from llmtasks._client import AccountClient, Answer, Request, credentials
from llmtasks._errors import ConfigError
from llmtasks._throttle import AUTH_GLITCH_RETRIES, RetryPolicy
from llmtasks._transport import MemoryTransport, Reply, classify

OK = Reply("ok", 200, 20000, "Ok.")
RETRY = Reply("retry", 200, 40202, "Rate-limit exceeded.")
BUSY = Reply("retry", 200, 40209, "Too many requests at once.")
LOST = Reply("unknown", None, None, "connection lost")
AUTH = Reply("auth", 401, 40100, "Unauthorized.")
FUNDS = Reply("funds", 402, 40200, "Payment Required.")
FATAL = Reply("fatal", 404, 40400, "Not Found.")

GET = Request("task_get", "GET", "/v3/x/task_get/1", idempotent=True)
POST = Request("task_post", "POST", "/v3/x/task_post", b"[{}]")


class Steps(RetryPolicy):
    """Backoff of ``10 * attempt`` seconds: which attempt asked for each wait shows."""

    def delay_s(self, attempt: int) -> float:
        return 10.0 * attempt


class Recorder:
    """A throttle that writes down each slot (with a distinct admission time) and each
    reaction, in order."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log: list[Any] = [] if log is None else log
        self.told: list[tuple[Reply, float]] = []
        self.admitted = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        self.admitted += 1
        at = 100.0 + self.admitted
        self.log.append(("slot", at))
        try:
            yield at
        finally:
            self.log.append(("free", at))

    def react(self, reply: Reply, admitted_at: float) -> None:
        self.log.append(("react", reply.kind, admitted_at))
        self.told.append((reply, admitted_at))


def client(
    replies: list[Reply], *, policy: RetryPolicy | None = None, **throttles: Any
) -> tuple[AccountClient, MemoryTransport, list[float]]:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    transport = MemoryTransport(replies)
    c = AccountClient(
        transport,
        throttles=cast(Any, throttles),
        policy=policy or Steps(max_attempts=8),
        sleep=sleep,
    )
    return c, transport, slept


def test_credentials_are_both_required_to_build_a_transport() -> None:
    assert credentials("a", "b") == ("a", "b")
    assert credentials("", "") == ("", "")  # an emulator's: the caller's choice
    for login, password in ((None, "b"), ("a", None), (None, None)):
        with pytest.raises(ConfigError) as info:
            credentials(login, password)
        assert str(info.value) == "login and password are required unless a transport is given"


async def test_an_ok_reply_is_final_after_one_attempt() -> None:
    c, t, slept = client([OK])
    answer = await c.call(GET)
    assert answer == Answer(OK, 1, False)
    assert t.requests == [("GET", "/v3/x/task_get/1", None)]
    assert slept == [] and c.successes == 1


async def test_a_post_sends_its_body() -> None:
    c, t, _ = client([OK])
    await c.call(POST)
    assert t.requests == [("POST", "/v3/x/task_post", b"[{}]")]


@pytest.mark.parametrize("first", [RETRY, BUSY])
async def test_a_retry_reply_is_asked_again_after_the_policys_backoff(first: Reply) -> None:
    c, t, slept = client([first, first, OK])
    answer = await c.call(POST)
    assert answer == Answer(OK, 3, False)
    assert len(t.requests) == 3 and slept == [10.0, 20.0]


async def test_a_lost_reply_is_asked_again_only_when_that_cannot_create_anything() -> None:
    c, t, slept = client([LOST, OK])
    # A POST whose reply was lost may have created tasks: it is the caller's, never resent.
    assert await c.call(POST) == Answer(LOST, 1, False)
    assert len(t.requests) == 1 and slept == []
    c, t, slept = client([LOST, LOST, OK])
    assert await c.call(GET) == Answer(OK, 3, False)
    assert slept == [10.0, 20.0]


@pytest.mark.parametrize("final", [FUNDS, FATAL])
async def test_funds_and_fatal_replies_are_final(final: Reply) -> None:
    c, t, slept = client([OK, final, OK])
    await c.call(GET)
    assert await c.call(GET) == Answer(final, 1, False)
    assert slept == [] and len(t.requests) == 2


async def test_refused_credentials_are_final_before_any_success() -> None:
    c, t, slept = client([AUTH, OK])
    assert await c.call(GET) == Answer(AUTH, 1, False)
    assert slept == [] and c.successes == 0 and len(t.requests) == 1


async def test_an_auth_error_after_a_success_is_asked_again_a_few_times() -> None:
    assert AUTH_GLITCH_RETRIES == 3
    # The service's passing 401 under load: three more tries, then the error stands.
    c, t, slept = client([OK] + [AUTH] * 10)
    await c.call(GET)
    answer = await c.call(POST)
    assert answer == Answer(AUTH, 4, False)
    assert slept == [10.0, 20.0, 30.0] and len(t.requests) == 5
    # The count is per call: the next call gets its own three.
    c, _, slept = client([OK, AUTH, AUTH, AUTH, OK, AUTH, AUTH, AUTH, AUTH])
    await c.call(GET)
    assert await c.call(GET) == Answer(OK, 4, False)
    assert await c.call(GET) == Answer(AUTH, 4, False)
    assert c.successes == 2


async def test_an_auth_error_between_retries_still_counts_toward_the_glitches() -> None:
    c, _, slept = client([OK, AUTH, RETRY, AUTH, AUTH, AUTH])
    await c.call(GET)
    assert await c.call(GET) == Answer(AUTH, 5, False)
    assert slept == [10.0, 20.0, 30.0, 40.0]


async def test_it_stops_after_max_attempts_without_waiting_after_the_last() -> None:
    c, t, slept = client([RETRY] * 20, policy=Steps(max_attempts=4))
    assert await c.call(POST) == Answer(RETRY, 4, False)
    assert len(t.requests) == 4 and slept == [10.0, 20.0, 30.0]
    c, t, slept = client([RETRY] * 20, policy=Steps(max_attempts=1))
    assert await c.call(POST) == Answer(RETRY, 1, False)
    assert slept == []


async def test_a_call_may_use_its_own_policy_and_attempts() -> None:
    c, t, slept = client([RETRY] * 20, policy=Steps(max_attempts=8))
    assert await c.call(GET, attempts=2) == Answer(RETRY, 2, False)
    assert slept == [10.0] and len(t.requests) == 2

    class Tens(RetryPolicy):
        def delay_s(self, attempt: int) -> float:
            return 1000.0 + attempt

    slept.clear()
    assert await c.call(GET, policy=Tens(max_attempts=3)) == Answer(RETRY, 3, False)
    assert slept == [1001.0, 1002.0]


async def test_the_default_backoff_doubles_from_the_upper_half() -> None:
    c, _, slept = client([RETRY] * 20, policy=RetryPolicy(max_attempts=7, backoff_s=0.5))
    await c.call(GET)
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(slept) == 6
    for delay, cap in zip(slept, caps, strict=True):
        assert cap / 2 <= delay <= cap


async def test_again_decides_with_the_policys_answer_in_hand() -> None:
    seen: list[tuple[str, bool]] = []

    def again(reply: Reply, default: bool) -> bool:
        seen.append((reply.kind, default))
        return default or reply.status_code == 40602

    still_running = Reply("ok", 200, 40602, "Task In Queue.")
    c, _, slept = client([RETRY, still_running, FATAL, OK])
    # An ok reply the caller wants asked again; a fatal one it will take as it is...
    assert await c.call(GET, again=again) == Answer(FATAL, 3, False)
    assert seen == [("retry", True), ("ok", False), ("fatal", False)]
    assert slept == [10.0, 20.0]
    # ...and a retry reply it refuses to ask again.
    c, _, slept = client([RETRY, OK])
    assert await c.call(GET, again=lambda r, d: False) == Answer(RETRY, 1, False)
    assert slept == []


async def test_each_reply_is_told_to_its_functions_throttle_after_the_slot() -> None:
    log: list[Any] = []
    posts, gets = Recorder(log), Recorder([])
    c, _, _ = client([RETRY, OK], task_post=posts, task_get=gets)
    await c.call(POST)
    assert log == [
        ("slot", 101.0),
        ("free", 101.0),
        ("react", "retry", 101.0),
        ("slot", 102.0),
        ("free", 102.0),
        ("react", "ok", 102.0),
    ]
    assert gets.admitted == 0


async def test_a_function_without_a_throttle_is_not_held() -> None:
    posts = Recorder()
    c, t, _ = client([OK], task_post=posts)
    assert await c.call(Request("other", "GET", "/v3/appendix/user_data", idempotent=True))
    assert posts.admitted == 0 and len(t.requests) == 1


async def test_a_throttle_replaced_between_calls_is_the_one_used() -> None:
    first, second = Recorder(), Recorder()
    c, _, _ = client([OK, OK], task_post=first)
    await c.call(POST)
    c.throttles["task_post"] = second
    await c.call(POST)
    assert (first.admitted, second.admitted) == (1, 1)


async def test_on_retry_runs_before_each_wait() -> None:
    events: list[Any] = []
    c, _, slept = client([RETRY, BUSY, OK])

    async def on_retry(reply: Reply, attempt: int) -> None:
        events.append((reply.status_code, attempt, len(slept)))

    await c.call(POST, on_retry=on_retry)
    assert events == [(40202, 1, 0), (40209, 2, 1)]


async def test_a_call_may_wait_with_its_own_sleep() -> None:
    c, _, slept = client([RETRY, OK])
    mine: list[float] = []

    async def sleep(delay: float) -> None:
        mine.append(delay)

    await c.call(POST, sleep=sleep)
    assert mine == [10.0] and slept == []


async def test_stopping_before_the_first_attempt_sends_nothing() -> None:
    posts = Recorder()
    c, t, _ = client([OK], task_post=posts)
    assert await c.call(POST, stopping=lambda: True) == Answer(None, 0, True)
    assert t.requests == [] and posts.admitted == 0


async def test_stopping_instead_of_a_retry_hands_back_the_reply_unwaited() -> None:
    c, t, slept = client([RETRY, OK])
    answer = await c.call(POST, stopping=lambda: len(t.requests) > 0)
    assert answer == Answer(RETRY, 1, True)
    assert slept == []


async def test_stopping_during_the_wait_ends_before_the_next_attempt() -> None:
    stop = False
    c, t, _ = client([RETRY, OK])

    async def sleep(delay: float) -> None:
        nonlocal stop
        stop = True

    assert await c.call(POST, stopping=lambda: stop, sleep=sleep) == Answer(None, 1, True)
    assert len(t.requests) == 1


async def test_a_stopping_that_is_false_changes_nothing() -> None:
    c, _, slept = client([RETRY, OK])
    assert await c.call(POST, stopping=lambda: False) == Answer(OK, 2, False)
    assert slept == [10.0]


async def test_prepare_runs_inside_the_slot_around_the_send() -> None:
    log: list[Any] = []
    posts = Recorder(log)

    def answer(method: str, path: str, body: bytes | None) -> Reply:
        log.append(("send", method))
        return OK

    c = AccountClient(MemoryTransport(answer), throttles={"task_post": posts})

    @contextlib.asynccontextmanager
    async def prepare(attempt: int) -> AsyncIterator[bool]:
        log.append(("prepare", attempt))
        try:
            yield True
        finally:
            log.append(("prepared", attempt))

    assert await c.call(POST, prepare=prepare) == Answer(OK, 1, False)
    assert log == [
        ("slot", 101.0),
        ("prepare", 1),
        ("send", "POST"),
        ("prepared", 1),
        ("free", 101.0),
        ("react", "ok", 101.0),
    ]


@pytest.mark.parametrize("throttled", [True, False])
async def test_prepare_may_refuse_an_attempt(throttled: bool) -> None:
    posts = Recorder()
    throttles: Any = {"task_post": posts} if throttled else {}
    c, t, slept = client([RETRY, OK], **throttles)
    asked: list[int] = []

    @contextlib.asynccontextmanager
    async def prepare(attempt: int) -> AsyncIterator[bool]:
        asked.append(attempt)
        yield attempt < 2

    assert await c.call(POST, prepare=prepare) == Answer(None, 1, True)
    assert asked == [1, 2] and len(t.requests) == 1 and slept == [10.0]
    # A refused attempt sent nothing, so its throttle hears nothing.
    assert len(posts.told) == (1 if throttled else 0)


async def test_stop_cuts_a_backoff_short() -> None:
    c = AccountClient(MemoryTransport([RETRY, OK]), policy=Steps(max_attempts=8))
    call = asyncio.create_task(c.call(POST))
    await asyncio.sleep(0.01)  # now in the 10 s backoff
    c.stop()
    assert await asyncio.wait_for(call, 1.0) == Answer(None, 1, True)
    # Stopped for good: later calls send nothing.
    assert await c.call(POST) == Answer(None, 0, True)


async def test_stop_cuts_a_wait_for_a_slot_short() -> None:
    gate = asyncio.Event()
    told: list[Reply] = []

    class Closed:
        @contextlib.asynccontextmanager
        async def slot(self) -> AsyncIterator[float]:
            await gate.wait()  # a limiter that never answers
            yield 0.0

        def react(self, reply: Reply, admitted_at: float) -> None:
            told.append(reply)

    transport = MemoryTransport([OK])
    c = AccountClient(transport, throttles={"task_post": Closed()})
    call = asyncio.create_task(c.call(POST))
    await asyncio.sleep(0.01)
    c.stop()
    assert await asyncio.wait_for(call, 1.0) == Answer(None, 0, True)
    assert transport.requests == [] and told == []


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    c = AccountClient(MemoryTransport([RETRY, OK]), policy=Steps(max_attempts=8))
    call = asyncio.create_task(c.call(POST))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # Stopped and cancelled: the cancellation is still not ours to take back.
    c = AccountClient(MemoryTransport([RETRY, OK]), policy=Steps(max_attempts=8))
    call = asyncio.create_task(c.call(POST))
    await asyncio.sleep(0.01)
    c.stop()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_the_real_classification_feeds_the_loop() -> None:
    # Envelopes as the service sends them, classified as the aiohttp transport does.
    limited = classify(200, b'{"status_code": 40202, "status_message": "Rate-limit"}')
    created = classify(200, b'{"status_code": 20000, "status_message": "Ok.", "tasks": []}')
    c, _, slept = client([limited, created])
    answer = await c.call(POST)
    assert answer.reply is created and answer.attempts == 2 and slept == [10.0]


async def test_memory_transport_answers_in_order_or_by_function() -> None:
    t = MemoryTransport([OK, RETRY])
    assert await t.get("/a") is OK
    assert await t.post("/b", b"x") is RETRY
    assert t.requests == [("GET", "/a", None), ("POST", "/b", b"x")]
    with pytest.raises(AssertionError, match="no reply left for GET /c"):
        await t.get("/c")
    by_path = MemoryTransport(lambda m, p, b: OK if p == "/ok" else FATAL)
    assert await by_path.get("/ok") is OK
    assert await by_path.post("/no", b"") is FATAL


async def test_a_stop_that_a_throttle_swallows_still_sends_nothing() -> None:
    told: list[Reply] = []

    class Swallows:
        @contextlib.asynccontextmanager
        async def slot(self) -> AsyncIterator[float]:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()  # a limiter that takes the cancellation for its own
            yield 0.0

        def react(self, reply: Reply, admitted_at: float) -> None:
            told.append(reply)

    transport = MemoryTransport([OK])
    c = AccountClient(transport, throttles={"task_post": Swallows()})
    call = asyncio.create_task(c.call(POST))
    await asyncio.sleep(0.01)
    c.stop()
    assert await asyncio.wait_for(call, 1.0) == Answer(None, 0, True)
    assert transport.requests == [] and told == []
