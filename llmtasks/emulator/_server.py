"""The aiohttp server: routes, the gate every API call passes, and the endpoint handlers.

Every API call goes through ``_serve``: auth (and the spurious-401 fault), the in-flight cap,
the sliding-window rate limits, the 500 fault, then the endpoint's synchronous handler, then
the latency and drop faults. Handlers never await, so state changes are atomic.
Tasks are judged by ``_rules`` and id_list queries by ``_idlist``: the emulator's own reading
of the docs, never the client's validation. Postbacks/pingbacks: ``_create`` hands tasks
that ask for one to the ``PushSender`` (``_postback``), which delivers them at completion
time and releases failed ones to tasks_ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._idlist import Query, parse_query
from llmtasks.emulator._models import CATALOGUE, RESOLVE, Family
from llmtasks.emulator._postback import Delivery, PushSender, push_url
from llmtasks.emulator._results import llm_result
from llmtasks.emulator._rules import (
    MAX_TASKS_PER_POST,
    Policy,
    Refusal,
    WireTask,
    judge,
    reasons,
    unknown,
    unknown_fields,
)
from llmtasks.emulator._state import (
    CallRecord,
    Clock,
    CreatedTask,
    IdMaker,
    Money,
    SlidingWindow,
    Store,
)

_WIRE_LIST: Final = msgspec.json.Decoder(list[WireTask])
_ANY_LIST: Final = msgspec.json.Decoder(list[Any])
_ANY: Final = msgspec.json.Decoder()
_ENCODE: Final = w.encoder.encode
# A body that cannot be read as JSON of the expected shape; nesting too deep for the decoder
# is hostile input like any other, answered 40503 rather than a 500.
_UNREADABLE: Final = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)
READY_LIMIT: Final = 1000
DOCUMENTED_PER_MINUTE: Final = 2000  # what user_data reports for a function without a limit
UNLIMITED_FUNDS_USD: Final = 1_000_000.0  # what user_data reports when funds are unlimited

# Which sliding window a route counts against; each function is its own budget.
Limit = Literal["task_post", "task_get", "models", "tasks_ready", "id_list"] | None


class Reply(msgspec.Struct):
    http_status: int
    status_code: int | None
    body: bytes
    tasks_created: int = 0
    content_type: str = "application/json"


Handler = Callable[[web.Request, bytes, float, float], Reply]


class Emulator:
    """A local DataForSEO LLM Responses service. Use ``async with`` or ``start``/``close``."""

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config if config is not None else EmulatorConfig()
        self._host = host
        self._port = port
        self._rng = random.Random(self._config.seed)
        self._ids = IdMaker(self._rng)
        self._store = Store()
        self._calls: list[CallRecord] = []
        self._clock = Clock(self._config.clock_offset_s)
        self._money = Money(self._config)
        self._policy = self._policy_of(self._config)
        self._windows = {
            name: SlidingWindow()
            for name in ("task_post", "task_get", "models", "tasks_ready", "id_list", "total")
        }
        self._date_second = -1
        self._date_header = ""
        self._in_flight = 0
        self._auth = self._auth_header(self._config)
        self._runner: web.AppRunner | None = None
        self.tasks_created = 0
        self.calls_count = 0
        self._data_prefix = {se: w.data_prefix(se) for se in CATALOGUE}
        self._post_path = {
            se: msgspec.Raw(_ENCODE(w.path_of(w.API, se, w.FUNCTION, "task_post")))
            for se in CATALOGUE
        }
        self._push = PushSender(
            done_mono=self._store.done_mono,
            task_at=self._store.created.__getitem__,
            result_body=self._push_body,
            release=lambda index: self._store.release(index, time.monotonic()),
        )
        self.app = self._make_app()

    # ---- public surface -------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def created(self) -> list[CreatedTask]:
        return self._store.created

    @property
    def calls(self) -> list[CallRecord]:
        return self._calls

    @property
    def balance_usd(self) -> float | None:
        """What is left of ``funds_usd``; ``None`` when funds are unlimited."""
        return self._money.balance_usd

    @property
    def spent_usd(self) -> float:
        return round(self._money.spent_usd, 6)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reconfigure(self, **changes: Any) -> EmulatorConfig:
        """Change settings of a running emulator; ``funds_usd`` sets the balance anew."""
        merged = {**msgspec.structs.asdict(self._config), **changes}
        new = msgspec.convert(merged, EmulatorConfig)
        if "funds_usd" in changes:
            self._money.set_funds(new.funds_usd)
        if "seed" in changes:
            self._rng.seed(new.seed)
        if "clock_offset_s" in changes:
            self._clock.shift(new.clock_offset_s - self._config.clock_offset_s)
        self._policy = self._policy_of(new)
        self._auth = self._auth_header(new)
        self._config = new
        return new

    @property
    def now_unix(self) -> float:
        """The service's clock (what its ``Date`` headers and datetimes show)."""
        return self._clock.now()

    def complete_all(self) -> None:
        """Make every created task done now (tests that do not want to wait)."""
        self._store.complete_all()
        self._push.rescheduled()

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    @property
    def deliveries(self) -> list[Delivery]:
        """Every postback/pingback attempt, in order."""
        return self._push.deliveries

    async def close(self) -> None:
        await self._push.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- routing and the gate -------------------------------------------------------------

    @staticmethod
    def _policy_of(config: EmulatorConfig) -> Policy:
        return Policy(
            sampling_together=config.sampling_together,
            gemini_search_options=config.gemini_search_options,
        )

    @staticmethod
    def _auth_header(config: EmulatorConfig) -> str:
        token = base64.b64encode(f"{config.login}:{config.password}".encode()).decode()
        return f"Basic {token}"

    def _authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        if header == self._auth:
            return True
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self._config.login}:{self._config.password}"

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        llm = "/v3/ai_optimization/{se}/llm_responses"
        api = self._api
        app.router.add_post(f"{llm}/task_post", api("task_post", self._task_post))
        app.router.add_get(f"{llm}/tasks_ready", api("tasks_ready", self._tasks_ready))
        app.router.add_get(f"{llm}/task_get/{{id}}", api("task_get", self._task_get))
        app.router.add_get(f"{llm}/models", api("models", self._models))
        app.router.add_post("/v3/ai_optimization/id_list", api("id_list", self._id_list))
        app.router.add_post("/v3/appendix/id_list", api("id_list", self._id_list))
        app.router.add_get("/v3/appendix/user_data", api(None, self._user_data))
        app.router.add_get("/_emulator/created", self._inspect_created)
        app.router.add_get("/_emulator/calls", self._inspect_calls)
        app.router.add_get("/_emulator/deliveries", self._inspect_deliveries)
        app.router.add_get("/_emulator/stats", self._inspect_stats)
        app.router.add_get("/_emulator/config", self._inspect_config)
        app.router.add_post("/_emulator/config", self._set_config)
        app.router.add_post("/_emulator/complete", self._complete)
        app.router.add_route("*", "/{tail:.*}", api(None, self._not_found))
        return app

    def _api(self, limit: Limit, handler: Handler) -> Callable[[web.Request], Awaitable[Any]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, limit, handler)

        return serve

    async def _serve(
        self, request: web.Request, limit: Limit, handler: Handler
    ) -> web.StreamResponse:
        started = time.perf_counter()
        now = time.monotonic()
        cfg = self._config
        rng = self._rng
        self.calls_count += 1
        if not self._authorized(request.headers.get("Authorization")) or (
            cfg.spurious_401_rate and rng.random() < cfg.spurious_401_rate
        ):
            reply = Reply(401, w.NOT_AUTHORIZED[0], w.envelope(w.NOT_AUTHORIZED, started))
            return await self._answer(request, reply, now, cfg, drop=False)
        self._in_flight += 1
        try:
            drop = False
            # Counted before anything can refuse it: refused calls use up the window too.
            within = limit is None or self._count(limit, now, cfg)
            if self._in_flight > cfg.max_in_flight:
                reply = Reply(200, w.TOO_MANY_AT_ONCE[0], w.envelope(w.TOO_MANY_AT_ONCE, started))
            elif not within:
                reply = Reply(200, w.RATE_LIMITED[0], w.envelope(w.RATE_LIMITED, started))
            elif cfg.fail_rate and rng.random() < cfg.fail_rate:
                reply = Reply(500, None, b"500 Internal Server Error", content_type="text/plain")
            else:
                body = await request.read() if request.can_read_body else b""
                reply = handler(request, body, now, started)
                drop = bool(cfg.drop_rate) and rng.random() < cfg.drop_rate
            return await self._answer(request, reply, now, cfg, drop=drop)
        finally:
            self._in_flight -= 1

    @staticmethod
    def _budget(limit: str, cfg: EmulatorConfig) -> tuple[int | None, float]:
        """(calls, per seconds) of one function."""
        if limit == "task_post":
            return cfg.rate, cfg.period_s
        if limit == "task_get":
            return cfg.task_get_rate, cfg.period_s
        if limit == "models":
            return cfg.models_rate, cfg.period_s
        if limit == "tasks_ready":
            return cfg.tasks_ready_rate, 60.0
        if limit == "id_list":
            return cfg.id_list_rate, 60.0
        return cfg.total_rate, 60.0

    def _count(self, limit: str, now: float, cfg: EmulatorConfig) -> bool:
        calls, period_s = self._budget(limit, cfg)
        ok = self._windows[limit].hit(now, calls, period_s)
        return self._windows["total"].hit(now, cfg.total_rate, 60.0) and ok

    def _date(self) -> str:
        """The ``Date`` header from the service's clock (one string per second)."""
        now = self._clock.now()
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_header = formatdate(second, usegmt=True)
        return self._date_header

    async def _answer(
        self, request: web.Request, reply: Reply, now: float, cfg: EmulatorConfig, *, drop: bool
    ) -> web.StreamResponse:
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        if cfg.record:
            self._calls.append(
                CallRecord(
                    at=now,
                    at_wall=self._clock.wall(now),
                    method=request.method,
                    path=request.path,
                    http_status=0 if drop else reply.http_status,
                    status_code=reply.status_code,
                    tasks_created=reply.tasks_created,
                    dropped=drop,
                )
            )
        if drop:
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Nothing can be written any more; the client sees the connection die.
            raise asyncio.CancelledError
        return web.Response(
            status=reply.http_status,
            body=reply.body,
            content_type=reply.content_type,
            headers={"Date": self._date()},
        )

    # ---- task_post ------------------------------------------------------------------------

    def _task_post(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        models = RESOLVE.get(se)
        if models is None:
            return self._not_found(request, body, now, started)
        entries: list[WireTask | tuple[int, str, bytes]]
        try:
            entries = list(_WIRE_LIST.decode(body))
        except _UNREADABLE:
            # Not all plain task objects: judge element by element.
            try:
                items = _ANY_LIST.decode(body)
            except _UNREADABLE:
                return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
            entries = [self._decode_one(item, i, se) for i, item in enumerate(items)]
        if not entries:
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))

        # First pass: what each task would become, so funds can refuse the call as a whole.
        policy = self._policy
        verdicts: list[Family | Refusal] = []
        n_ok = 0
        for i, entry in enumerate(entries):
            if i >= MAX_TASKS_PER_POST:
                verdicts.append(w.TOO_MANY_TASKS)
            elif isinstance(entry, WireTask):
                verdict = judge(se, entry, models, policy)
                if isinstance(verdict, Family):
                    n_ok += 1
                verdicts.append(verdict)
            else:
                verdicts.append((entry[0], entry[1]))
        cfg = self._config
        unit_cost = cfg.task_cost_usd
        total_cost = round(n_ok * unit_cost, 6)
        if n_ok and not self._money.can_pay(total_cost):
            return Reply(402, w.BALANCE_TOO_LOW[0], w.envelope(w.BALANCE_TOO_LOW, started))
        self._money.pay(total_cost)

        prefix = self._data_prefix[se]
        path = self._post_path[se]
        wall = self._clock.wall(now)
        id_prefix = self._ids.prefix(wall)
        make_id = self._ids.make
        with_prefix = w.with_prefix
        task_out = w.TaskOut
        per_task_time = w.seconds((time.perf_counter() - started) / len(entries))
        record = cfg.record
        done_at = now + cfg.completion_delay_s
        out: list[w.TaskOut] = []
        append = out.append
        for entry, verdict in zip(entries, verdicts, strict=True):
            task_id = make_id(id_prefix)
            if isinstance(entry, WireTask):
                data = with_prefix(prefix, _ENCODE(entry))
            else:
                data = with_prefix(prefix, entry[2])
            if isinstance(verdict, Family):
                append(
                    task_out(
                        task_id,
                        20100,
                        "Task Created.",
                        per_task_time,
                        unit_cost,
                        0,
                        path,
                        data,
                        None,
                    )
                )
                if record:
                    assert isinstance(entry, WireTask)
                    self._create(task_id, se, entry, wall, data, done_at)
            else:
                append(
                    task_out(
                        task_id, verdict[0], verdict[1], per_task_time, 0.0, 0, path, data, None
                    )
                )
        self.tasks_created += n_ok
        envelope = w.envelope(w.OK, started, out, total_cost, errors=len(out) - n_ok)
        return Reply(200, 20000, envelope, n_ok)

    def _create(
        self, task_id: str, se: str, task: WireTask, wall: float, data: msgspec.Raw, done_at: float
    ) -> None:
        cfg = self._config
        failed = bool(cfg.task_fail_rate) and self._rng.random() < cfg.task_fail_rate
        if failed:
            # A task that fails on the service is refunded.
            self._money.refund(cfg.task_cost_usd)
        created = CreatedTask(
            id=task_id,
            engine=se,
            tag=task.tag,
            user_prompt=task.user_prompt,
            model_name=task.model_name,
            posted_at=wall,
            data=_ANY.decode(data),
            cost_usd=cfg.task_cost_usd,
            failed=failed,
        )
        push = task.postback_url is not None or task.pingback_url is not None
        # Documented: postback tasks are delivered instead of listed; pingback tasks are
        # listed by tasks_ready until fetched.
        kind = push_url(created) if push else None
        index = self._store.add(created, done_at, held=kind is not None and kind[0] == "postback")
        if push:
            self._push.schedule(index)

    def _decode_one(self, item: Any, index: int, se: str) -> WireTask | tuple[int, str, bytes]:
        """Slow path: one element of a body that did not decode as plain task objects."""
        if type(item) is not dict:
            return (*w.INVALID_POST, b"{}")
        fields = {k: v for k, v in item.items() if v is not None}
        echo = _ENCODE(fields)
        if index >= MAX_TASKS_PER_POST:
            return (*w.TOO_MANY_TASKS, echo)
        names = unknown_fields(se, fields, self._policy)
        if names:
            return (*unknown(names), echo)
        return msgspec.convert(fields, WireTask)

    # ---- tasks_ready, task_get, models ------------------------------------------------------

    def _call_task(
        self, se: str, function: str, started: float, result: list[Any], cost: float = 0.0
    ) -> w.TaskOut:
        return w.TaskOut(
            self._ids.make(self._ids.prefix(self._clock.now())),
            w.OK[0],
            w.OK[1],
            w.seconds(time.perf_counter() - started),
            cost,
            len(result),
            w.path_of(w.API, se, w.FUNCTION, function),
            w.to_data(se, {}),
            result,
        )

    def _tasks_ready(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return self._not_found(request, body, now, started)
        result = [
            {
                "id": task.id,
                "se": se,
                "se_type": w.FUNCTION,
                "date_posted": w.utc_datetime(task.posted_at),
                "tag": task.tag,
                "endpoint": f"/v3/ai_optimization/{se}/llm_responses/task_get/{task.id}",
            }
            for task in self._store.ready(se, now, READY_LIMIT)
        ]
        out = self._call_task(se, "tasks_ready", started, result)
        return Reply(200, 20000, w.envelope(w.OK, started, [out]))

    def _task_get(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return self._not_found(request, body, now, started)
        task_id = request.match_info["id"]
        path = w.path_of(w.API, se, w.FUNCTION, "task_get", task_id)
        found = self._store.lookup(task_id)
        code: tuple[int, str] | None = None
        if found is None or found[0].engine != se:
            code, data = w.TASK_NOT_FOUND, w.to_data(se, {})
        else:
            task, done_mono = found
            data = task.data
            if now < done_mono:
                posted_mono = self._clock.mono(task.posted_at)
                halfway = posted_mono + (done_mono - posted_mono) / 2
                code = w.TASK_IN_QUEUE if now < halfway else w.TASK_HANDED
            elif now - done_mono > self._config.results_ttl_s:
                code = w.RESULTS_EXPIRED
        if code is not None:
            out = w.TaskOut(task_id, code[0], code[1], w.seconds(0.0), 0.0, 0, path, data, None)
            return Reply(200, 20000, w.envelope(w.OK, started, [out]))
        self._store.collect(task, now)
        return Reply(200, 20000, self._result_envelope(task, done_mono, started))

    def _result_envelope(self, task: CreatedTask, done_mono: float, started: float) -> bytes:
        """task_get's envelope for a done task (also the body of its postback)."""
        se = task.engine
        path = w.path_of(w.API, se, w.FUNCTION, "task_get", task.id)
        elapsed = w.seconds(time.perf_counter() - started)
        if task.failed:
            code, message = w.TASK_FAILED
            out = w.TaskOut(task.id, code, message, elapsed, 0.0, 0, path, task.data, None)
            return w.envelope(w.OK, started, [out], 0.0)
        family = RESOLVE[se][task.model_name]
        result = llm_result(
            engine=se,
            model_name=family.dated,
            user_prompt=task.user_prompt,
            done_unix=self._clock.wall(done_mono),
            web_search=task.data.get("web_search") is True,
            reasoning=reasons(se, family, task.data),
            cost_usd=task.cost_usd,
            seed=self._config.seed,
        )
        out = w.TaskOut(task.id, 20000, "Ok.", elapsed, task.cost_usd, 1, path, task.data, [result])
        return w.envelope(w.OK, started, [out], task.cost_usd)

    def _push_body(self, index: int) -> bytes:
        return self._result_envelope(
            self._store.created[index], self._store.done_mono(index), time.perf_counter()
        )

    def _models(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return self._not_found(request, body, now, started)
        out = self._call_task(se, "models", started, list(CATALOGUE[se]))
        return Reply(200, 20000, w.envelope(w.OK, started, [out]))

    # ---- id_list, user_data, 404 ------------------------------------------------------------

    def _id_list(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        try:
            items = _ANY_LIST.decode(body)
        except _UNREADABLE:
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
        if not items:
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
        path = [p for p in request.path.split("/") if p]
        base = f"{request.scheme}://{request.host}"
        wall = self._clock.wall(now)
        out: list[w.TaskOut] = []
        for item in items:
            task_id = self._ids.make(self._ids.prefix(wall))
            echo = {k: v for k, v in item.items() if v is not None} if type(item) is dict else {}
            data = {"api": w.API, "function": "id_list", **echo}
            query = parse_query(item, wall)
            if not isinstance(query, Query):
                code, message = query
                out.append(
                    w.TaskOut(task_id, code, message, w.seconds(0.0), 0.0, 0, path, data, None)
                )
                continue
            indexes = self._store.posted_between(query.from_unix, query.to_unix)
            if query.descending:
                indexes.reverse()
            result = [
                self._id_list_item(i, now, base, query.include_metadata)
                for i in indexes[query.offset : query.offset + query.limit]
            ]
            elapsed = w.seconds(time.perf_counter() - started)
            out.append(
                w.TaskOut(task_id, 20000, "Ok.", elapsed, 0, len(result), path, data, result)
            )
        return Reply(200, 20000, w.envelope(w.OK, started, out))

    def _id_list_item(self, index: int, now: float, base: str, metadata: bool) -> dict[str, Any]:
        task = self._store.created[index]
        done_mono = self._store.done_mono(index)
        done = done_mono <= now
        failed = done and task.failed
        return {
            "id": task.id,
            "url": f"{base}/v3/ai_optimization/{task.engine}/llm_responses/task_post",
            "datetime_posted": w.utc_datetime(task.posted_at),
            "datetime_done": w.utc_datetime(self._clock.wall(done_mono)) if done else None,
            "status": "failed" if failed else "ok" if done else "in_progress",
            "cost": 0.0 if task.failed else task.cost_usd,
            "metadata": task.data if metadata else None,
        }

    def _per_minute(self, limit: str, cfg: EmulatorConfig) -> int:
        """A function's enforced limit as calls per minute (the documented one if none)."""
        calls, period_s = self._budget(limit, cfg)
        if calls is None:
            return {"tasks_ready": 20, "id_list": 10}.get(limit, DOCUMENTED_PER_MINUTE)
        return round(calls * 60.0 / period_s)

    def _user_data(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        cfg = self._config
        per_minute = self._per_minute
        llm = {
            "live": DOCUMENTED_PER_MINUTE,  # the emulator has no live endpoint
            "task_post": per_minute("task_post", cfg),
            "tasks_ready": per_minute("tasks_ready", cfg),
            "task_get": per_minute("task_get", cfg),
            "models": per_minute("models", cfg),
        }
        minute: dict[str, Any]
        if cfg.user_data_shape == "flat":
            total = cfg.total_rate if cfg.total_rate is not None else llm["task_post"]
            minute = {"total": total, "ai_optimization": llm["task_post"]}
        else:
            total = cfg.total_rate if cfg.total_rate is not None else max(llm.values())
            minute = {
                "total": total,
                "total_ai_optimization": total,
                "ai_optimization": {
                    "llm_responses": llm,
                    "id_list": per_minute("id_list", cfg),
                },
            }
        balance = self._money.balance_usd
        funds = self._money.funds_usd
        result = {
            "login": cfg.login,
            "timezone": "UTC",
            "rates": {"limits": {"minute": minute}},
            "money": {
                "total": UNLIMITED_FUNDS_USD if funds is None else round(funds, 6),
                "balance": UNLIMITED_FUNDS_USD if balance is None else balance,
            },
        }
        out = w.TaskOut(
            self._ids.make(self._ids.prefix(self._clock.wall(now))),
            20000,
            "Ok.",
            w.seconds(time.perf_counter() - started),
            0.0,
            1,
            ["v3", "appendix", "user_data"],
            {"api": "appendix", "function": "user_data"},
            [result],
        )
        return Reply(200, 20000, w.envelope(w.OK, started, [out]))

    def _not_found(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        return Reply(404, w.NOT_FOUND[0], w.envelope(w.NOT_FOUND, started))

    # ---- inspection (no auth, not counted) ------------------------------------------------

    @staticmethod
    def _offset(request: web.Request) -> int:
        try:
            return max(0, int(request.query.get("offset", "0")))
        except ValueError:
            return 0

    async def _inspect_created(self, request: web.Request) -> web.Response:
        rows = self._store.created[self._offset(request) :]
        return web.Response(body=_ENCODE(rows), content_type="application/json")

    async def _inspect_calls(self, request: web.Request) -> web.Response:
        rows = self._calls[self._offset(request) :]
        return web.Response(body=_ENCODE(rows), content_type="application/json")

    async def _inspect_deliveries(self, request: web.Request) -> web.Response:
        rows = self._push.deliveries[self._offset(request) :]
        return web.Response(body=_ENCODE(rows), content_type="application/json")

    async def _inspect_stats(self, request: web.Request) -> web.Response:
        stats = {
            "tasks_created": self.tasks_created,
            "calls": self.calls_count,
            "in_flight": self._in_flight,
            "balance_usd": self.balance_usd,
            "spent_usd": self.spent_usd,
        }
        return web.Response(body=_ENCODE(stats), content_type="application/json")

    async def _inspect_config(self, request: web.Request) -> web.Response:
        return web.Response(body=_ENCODE(self._config), content_type="application/json")

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            changes = _ANY.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            new = self.reconfigure(**changes)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError) as err:
            return web.Response(status=400, text=str(err))
        return web.Response(body=_ENCODE(new), content_type="application/json")

    async def _complete(self, request: web.Request) -> web.Response:
        self.complete_all()
        return web.Response(body=b"{}", content_type="application/json")
