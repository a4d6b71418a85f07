"""The one retry loop: every call to the service goes through ``AccountClient.call``.

A call takes its function's throttle slot (the account's simultaneous calls and that
function's rate budget), is sent through a transport, tells the throttle what came back,
and is asked again while the retry policy (or the caller's own rule) says so. Only what
certainly created nothing is asked again: a POST whose reply was lost comes back to the
caller as ``unknown``, never resent here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Literal, NamedTuple, Protocol

from llmtasks._errors import ConfigError
from llmtasks._throttle import RetryPolicy, Throttle
from llmtasks._transport import Reply

#: The budget a call is counted against: each published limit has its own; ``other``
#: (user_data, free and unpublished) has none. A function without a throttle is not held.
Function = Literal["task_post", "task_get", "tasks_ready", "id_list", "models", "other"]


class BaseTransport(Protocol):
    """What sends one request and classifies its reply (never raising for network
    trouble): the aiohttp ``Transport``, or ``MemoryTransport`` in unit tests."""

    @property
    def base_url(self) -> str:
        """The service it talks to (keys the models cache; never holds credentials)."""
        ...

    async def get(self, path: str) -> Reply: ...

    async def post(self, path: str, body: bytes) -> Reply: ...


def credentials(login: str | None, password: str | None) -> tuple[str, str]:
    """The login and password that build a transport; without a transport of its own a
    client needs both (empty strings are the caller's choice, as for an emulator)."""
    if login is None or password is None:
        raise ConfigError("login and password are required unless a transport is given")
    return login, password


class Request(NamedTuple):
    function: Function
    method: Literal["GET", "POST"]
    path: str
    body: bytes = b""
    #: Asking again can never create or cost anything (GETs, id_list): a lost reply may be
    #: asked again. A task_post is never idempotent.
    idempotent: bool = False


class Answer(NamedTuple):
    #: The last reply; None when the call stopped before sending (another) attempt.
    reply: Reply | None
    #: How many attempts were sent.
    attempts: int
    #: The call ended because the caller is stopping, not because the policy said so.
    stopped: bool = False


#: ``again(reply, default)``: ask again? ``default`` is the retry policy's answer.
Again = Callable[[Reply, bool], bool]
#: Entered inside the slot, around the send: yields False to send nothing (and end the call).
Prepare = Callable[[int], contextlib.AbstractAsyncContextManager[bool]]


class AccountClient:
    """One account's calls: throttles per function, one retry policy, one transport.

    ``successes`` counts the calls answered ``ok``: after one, an auth error is the
    service's passing glitch under load and is asked again a few times."""

    def __init__(
        self,
        transport: BaseTransport,
        *,
        throttles: Mapping[Function, Throttle] | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.transport = transport
        #: Replaced freely (``Submitter.throttle = ...``): read at each attempt.
        self.throttles: dict[Function, Throttle] = dict(throttles or {})
        self.policy = policy or RetryPolicy()
        self.successes = 0
        self._sleep = sleep
        self._interrupted = False
        self._waiting: set[asyncio.Task[object]] = set()

    def stop(self) -> None:
        """Cut short every wait for a slot or a backoff (a shared limiter that cannot be
        reached could hold them for ever); the calls waiting end as ``stopped``."""
        self._interrupted = True
        for task in self._waiting:
            task.cancel()

    async def call(
        self,
        request: Request,
        *,
        policy: RetryPolicy | None = None,
        attempts: int | None = None,
        again: Again | None = None,
        stopping: Callable[[], bool] | None = None,
        prepare: Prepare | None = None,
        on_retry: Callable[[Reply, int], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> Answer:
        """Send ``request`` until the answer is final: at most ``attempts`` times (the
        policy's ``max_attempts`` by default), waiting ``policy.delay_s(attempt)`` between.
        ``stopping()`` is asked before each attempt and instead of each retry;
        ``on_retry(reply, attempt)`` runs before each wait."""
        policy = policy or self.policy
        limit = attempts or policy.max_attempts
        glitches = 0
        attempt = 0
        while True:
            attempt += 1
            if self._interrupted or (stopping is not None and stopping()):
                return Answer(None, attempt - 1, True)
            reply = await self._attempt(request, attempt, prepare)
            if reply is None:
                return Answer(None, attempt - 1, True)
            if reply.kind == "ok":
                self.successes += 1
            retry = policy.retryable(
                reply,
                successes=self.successes,
                auth_glitches=glitches,
                idempotent=request.idempotent,
            )
            if again is not None:
                retry = again(reply, retry)
            if not retry or attempt >= limit:
                return Answer(reply, attempt)
            if self._interrupted or (stopping is not None and stopping()):
                return Answer(reply, attempt, True)
            glitches += reply.kind == "auth"
            if on_retry is not None:
                await on_retry(reply, attempt)
            try:
                with self._interruptible():
                    await (sleep or self._sleep)(policy.delay_s(attempt))
            except asyncio.CancelledError:
                if not self._cut_short():
                    raise
                return Answer(None, attempt, True)

    async def _attempt(
        self, request: Request, attempt: int, prepare: Prepare | None
    ) -> Reply | None:
        throttle = self.throttles.get(request.function)
        if throttle is None:
            async with _held(prepare, attempt) as go:
                return await self._send(request) if go else None
        async with contextlib.AsyncExitStack() as held:
            try:
                with self._interruptible():
                    admitted_at = await held.enter_async_context(throttle.slot())
            except asyncio.CancelledError:
                if not self._cut_short():
                    raise
                return None
            if self._interrupted:
                return None
            async with _held(prepare, attempt) as go:
                if not go:
                    return None
                reply = await self._send(request)
        # Told after the slot is given back, as every call site did before this seam.
        throttle.react(reply, admitted_at)
        return reply

    async def _send(self, request: Request) -> Reply:
        if request.method == "POST":
            return await self.transport.post(request.path, request.body)
        return await self.transport.get(request.path)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            yield
        finally:
            self._waiting.discard(task)

    def _cut_short(self) -> bool:
        """After a CancelledError in a wait: True (and the cancellation taken back) when
        ``stop()`` sent it; False when someone else is cancelling the task."""
        task = asyncio.current_task()
        if self._interrupted and task is not None and task.cancelling() == 1:
            task.uncancel()
            return True
        return False


@contextlib.asynccontextmanager
async def _held(prepare: Prepare | None, attempt: int) -> AsyncIterator[bool]:
    if prepare is None:
        yield True
        return
    async with prepare(attempt) as go:
        yield go
