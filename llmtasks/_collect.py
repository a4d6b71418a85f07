"""Collect: find the finished tasks of one ledger and fetch their results.

tasks_ready (its own limit: 20 calls per minute, at most 1000 ids per call) says which tasks
are done; task_get fetches each one of *this* ledger under the account's rate limit and the
concurrency cap. A task fetched once leaves tasks_ready for good, so the ids are written to
the ledger (``fetching``) before the fetch: a run killed in between fetches them directly
next time. Every result is committed to the ledger first and then appended to the results
file, whose written length is recorded too, so the file holds each task exactly once
whatever happens (see ``ResultWriter``).

Fallbacks to task_get by id, without tasks_ready: ``direct=True`` (results collected by
another client, or tasks older than tasks_ready's 3 days); a tasks_ready page full of other
jobs' tasks (ours may be hidden behind them); tasks posted more than 3 days ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from llmtasks._client import AccountClient, BaseTransport, Request, credentials
from llmtasks._errors import ConfigError, LlmtasksError
from llmtasks._ledger import Ledger, ResultRow, TaskRef
from llmtasks._ratelimit import ConcurrencyGate, RateLimiter
from llmtasks._results_file import Result, ResultWriter, Via, result_row, to_result
from llmtasks._task import ENGINES
from llmtasks._throttle import (
    RetryPolicy,
    Throttle,
    default_concurrency,
    local_throttle,
)
from llmtasks._transport import DEFAULT_BASE_URL, Reply, Transport, stop_error
from llmtasks._wire import GotTask, decode_got, ready_items
from llmtasks._words import count

log = logging.getLogger("llmtasks")

#: tasks_ready shows at most this many ids per call.
READY_PAGE: Final = 1000
#: task_get codes of a task that is not done yet.
RUNNING_CODES: Final = frozenset({40601, 40602})
#: Per-task codes that say "ask again later", not "this task failed".
TRANSIENT_TASK_CODES: Final = frozenset({40202, 40209})
#: task_get: the task is not there (40401) or its result expired after 30 days (40403).
#: Final: asking again cannot help, so they are recorded as such and never retried.
GONE_CODES: Final = frozenset({40401, 40403})
#: tasks_ready lists tasks of the last 3 days: older ones can only be fetched by id.
READY_HORIZON_S: Final = 3 * 24 * 3600.0
#: How often (at most) to look for such old tasks by id while waiting.
STALE_SWEEP_EVERY_S: Final = 3600.0
# Results are committed (and yielded) in groups: every 100, or half a second after the last.
_FLUSH_EVERY: Final = 100
_FLUSH_AFTER_S: Final = 0.5


@dataclass
class CollectStats:
    """Counters of one collect run."""

    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    calls: int = 0
    retries: int = 0
    collected: int = 0
    failed: int = 0
    not_ready: int = 0
    foreign: int = 0
    next_poll_s: float | None = None


class Collector:
    """Fetch the results of one ledger's created tasks.

    ``async with Collector(login=..., password=..., ledger="run.sqlite") as c:`` then
    ``async for result in c.collect(wait=True): ...``. With ``out`` every result is also
    appended to that JSONL file. Errors that stop the run (``AuthError``, ``ServiceError``)
    are raised after the results already fetched were recorded.
    """

    limiter: RateLimiter
    concurrency: int
    gate: ConcurrencyGate

    def __init__(
        self,
        *,
        login: str | None = None,
        password: str | None = None,
        ledger: str | Ledger,
        base_url: str = DEFAULT_BASE_URL,
        engine: str | None = None,
        out: str | None = None,
        rate: int = 2000,
        period_s: float = 60.0,
        margin_s: float | None = None,
        concurrency: int | None = None,
        tasks_ready_rate: int = 20,
        timeout_s: float = 60.0,
        max_attempts: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        poll_interval_s: float = 5.0,
        max_poll_interval_s: float = 120.0,
        allow_insecure: bool = False,
        throttle: Throttle | None = None,
        ready_throttle: Throttle | None = None,
        transport: BaseTransport | None = None,
    ) -> None:
        if engine is not None and engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if concurrency is not None and not 1 <= concurrency <= 30:
            raise ConfigError("concurrency must be 1..30 (the service allows 30 per account)")
        if max_attempts < 1:
            raise ConfigError("max attempts must be at least 1")
        if not 0 < poll_interval_s <= max_poll_interval_s:
            raise ConfigError("poll interval must be more than 0 and at most the maximum")
        self._tasks_ready_rate = tasks_ready_rate
        self._concurrency_arg = concurrency
        self._margin_s = margin_s
        # Shared throttles (a fleet's RedisThrottle per function) replace the local ones.
        self._shared: tuple[Throttle | None, Throttle | None] = (throttle, ready_throttle)
        self._own_transport: Transport | None = None
        if transport is None:
            login, password = credentials(login, password)
            transport = self._own_transport = Transport(
                base_url=base_url,
                login=login,
                password=password,
                timeout_s=timeout_s,
                max_connections=concurrency or default_concurrency(rate, period_s),
                allow_insecure=allow_insecure,
            )
        self.transport: BaseTransport = transport
        self.retry = RetryPolicy(
            max_attempts=max_attempts, backoff_s=backoff_s, max_backoff_s=max_backoff_s
        )
        #: Every call goes through it: the throttles below, the retry policy, the transport.
        self.client = AccountClient(self.transport, policy=self.retry)
        self.use_rate(rate, period_s)
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.stats = CollectStats()
        self._ledger_arg = ledger
        self._engine_arg = engine
        self._own_view = False
        self._out_path = out
        self.ledger: Ledger | None = None
        self.writer: ResultWriter | None = None
        self.engine = engine or "chat_gpt"
        self._stop = asyncio.Event()
        self._stop_reason: LlmtasksError | None = None
        self._buffer: list[ResultRow] = []
        self._pending_out: list[list[Result]] = []
        self._flushed_at = time.monotonic()
        self._out: asyncio.Queue[list[Result] | None] | None = None

    def use_rate(self, rate: int, period_s: float | None = None) -> None:
        """Set the task_get rate (e.g. the account's own limit, read after construction);
        only before the first call."""
        if period_s is None:
            period_s = self.limiter.period_s
        local = local_throttle(
            rate, period_s, margin_s=self._margin_s, concurrency=self._concurrency_arg
        )
        self.limiter, self.gate = local.limiter, local.gate
        self.concurrency = local.gate.limit
        # task_get counts against the account's rate; tasks_ready has its own; both share
        # the account's cap on simultaneous calls.
        ready = local_throttle(self._tasks_ready_rate, 60.0, burst=1, gate=local.gate)
        self._local = (local, ready)
        self.share(*self._shared)

    @property
    def throttle(self) -> Throttle:
        """task_get's: the account's rate and simultaneous calls."""
        return self.client.throttles["task_get"]

    @throttle.setter
    def throttle(self, throttle: Throttle) -> None:
        self.client.throttles["task_get"] = throttle

    @property
    def ready_throttle(self) -> Throttle:
        """tasks_ready's: its own rate, the account's simultaneous calls."""
        return self.client.throttles["tasks_ready"]

    @ready_throttle.setter
    def ready_throttle(self, throttle: Throttle) -> None:
        self.client.throttles["tasks_ready"] = throttle

    def share(self, throttle: Throttle | None, ready_throttle: Throttle | None) -> None:
        """Take task_get (``throttle``) and tasks_ready tokens from these (e.g. a fleet's
        ``RedisThrottle`` per function) instead of this process's own buckets; ``None``
        keeps the local one. Only before the first call."""
        self._shared = (throttle, ready_throttle)
        self.throttle = throttle or self._local[0]
        self.ready_throttle = ready_throttle or self._local[1]

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Collector:
        if isinstance(self._ledger_arg, Ledger):
            self.ledger = self._ledger_arg
        else:
            self.ledger = Ledger.open_existing(self._ledger_arg)
        wanted = self._engine_arg
        if wanted is not None and wanted != self.ledger.engine and wanted in self.ledger.engines:
            # A fan-out ledger: this engine's tasks, through a view of their own.
            whole, self.ledger = self.ledger, self.ledger.for_engine(wanted)
            if not isinstance(self._ledger_arg, Ledger):
                whole.close()
            elif whole.path != ":memory:":
                self._own_view = True
        if self._engine_arg is not None and self._engine_arg != self.ledger.engine:
            raise ConfigError(
                f"ledger {self.ledger.path} holds {self.ledger.engine} tasks, not "
                f"{self._engine_arg}: leave out --engine or use the right ledger"
            )
        self.engine = self.ledger.engine
        self._base = f"/v3/ai_optimization/{self.engine}/llm_responses"
        self.ledger.ensure_results()
        if self._out_path is not None:
            self.writer = ResultWriter(self.ledger, self._out_path)
        if self._own_transport is not None:
            await self._own_transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.flush()
        if self._own_transport is not None:
            await self._own_transport.__aexit__()
        if self.ledger is not None and (not isinstance(self._ledger_arg, Ledger) or self._own_view):
            self.ledger.close()

    def stop(self) -> None:
        """Graceful stop: no new calls; calls in flight finish and are recorded."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self._stop_reason is not None

    def counts(self) -> dict[str, int]:
        assert self.ledger is not None
        return self.ledger.result_counts()

    # -- public entry points ----------------------------------------------------------------

    async def collect(
        self, *, wait: bool = False, max_wait_s: float | None = None, direct: bool = False
    ) -> AsyncIterator[Result]:
        """Yield each newly collected result (failed tasks too, with ``ok`` False).

        Without ``wait`` it stops once tasks_ready shows nothing more of this ledger; with
        ``wait`` it polls until every created task is collected or failed (or ``max_wait_s``
        has passed). ``direct`` first asks task_get for every uncollected task by id.
        """
        if self.ledger is None:
            raise RuntimeError("use 'async with Collector(...)' before collecting")
        out: asyncio.Queue[list[Result] | None] = asyncio.Queue(maxsize=64)
        self._out = out
        error: list[BaseException] = []

        async def produce() -> None:
            try:
                await self._produce(wait=wait, max_wait_s=max_wait_s, direct=direct)
            except BaseException as exc:
                error.append(exc)
            finally:
                await self._flush_async()
                await out.put(None)

        producer = asyncio.create_task(produce())
        try:
            while (item := await out.get()) is not None:
                for result in item:
                    yield result
        finally:
            if not producer.done():
                self.stop()
                while not producer.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(out.get(), timeout=0.1)
            await producer
            self._out = None
        if error:
            raise error[0]
        if self._stop_reason is not None:
            raise self._stop_reason

    async def fetch(self, refs: Sequence[TaskRef], *, via: Via = "direct") -> None:
        """task_get these tasks now (marked ``fetching`` first) and record what comes back."""
        assert self.ledger is not None
        self.ledger.mark_fetching(refs)
        await self._fetch_all(refs, via)
        await self._flush_async()

    def store(self, rows: Sequence[ResultRow]) -> int:
        """Record results that arrived by other means (postbacks); returns how many were new."""
        self._buffer.extend(rows)
        return self.flush()

    # -- the loop ---------------------------------------------------------------------------

    async def _produce(self, *, wait: bool, max_wait_s: float | None, direct: bool) -> None:
        ledger = self.ledger
        assert ledger is not None
        deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
        leftovers = ledger.fetching()
        if leftovers:
            log.info("fetching %s an earlier run was fetching", count(len(leftovers), "task"))
            await self._fetch_all(leftovers, "direct")
        if direct:
            after = 0
            while not self.stopping and (
                refs := ledger.uncollected(limit=READY_PAGE, after_line=after)
            ):
                await self._fetch_all(refs, "direct")
                after = refs[-1].line
        empty_polls = 0
        last_stale_sweep = -math.inf
        while not self.stopping and ledger.uncollected_count() > 0:
            leftovers = ledger.fetching()
            if leftovers:
                await self._fetch_all(leftovers, "direct")
            ids, full = await self._poll()
            if self.stopping:
                break
            ours = ledger.lookup_tasks(ids)
            self.stats.foreign += len(ids) - len(ours)
            if ours:
                refs = sorted(ours.values(), key=lambda r: r.line)
                ledger.mark_fetching(refs)
                await self._fetch_all(refs, "tasks_ready")
                empty_polls = 0
                continue
            if full:
                # A page full of other jobs' tasks may hide ours: ask for ours by id.
                await self._fetch_all(ledger.uncollected(limit=READY_PAGE), "direct")
            now = time.time()
            if now - last_stale_sweep >= STALE_SWEEP_EVERY_S:
                last_stale_sweep = now
                stale = ledger.uncollected(limit=READY_PAGE, sent_before=now - READY_HORIZON_S)
                if stale:
                    await self._fetch_all(stale, "direct")
            if not wait:
                break
            delay = min(self.max_poll_interval_s, self.poll_interval_s * 2**empty_polls)
            empty_polls += 1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                delay = min(delay, left)
            await self._sleep(delay)

    async def _sleep(self, delay_s: float) -> None:
        self.stats.next_poll_s = delay_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay_s)
        self.stats.next_poll_s = None

    async def _poll(self) -> tuple[list[str], bool]:
        """One tasks_ready call: (ids, page was full). Retries what failed harmlessly."""
        answer = await self.client.call(
            Request("tasks_ready", "GET", f"{self._base}/tasks_ready", idempotent=True),
            stopping=lambda: self.stopping,
            on_retry=self._retrying,
            sleep=self._sleep,
        )
        self.stats.polls += answer.attempts
        reply = answer.reply
        if reply is None or answer.stopped:
            return [], False
        if reply.kind == "ok":
            page = ready_items(reply.body)
            if page is None:
                log.warning("tasks_ready answered something unreadable; trying again later")
                return [], False
            items, listed = page
            return [i.id for i in items], listed >= READY_PAGE
        if reply.kind in ("retry", "unknown"):
            log.warning("tasks_ready: %s; will try again later", reply.message)
            return [], False
        self._stop_reason = stop_error(reply, self.client.successes)
        return [], False

    async def _retrying(self, reply: Reply, attempt: int) -> None:
        self.stats.retries += 1

    async def _fetch_all(self, refs: Sequence[TaskRef], via: Via) -> None:
        it = iter(refs)

        async def worker() -> None:
            for ref in it:
                if self.stopping:
                    return
                await self._fetch_one(ref, via)

        n = min(len(refs), self.concurrency)
        await asyncio.gather(*(worker() for _ in range(n)))
        await self._flush_async()

    async def _fetch_one(self, ref: TaskRef, via: Via) -> None:
        assert self.ledger is not None
        seen: list[tuple[Reply, GotTask | None]] = []

        def again(reply: Reply, default: bool) -> bool:
            if reply.status_code in GONE_CODES or reply.kind != "ok":
                return default and reply.status_code not in GONE_CODES
            tasks = _got_tasks(reply.body)
            seen.append((reply, tasks[0] if tasks else None))
            # A task not done yet (a per-task 40202/40209): ask again later.
            return bool(tasks) and tasks[0].status_code in TRANSIENT_TASK_CODES

        answer = await self.client.call(
            Request("task_get", "GET", f"{self._base}/task_get/{ref.task_id}", idempotent=True),
            again=again,
            stopping=lambda: self.stopping,
            on_retry=self._retrying,
        )
        self.stats.calls += answer.attempts
        reply = answer.reply
        if reply is None or answer.stopped:
            return  # left marked ``fetching``: the next round (or run) asks again
        if reply.status_code in GONE_CODES:
            # Said for the whole call (HTTP 404 or 200): the answer about this one task.
            gone = GotTask(status_code=reply.status_code, id=ref.task_id)
            self._record(ref, msgspec.structs.replace(gone, status_message=reply.message), via)
            return
        task = seen[-1][1] if seen and seen[-1][0] is reply else None
        if task is not None and task.status_code not in TRANSIENT_TASK_CODES:
            self._record(ref, task, via)
            if (
                len(self._buffer) >= _FLUSH_EVERY
                or time.monotonic() - self._flushed_at >= _FLUSH_AFTER_S
            ):
                await self._flush_async()
            return
        if reply.kind in ("ok", "retry", "unknown"):
            # Left marked ``fetching``: the next round (or run) asks again.
            log.warning("task_get %s: %s; will ask again later", ref.task_id, reply.message)
            return
        if self._stop_reason is None:
            self._stop_reason = stop_error(reply, self.client.successes)

    def _record(self, ref: TaskRef, task: GotTask, via: Via) -> None:
        assert self.ledger is not None
        if task.status_code in RUNNING_CODES:
            self.stats.not_ready += 1
            self.ledger.unmark_fetching([ref.task_id])
            return
        echoed = task.data.tag if task.data is not None else None
        if echoed is not None and ref.tag is not None and echoed != ref.tag:
            log.warning(
                "task %s came back with tag %r, the ledger says %r (line %d)",
                ref.task_id,
                echoed,
                ref.tag,
                ref.line,
            )
        self._buffer.append(result_row(ref, task, via))

    def flush(self) -> int:
        """Commit buffered results to the ledger, then to the results file."""
        if not self._buffer or self.ledger is None:
            return 0
        rows, self._buffer = self._buffer, []
        self._flushed_at = time.monotonic()
        new = self.ledger.store_results(rows)
        if self.writer is not None:
            self.writer.catch_up()
        results = [to_result(r) for r in rows]
        for r in results:
            if r.ok:
                self.stats.collected += 1
            else:
                self.stats.failed += 1
        if self._out is not None:
            self._pending_out.append(results)  # handed to the iterator by _flush_async()
        return new

    async def _flush_async(self) -> None:
        self.flush()
        if self._out is not None:
            while self._pending_out:
                await self._out.put(self._pending_out.pop(0))


def _got_tasks(body: bytes) -> list[GotTask]:
    try:
        return decode_got(body).tasks or []
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


async def collect(
    ledger: str | Ledger,
    *,
    login: str,
    password: str,
    wait: bool = False,
    max_wait_s: float | None = None,
    direct: bool = False,
    **options: Any,
) -> AsyncIterator[Result]:
    """``async for result in collect("run.sqlite", login=..., password=...)``: the results of
    a ledger's tasks as they are fetched. ``options`` are ``Collector``'s (``base_url``,
    ``out``, ``rate``, ``concurrency``, ``poll_interval_s``, ...)."""
    async with Collector(login=login, password=password, ledger=ledger, **options) as c:
        async for result in c.collect(wait=wait, max_wait_s=max_wait_s, direct=direct):
            yield result
