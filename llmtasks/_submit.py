"""The submit pipeline: input lines → ledger → batches → rate-limited POSTs → outcomes.

One producer reads input in chunks (in a worker thread, so a slow stdin never blocks the
loop), records every line in the ledger and fills a bounded queue of batches; N senders
take a rate-limit token and a concurrency slot, write the batch as ``sending``, POST it and
record what the service said. Receipts flow out as calls complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
)
from pathlib import Path
from typing import Any, Final

import msgspec

from llmtasks._account import (
    DOCUMENTED_CALLS_PER_MINUTE,
    Account,
    AccountUnavailable,
    read_account,
)
from llmtasks._batching import Batch, chunked, prompt_digest
from llmtasks._client import AccountClient, BaseTransport, Request, credentials
from llmtasks._decode import Completer, InputLine, decode_record
from llmtasks._errors import (
    ConfigError,
    FundsError,
    InputError,
    LlmtasksError,
)
from llmtasks._ledger import Ledger
from llmtasks._ledger_writer import LedgerWriteError, LedgerWriter
from llmtasks._lines import record_digest
from llmtasks._models import ModelList, default_cache_dir, load_models
from llmtasks._pace import CallWindow, RunStats
from llmtasks._receipt import Receipt, State
from llmtasks._replies import post_receipts
from llmtasks._rules import TaskRules
from llmtasks._task import (
    ENGINES,
    MAX_TASKS_PER_POST,
    Task,
)
from llmtasks._throttle import (
    LocalThrottle,
    RetryPolicy,
    Throttle,
    default_concurrency,
    local_throttle,
)
from llmtasks._transport import (
    DEFAULT_BASE_URL,
    Reply,
    Transport,
    stop_error,
)
from llmtasks._words import count

log = logging.getLogger("llmtasks")

#: The most one task can cost: the documented example charges $0.0102 (prepayment $0.01).
DEFAULT_MAX_TASK_COST_USD: Final = 0.0102


_encode_task = msgspec.json.Encoder().encode
_encode_str = msgspec.json.Encoder().encode


class Submitter:
    """Submit tasks under the rate limit and record every outcome in a ledger.

    ``async with Submitter(login=..., password=...) as s:`` then iterate
    ``s.submit(tasks)`` for one ``Receipt`` per task as calls complete. A failed task is a
    receipt, not an exception; errors that stop the run (``AuthError``, ``FundsError``,
    ``ServiceError``, ``InputError``) are raised after the receipts of the calls already
    made, with unsent lines left ``pending`` in the ledger for a later run.
    """

    def __init__(
        self,
        *,
        login: str | None = None,
        password: str | None = None,
        engine: str = "chat_gpt",
        base_url: str = DEFAULT_BASE_URL,
        rate: int | None = None,
        period_s: float = 60.0,
        margin_s: float | None = None,
        concurrency: int | None = None,
        batch_size: int = MAX_TASKS_PER_POST,
        ledger: str | Ledger | None = None,
        input_name: str = "",
        default_model: str | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_cost_usd: float | None = None,
        max_task_cost_usd: float = DEFAULT_MAX_TASK_COST_USD,
        resend_unknown: bool = False,
        allow_insecure: bool = False,
        postback_url: str | None = None,
        pingback_url: str | None = None,
        throttle: Throttle | None = None,
        shard: tuple[int, int] | None = None,
        models_cache_dir: str | None = None,
        transport: BaseTransport | None = None,
    ) -> None:
        """``rate`` None: the account's own task_post limit once ``preflight()`` has read it
        (user_data), else the documented 2000 per ``period_s``. ``transport``: what sends
        the calls instead of the aiohttp one built from ``login``, ``password`` and
        ``base_url`` (which are then unused); it stays the caller's to open and close."""
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if not 1 <= batch_size <= MAX_TASKS_PER_POST:
            raise ConfigError(f"batch size must be 1..{MAX_TASKS_PER_POST}, not {batch_size}")
        if concurrency is not None and not 1 <= concurrency <= 30:
            raise ConfigError("concurrency must be 1..30 (the service allows 30 per account)")
        if max_attempts < 1:
            raise ConfigError("max attempts must be at least 1")
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ConfigError("--max-cost-usd must not be negative")
        self.rate_given = rate is not None
        self._concurrency_arg = concurrency
        self._margin_s = margin_s
        self._own_transport: Transport | None = None
        if transport is None:
            login, password = credentials(login, password)
            transport = self._own_transport = Transport(
                base_url=base_url,
                login=login,
                password=password,
                timeout_s=timeout_s,
                # The account's limit may raise the concurrency later (see _set_rate); the
                # gate, not the connection pool, is what holds calls to it.
                max_connections=concurrency
                or (default_concurrency(rate, period_s) if rate is not None else 30),
                allow_insecure=allow_insecure,
            )
        self.transport: BaseTransport = transport
        self.retry = RetryPolicy(
            max_attempts=max_attempts, backoff_s=backoff_s, max_backoff_s=max_backoff_s
        )
        #: Every call goes through it: the task_post throttle, the retry policy, the transport.
        self.client = AccountClient(self.transport, policy=self.retry)
        self._set_rate(rate if rate is not None else DOCUMENTED_CALLS_PER_MINUTE, period_s)
        if throttle is not None:
            self.throttle = throttle
        #: Where the rate came from, for the summary.
        self.rate_source = "--rate" if self.rate_given else "the documented default"
        self.engine = engine
        if shard is not None and not 1 <= shard[0] <= shard[1]:
            raise ConfigError(f"shard must be I/N with 1 <= I <= N, not {shard[0]}/{shard[1]}")
        # Shard I of N takes lines I, I + N, I + 2N, ...: every shard moves through the
        # whole input at the same pace, so N processes finish together.
        self.shard = shard
        self.batch_size = batch_size
        self.default_model = default_model
        self.max_cost_usd = max_cost_usd
        self.max_task_cost_usd = max_task_cost_usd
        self.resend_unknown = resend_unknown
        # Set on tasks that leave them unset; $id and $tag stay literal for the service.
        self.push_fields = {
            k: v
            for k, v in (("postback_url", postback_url), ("pingback_url", pingback_url))
            if v is not None
        }
        for name, url in self.push_fields.items():
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--{name.replace('_', '-')} must be an http(s) URL")
        self.path = f"/v3/ai_optimization/{engine}/llm_responses/task_post"
        self.models_cache_dir = models_cache_dir
        #: The engine's rules with the run's models list (``load_models``); built-in until then.
        self.rules = TaskRules(engine)
        self.models: ModelList | None = None
        self._ledger_arg = ledger
        self._input_name = input_name
        self.ledger: Ledger | None = None
        self.stats = RunStats(
            window=CallWindow(limit=self.limiter.rate, period_s=self.limiter.period_s)
        )
        self._stop_reason: LlmtasksError | None = None
        self._error: Exception | None = None
        self._interrupted = False
        self._out: asyncio.Queue[list[Receipt] | None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._writer: LedgerWriter | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Submitter:
        if isinstance(self._ledger_arg, Ledger):
            self.ledger = self._ledger_arg
        else:
            self.ledger = Ledger.open(
                self._ledger_arg or ":memory:",
                input_name=self._input_name,
                engine=self.engine,
                shard="" if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            )
        try:
            self.ledger.lock()
        except LlmtasksError:
            if not isinstance(self._ledger_arg, Ledger):
                self.ledger.close()
            raise
        self.ledger.begin_session()
        found = self.ledger.recover_interrupted()
        if found:
            log.warning(
                "%s being sent when an earlier run stopped: marked unknown, not resent (run "
                "'llmtasks reconcile' to look %s up)",
                count(found, "line"),
                "it" if found == 1 else "them",
            )
        if self.resend_unknown:
            n = self.ledger.requeue_unknown()
            if n:
                log.warning(
                    "--resend-unknown: sending %s again; any that the service did create "
                    "will be charged and answered twice",
                    count(n, "unknown line"),
                )
        self._writer = self.ledger.writer()
        # Half the slots' worth written ahead: measured at 30 in flight and 0.2 s, 4 left
        # slots idle more often than 16 (28.3-28.9 vs 29.1-29.4 in flight on average).
        self._writer.start(ahead=max(2, self.concurrency // 2))
        if self._own_transport is not None:
            await self._own_transport.__aenter__()
        return self

    async def _drain(self) -> None:
        """Stop a run whose receipts nobody reads any more (the caller left its loop early):
        send nothing new, let the calls in flight finish and record them."""
        supervisor = self._supervisor
        if supervisor is None:
            return
        if not supervisor.done():
            self.stop()
            while not supervisor.done():
                if self._out is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._out.get(), timeout=0.05)
                else:
                    await asyncio.sleep(0.05)
        await supervisor

    async def __aexit__(self, *exc: object) -> None:
        # An async generator left by ``break`` is closed only when collected: finish it here,
        # before the connection closes under its calls in flight.
        # Each step even when the one before failed (an abort cancels the drain): the
        # connection closed, the writes committed, the session recorded, the ledger closed
        # and its lock file gone.
        try:
            await self._drain()
        finally:
            try:
                if self._own_transport is not None:
                    await self._own_transport.__aexit__()
            finally:
                try:
                    if self._writer is not None:
                        writer, self._writer = self._writer, None
                        await writer.close()
                finally:
                    if self.ledger is not None:
                        self._close_ledger(self.ledger)

    def _close_ledger(self, ledger: Ledger) -> None:
        try:
            self.stats.ended = self.stats.ended or time.monotonic()
            ledger.end_session(calls=self.stats.calls, cost=round(self.stats.cost_usd, 6))
        finally:
            if not isinstance(self._ledger_arg, Ledger):
                ledger.close()

    def stop(self) -> None:
        """Graceful stop (Ctrl-C): send nothing new, let in-flight calls finish and record.
        Senders waiting for a slot or a backoff stop waiting (a shared limiter that cannot be
        reached could make them wait for ever)."""
        self._interrupted = True
        self.client.stop()

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    @property
    def throttle(self) -> Throttle:
        """task_post's: this process's bucket and gate, or a fleet's shared limit."""
        return self.client.throttles["task_post"]

    @throttle.setter
    def throttle(self, throttle: Throttle) -> None:
        self.client.throttles["task_post"] = throttle

    def _set_rate(self, rate: int, period_s: float) -> None:
        throttle = local_throttle(
            rate, period_s, margin_s=self._margin_s, concurrency=self._concurrency_arg
        )
        self.limiter, self.gate = throttle.limiter, throttle.gate
        self.concurrency = throttle.gate.limit
        self.throttle = throttle

    async def account(self) -> Account:
        """The free ``user_data`` call: checks credentials; returns balance and limits."""
        return await read_account(self.transport, self.retry)

    async def preflight(self, *, tasks_hint: int | None = None) -> Account | None:
        """``check_account`` then ``load_models``: everything to know before the first POST."""
        info = await self.check_account(tasks_hint=tasks_hint)
        await self.load_models()
        if self.default_model:
            self.rules.model(self.default_model)  # warns now about an unlisted model
        return info

    async def check_account(self, *, tasks_hint: int | None = None) -> Account | None:
        """The free user_data call: credentials, the account's task_post limit (the rate
        without a ``rate``; a ``rate`` above it is warned about) and the balance against
        ``tasks_hint`` tasks. None when user_data does not answer (the run goes on)."""
        try:
            info = await self.account()
        except AccountUnavailable as exc:
            log.warning("%s; going on without the account check", exc)
            return None
        # The credentials worked: a 401 from now on is the service's passing glitch.
        self.client.successes += 1
        self.apply_account(info)
        balance = info.balance_usd
        if tasks_hint is not None and balance is not None:
            worst = tasks_hint * self.max_task_cost_usd
            if worst > balance:
                log.warning(
                    "the balance ($%.2f) cannot cover the worst case of this input "
                    "(%s × $%.4f = $%.2f): the run will stop when it runs out",
                    balance,
                    count(tasks_hint, "task"),
                    self.max_task_cost_usd,
                    worst,
                )
        return info

    def apply_account(self, account: Account) -> None:
        """Take the account's task_post limit as the rate (when none was given and no call
        was made yet), or warn when the given rate is above it."""
        limit = account.calls_per_minute("task_post")
        if limit is None:
            return
        where = account.source("task_post")
        ours = self.limiter.rate * 60.0 / self.limiter.period_s
        if self.rate_given or not isinstance(self.throttle, LocalThrottle):
            if ours > limit:
                log.warning(
                    "--rate is %.0f calls per minute but the account allows %d (%s): expect "
                    "40202 answers and a slowed-down run; lower --rate or leave it out",
                    ours,
                    limit,
                    where,
                )
            return
        if self.stats.calls == 0:
            period_s = self.limiter.period_s
            self._set_rate(max(2, round(limit * period_s / 60.0)), period_s)
            self.stats.window = CallWindow(limit=self.limiter.rate, period_s=period_s)
            self.rate_source = f"the account's limit, {where}"

    async def load_models(self, *, offline: bool = False) -> ModelList:
        """The engine's models list for this run (once): cached for a day, else fetched (the
        call takes a rate slot), else the built-in table; the rules use it from now on."""
        if self.models is None:
            cache = self.models_cache_dir
            self.models = await load_models(
                None if offline else self.transport,
                self.engine,
                cache_dir=default_cache_dir() if cache is None else Path(cache) if cache else None,
                throttle=self.throttle,
            )
            self.rules = TaskRules(self.engine, self.models)
            if self.models.source == "service":
                self.client.successes += 1  # as for user_data: the credentials work
            if self.models.source == "built-in":
                log.warning(
                    "the %s models list could not be read (%s): checking models against the "
                    "built-in table",
                    self.engine,
                    self.models.note,
                )
        return self.models

    # -- public entry points -------------------------------------------------------------

    def submit(
        self, tasks: Iterable[Task | Mapping[str, Any]] | AsyncIterable[Task | Mapping[str, Any]]
    ) -> AsyncIterator[Receipt]:
        """One receipt per task (line numbers count tasks from 1), as calls complete."""
        return self.submit_lines(self._as_lines(tasks))

    async def _as_lines(
        self,
        tasks: Iterable[Task | Mapping[str, Any]] | AsyncIterable[Task | Mapping[str, Any]],
    ) -> AsyncIterator[InputLine]:
        await self.load_models()
        complete = Completer(self.default_model, self.rules, model_hint=_PYTHON_MODEL_HINT)
        line = 0
        async for obj in _aiter(tasks):
            line += 1
            yield _to_line(line, obj, complete)

    def submit_lines(
        self, lines: Iterable[InputLine] | AsyncIterable[InputLine]
    ) -> AsyncIterator[Receipt]:
        """Submit lines from ``llmtasks._input.read_lines`` (or built the same way)."""
        return self._run(chunked(lines))

    def submit_lines_batched(
        self, lines: Iterable[InputLine] | AsyncIterable[InputLine]
    ) -> AsyncIterator[list[Receipt]]:
        """``submit_lines``, the receipts in lists as they are recorded (the CLI's way: one
        step of the iterator per call instead of per task)."""
        return self._run_batches(chunked(lines))

    async def verify(self, lines: Iterable[InputLine] | AsyncIterable[InputLine]) -> None:
        """Refuse (``InputError``) an input that is not the one this ledger recorded, before
        anything is sent. Reads the input once more; only the lines already recorded."""
        ledger = self.ledger
        assert ledger is not None
        last_known = ledger.last_line()
        seen = 0
        async for chunk in chunked(lines):
            if chunk[0].line > last_known:
                return
            known = ledger.known(chunk[0].line, chunk[-1].line)
            for il in chunk:
                seen = il.line
                prior = known.get(il.line)
                if prior is not None and prior[0] != il.digest:
                    raise self._changed(f"line {il.line} is not the line recorded")
        if seen < last_known:
            raise self._changed(f"it has {count(seen, 'line')}, the ledger recorded {last_known:,}")

    def _changed(self, what: str) -> InputError:
        assert self.ledger is not None
        return InputError(
            f"{self._input_name or 'input'}: {what} in ledger {self.ledger.path}: the input "
            "changed since that run. Use a new --ledger for a new input."
        )

    # -- the pipeline ----------------------------------------------------------------------

    async def _run(self, chunks: AsyncIterator[list[InputLine]]) -> AsyncIterator[Receipt]:
        batches = self._run_batches(chunks)
        try:
            async for item in batches:
                for receipt in item:
                    yield receipt
        finally:
            await batches.aclose()

    async def _run_batches(
        self, chunks: AsyncIterator[list[InputLine]]
    ) -> AsyncGenerator[list[Receipt], None]:
        if self.ledger is None:
            raise RuntimeError("use 'async with Submitter(...)' before submitting")
        out: asyncio.Queue[list[Receipt] | None] = asyncio.Queue(maxsize=256)
        self._out = out
        batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * self.concurrency)
        producer = asyncio.create_task(self._produce(chunks, batches))
        # Twice as many senders as slots: a sender recording its last reply or encoding its
        # next body does not hold a slot, and another one takes it meanwhile.
        senders = [
            asyncio.create_task(self._send_loop(batches)) for _ in range(2 * self.concurrency)
        ]

        async def supervise() -> None:
            try:
                await producer
            except Exception as exc:
                # Stop the senders cleanly, then re-raise this error to the caller.
                self._error = exc
            finally:
                # Senders exit on these sentinels; batches still queued are returned pending.
                for _ in senders:
                    await batches.put(None)
                await asyncio.gather(*senders, return_exceptions=True)
                await out.put(None)

        self._supervisor = asyncio.create_task(supervise())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            await self._drain()
            self.stats.ended = time.monotonic()
            # Everything recorded before the caller reads the ledger (or the run ends).
            if self._writer is not None:
                try:
                    await self._writer.flush()
                except LedgerWriteError as exc:
                    self._error = self._error or exc
        if self._error is not None:
            raise self._error
        if self._stop_reason is not None:
            raise self._stop_reason

    def _halted(self) -> bool:
        return self._interrupted or self._stop_reason is not None or self._error is not None

    async def _emit(self, receipts: list[Receipt], state: str | None = None) -> None:
        """Hand receipts to the caller; ``state`` when they all have that one."""
        if state is not None:
            self.stats.count(state, len(receipts))
        else:
            for r in receipts:
                self.stats.count(r.state)
        if self._out is not None and receipts:
            if self.ledger is not None and self.ledger.fanout:
                # One outcome per (line, engine): a fan-out run's receipts name the engine.
                replace, engine = msgspec.structs.replace, self.engine
                receipts = [replace(r, engine=engine) for r in receipts]
            await self._out.put(receipts)

    async def _produce(
        self, chunks: AsyncIterator[list[InputLine]], batches: asyncio.Queue[Batch | None]
    ) -> None:
        ledger, writer = self.ledger, self._writer
        assert ledger is not None and writer is not None
        last_known = ledger.last_line()
        tag_prefix = ledger.tag_prefix
        # The generated tag is ASCII without quotes, so it is spliced in without encoding.
        splice = b',"tag":"' + tag_prefix.encode() + b'%d"}'
        push = [
            (name, b"," + _encode_str(name) + b":" + _encode_str(url))
            for name, url in self.push_fields.items()
        ]
        shard = self.shard
        size = self.batch_size
        batch = Batch()
        encode = _encode_task
        async for chunk in chunks:
            if self._halted():
                return
            if shard is not None:
                # Another process's lines are not ours to read.
                chunk = [il for il in chunk if (il.line - 1) % shard[1] == shard[0] - 1]
                if not chunk:
                    continue
            self.stats.lines_read += len(chunk)
            if chunk[0].line <= last_known:
                chunk = self._not_done(chunk, ledger.known(chunk[0].line, chunk[-1].line))
            rows: list[tuple[Any, ...]] = []
            receipts: list[Receipt] = []
            # The batch left open by the last chunk goes on filling; full ones are cut after.
            add_line, add_tag = batch.lines.append, batch.tags.append
            add_part, add_digest = batch.parts.append, batch.digests.append
            for il in chunk:
                task = il.task
                if task is None:
                    state: State = "skipped" if il.skipped else "rejected"
                    fld = None if il.skipped else il.field
                    rows.append((il.line, il.digest, state, None, None, fld, il.reason))
                    receipts.append(Receipt(line=il.line, state=state, field=fld, reason=il.reason))
                    continue
                line = il.line
                part = encode(task)
                tag = task.tag
                if tag is None:
                    tag = f"{tag_prefix}{line}"
                    part = part[:-1] + splice % line if len(part) > 2 else b"{" + splice[1:] % line
                else:
                    # Reconcile finds a user's tag's line by tag and prompt; a generated tag
                    # names its line.
                    prompt = prompt_digest(task.user_prompt or "")
                    batch.user_tags.append((len(batch.lines), prompt))
                if push:
                    for name, extra in push:
                        if getattr(task, name) is None:
                            part = part[:-1] + extra + b"}"
                add_line(line)
                add_tag(tag)
                add_part(part)
                add_digest(il.digest)
            # Lines that will not be sent: their outcome now, the only write they get.
            writer.add_lines(rows)
            await self._emit(receipts)
            for full in batch.cut(size):
                await batches.put(full)
        if batch.lines:
            if self._halted():
                await self._leave_pending(batch, "not sent: the run stopped")
            else:
                await batches.put(batch)

    def _not_done(
        self, chunk: list[InputLine], known: Mapping[int, tuple[bytes, str]]
    ) -> list[InputLine]:
        """A resumed run: the lines of ``chunk`` still to do. A recorded line must be the
        line read now; one in a final state is done."""
        todo: list[InputLine] = []
        for il in chunk:
            prior = known.get(il.line)
            if prior is not None:
                digest, state = prior
                if digest != il.digest:
                    raise self._changed(f"line {il.line} is not the line recorded")
                if state != "pending" or il.task is None:
                    self.stats.already_done += 1
                    continue
            todo.append(il)
        return todo

    async def _send_loop(self, batches: asyncio.Queue[Batch | None]) -> None:
        writer, ledger = self._writer, self.ledger
        assert writer is not None and ledger is not None
        while (batch := await batches.get()) is not None:
            if self._halted():
                await self._leave_pending(batch, "not sent: the run stopped")
                continue
            try:
                # Its write-ahead now, while the calls in flight hold every slot: when one
                # frees, this batch's POST follows with no ledger write in between.
                await writer.prepare(ledger.session_id or 0, batch)
            except LedgerWriteError as exc:
                self._error = self._error or exc
                await self._leave_pending(batch, "not sent: the ledger cannot be written")
                continue
            try:
                await self._send(batch)
            finally:
                # Cancelled before its POST: the row stays ``sending`` (the next run marks
                # its lines unknown, the safe side); the place ahead is given back.
                writer.unprepare(batch)

    async def _leave_pending(self, batch: Batch, reason: str) -> None:
        """Lines not sent by this run (it stopped): recorded ``pending`` for the next, and
        the write-ahead made for them, if any, closed as a call that created nothing."""
        receipts = [
            Receipt(line=line, state="pending", tag=tag, reason=reason)
            for line, tag in zip(batch.lines, batch.tags, strict=True)
        ]
        writer = self._writer
        assert writer is not None
        batch_id = writer.unprepare(batch)
        end = () if batch_id is None else ("not_created", None, None, 0, reason)
        writer.record(batch_id, end, batch, receipts)
        await self._emit(receipts, "pending")

    def _budget_allows(self, n_tasks: int) -> bool:
        if self.max_cost_usd is None:
            return True
        worst = n_tasks * self.max_task_cost_usd
        return self.stats.cost_usd + self.stats.reserved_usd + worst <= self.max_cost_usd + 1e-9

    async def _send(self, batch: Batch) -> None:
        writer, ledger = self._writer, self.ledger
        assert writer is not None and ledger is not None
        worst = len(batch) * self.max_task_cost_usd
        sent: list[int] = []  # the write-ahead of each attempt sent
        refused: list[str] = []  # why the last attempt was not sent

        @contextlib.asynccontextmanager
        async def prepare(attempt: int) -> AsyncIterator[bool]:
            # Inside the slot. Taken at admission: the limiter's windows count from there.
            called_at = time.monotonic()
            if self._halted():
                refused.append("not sent: the run stopped")
            elif not self._budget_allows(len(batch)):
                self._stop_reason = FundsError(
                    f"--max-cost-usd {self.max_cost_usd} reached: the next call could cost "
                    f"up to ${worst:.4f} more; unsent lines stay pending"
                )
                refused.append("not sent: --max-cost-usd reached")
            if refused:
                yield False
                return
            self.stats.reserved_usd += worst
            try:
                try:
                    # Committed before the POST leaves: see _ledger_writer.
                    sent.append(await writer.mark_sending(ledger.session_id or 0, batch))
                except LedgerWriteError as exc:
                    self._error = self._error or exc
                    refused.append("not sent: the ledger cannot be written")
                else:
                    self.stats.note_call(called_at)
                yield not refused
            finally:
                self.stats.reserved_usd -= worst

        async def retrying(reply: Reply, attempt: int) -> None:
            self.stats.retries += 1
            # Certainly nothing was created: the lines are pending again while we wait.
            await self._record_all(batch, sent[-1], "pending", reply, attempt, None, emit=False)
            log.info("retrying a call (%s), attempt %d", reply.message, attempt + 1)

        # Never idempotent: a reply lost after the POST left comes back ``unknown``.
        answer = await self.client.call(
            Request("task_post", "POST", self.path, batch.body()),
            stopping=self._halted,
            prepare=prepare,
            on_retry=retrying,
        )
        reply, attempt = answer.reply, answer.attempts
        if reply is None:
            await self._leave_pending(
                batch, refused[-1] if refused else "not sent: the run stopped"
            )
            return
        batch_id = sent[-1]
        if reply.kind == "ok":
            await self._record_ok(batch, batch_id, reply, attempt)
            return
        if reply.kind == "unknown":
            await self._record_all(
                batch, batch_id, "unknown", reply, attempt, f"reply lost: {reply.message}"
            )
            return
        # Nothing was created; these lines wait for a later run.
        if reply.kind == "retry":
            reason = f"gave up after {attempt} attempts: {reply.message}"
        else:
            reason = f"not sent: {reply.message}"
            if self._stop_reason is None:
                self._stop_reason = stop_error(reply, self.client.successes)
        await self._record_all(batch, batch_id, "pending", reply, attempt, reason)

    async def _record_all(
        self,
        batch: Batch,
        batch_id: int,
        state: Any,
        reply: Reply,
        attempt: int,
        reason: str | None,
        *,
        emit: bool = True,
    ) -> None:
        writer = self._writer
        assert writer is not None
        code, message = reply.status_code, reply.message or None
        receipts = [
            Receipt(
                line=line,
                state=state,
                tag=tag,
                status_code=code,
                status_message=message,
                reason=reason,
            )
            for line, tag in zip(batch.lines, batch.tags, strict=True)
        ]
        end = (
            "unknown" if state == "unknown" else "not_created",
            reply.http_status,
            code,
            attempt,
            reply.message,
        )
        if emit:
            writer.record(batch_id, end, batch, receipts)
            await self._emit(receipts, state)
        else:
            # Retried: the lines are still on their way, and get their one row at the end.
            writer.record(batch_id, end, batch)

    async def _record_ok(self, batch: Batch, batch_id: int, reply: Reply, attempt: int) -> None:
        writer = self._writer
        env = reply.envelope
        assert writer is not None and env is not None
        receipts, all_created, cost = post_receipts(batch.lines, batch.tags, env)
        self.stats.cost_usd += env.cost if env.cost is not None else cost
        writer.record(
            batch_id, ("done", reply.http_status, env.status_code, attempt, None), batch, receipts
        )
        await self._emit(receipts, "created" if all_created else None)


_PYTHON_MODEL_HINT: Final = "is required (set model_name in the task or give default_model)"


def _to_line(line: int, obj: Task | Mapping[str, Any], complete: Completer) -> InputLine:
    """A task given in Python, judged as the same task on a line of a JSONL file would be
    (``decode_record``): the same checks and the same words. Encoded first because msgspec
    checks constraints on decode, not when a Struct is built."""
    try:
        raw = msgspec.json.encode(obj)
    except TypeError as exc:
        return InputLine(line=line, digest=b"", task=None, field="", reason=str(exc))
    return decode_record(raw, line, record_digest(raw), complete)


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
