"""The aiohttp server: routes, the gate every API call passes, and the endpoint handlers.

Every API call goes through ``_serve``: auth (and the spurious-401 fault), the in-flight cap,
the sliding-window rate limits, the 500 fault, then the endpoint's synchronous handler, then
the latency and drop faults. Handlers never await, so state changes are atomic.
Postbacks/pingbacks: ``_create`` hands tasks that ask for one to the ``PushSender``
(``_postback``), which delivers them at completion time and releases failed ones to
tasks_ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from llmtasks._task import (
    MAX_TASKS_PER_POST,
    Task,
    TaskRuleError,
    check_rules,
    decode_task,
    explain,
)
from llmtasks.emulator import _wire as w
from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._guard import MAX_BODY_BYTES, guard
from llmtasks.emulator._models import CATALOGUE, RESOLVE, Model
from llmtasks.emulator._postback import Delivery, PushSender, push_url
from llmtasks.emulator._results import llm_result
from llmtasks.emulator._state import (
    CallRecord,
    Clock,
    CreatedTask,
    IdMaker,
    Money,
    SlidingWindow,
    Store,
)

_TASK_LIST: Final = msgspec.json.Decoder(list[Task])
_RAW_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ANY: Final = msgspec.json.Decoder()
_ENCODE: Final = w.encoder.encode
READY_LIMIT: Final = 1000
UNLIMITED_PER_MINUTE: Final = 2000  # what user_data reports when no rate is set
UNLIMITED_FUNDS_USD: Final = 1_000_000.0  # what user_data reports when funds are unlimited

# Which sliding window a route counts against.
Limit = Literal["main", "tasks_ready", "id_list"] | None


class Reply(msgspec.Struct):
    http_status: int
    status_code: int | None
    body: bytes
    tasks_created: int = 0
    content_type: str = "application/json"


Handler = Callable[[web.Request, bytes, float, float], Reply]


class IdListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    datetime_from: str
    datetime_to: str
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    sort: Literal["asc", "desc"] = "asc"
    include_metadata: bool = False


_ID_LIST: Final = msgspec.json.Decoder(list[IdListQuery])


def _invalid(field: str, reason: str) -> tuple[int, str]:
    return w.INVALID_FIELD, f"Invalid Field: '{field}'. {reason}"


def _parse_datetime(text: str) -> float:
    """``2026-11-25 10:00:00 +00:00``; without an offset the time is taken as UTC."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        naive = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
        return naive.replace(tzinfo=UTC).timestamp()


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
        self._clock = Clock()
        self._money = Money(self._config)
        self._windows = {
            "main": SlidingWindow(),
            "tasks_ready": SlidingWindow(),
            "id_list": SlidingWindow(),
        }
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
        self._auth = self._auth_header(new)
        self._config = new
        return new

    def complete_all(self) -> None:
        """Make every created task done now (tests that do not want to wait)."""
        self._store.complete_all()
        self._push.rescheduled()

    async def start(self) -> None:
        if self._runner is not None:
            return
        # Bodies are inflated by _guard, within bounds; aiohttp's own inflating is not.
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=1.0, auto_decompress=False
        )
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
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
        llm = "/v3/ai_optimization/{se}/llm_responses"
        api = self._api
        app.router.add_post(f"{llm}/task_post", api("main", self._task_post))
        app.router.add_get(f"{llm}/tasks_ready", api("tasks_ready", self._tasks_ready))
        app.router.add_get(f"{llm}/task_get/{{id}}", api("main", self._task_get))
        app.router.add_get(f"{llm}/models", api("main", self._models))
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
            if self._in_flight > cfg.max_in_flight:
                reply = Reply(200, w.TOO_MANY_AT_ONCE[0], w.envelope(w.TOO_MANY_AT_ONCE, started))
            elif limit is not None and not self._admit(limit, now, cfg):
                reply = Reply(200, w.RATE_LIMITED[0], w.envelope(w.RATE_LIMITED, started))
            elif cfg.fail_rate and rng.random() < cfg.fail_rate:
                reply = Reply(500, None, b"500 Internal Server Error", content_type="text/plain")
            else:
                body = await request.read() if request.body_exists else b""
                reply = handler(request, body, now, started)
                drop = bool(cfg.drop_rate) and rng.random() < cfg.drop_rate
            return await self._answer(request, reply, now, cfg, drop=drop)
        finally:
            self._in_flight -= 1

    def _admit(self, limit: str, now: float, cfg: EmulatorConfig) -> bool:
        if limit == "main":
            return self._windows["main"].admit(now, cfg.rate, cfg.period_s)
        per_minute = cfg.tasks_ready_rate if limit == "tasks_ready" else cfg.id_list_rate
        return self._windows[limit].admit(now, per_minute, 60.0)

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
            status=reply.http_status, body=reply.body, content_type=reply.content_type
        )

    # ---- task_post ------------------------------------------------------------------------

    def _task_post(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        resolve = RESOLVE.get(se)
        if resolve is None:
            return self._not_found(request, body, now, started)
        entries: list[Task | tuple[int, str, bytes]]
        try:
            entries = list(_TASK_LIST.decode(body))
        except (msgspec.ValidationError, msgspec.DecodeError):
            try:
                raws = _RAW_LIST.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError):
                return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
            entries = [self._decode_one(raw, i) for i, raw in enumerate(raws)]
        if not entries:
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))

        # First pass: what each task would become, so funds can refuse the call as a whole.
        verdicts: list[Model | tuple[int, str]] = []
        n_ok = 0
        for i, entry in enumerate(entries):
            if i >= MAX_TASKS_PER_POST:
                verdicts.append(w.TOO_MANY_TASKS)
            elif isinstance(entry, Task):
                # Inline fast path for the common case; _check explains everything else.
                model = resolve.get(entry.model_name) if entry.user_prompt else None  # type: ignore[arg-type]
                if model is not None and model.task_post_supported and not entry.web_search:
                    n_ok += 1
                    verdicts.append(model)
                    continue
                verdict = self._check(entry, resolve, se)
                if isinstance(verdict, Model):
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
            if isinstance(entry, Task):
                data = with_prefix(prefix, _ENCODE(entry))
            else:
                data = with_prefix(prefix, entry[2])
            if isinstance(verdict, Model):
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
                    assert isinstance(entry, Task)
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
        self, task_id: str, se: str, task: Task, wall: float, data: msgspec.Raw, done_at: float
    ) -> None:
        created = CreatedTask(
            id=task_id,
            engine=se,
            tag=task.tag,
            user_prompt=task.user_prompt or "",
            model_name=task.model_name or "",
            posted_at=wall,
            data=_ANY.decode(data),
            cost_usd=self._config.task_cost_usd,
        )
        push = task.postback_url is not None or task.pingback_url is not None
        index = self._store.add(created, done_at, held=push and push_url(created) is not None)
        if push:
            self._push.schedule(index)

    @staticmethod
    def _check(task: Task, resolve: dict[str, Model], se: str) -> Model | tuple[int, str]:
        if not task.user_prompt or not task.model_name:
            try:
                check_rules(task, require_model=True)
            except TaskRuleError as err:
                return _invalid(err.field, err.reason)
        name = task.model_name or ""
        model = resolve.get(name)
        if model is None:
            return _invalid("model_name", f"unknown model {name!r} for {se}")
        if not model.task_post_supported:
            return _invalid("model_name", f"model {name!r} is not supported by task_post")
        if task.web_search and not model.web_search_supported:
            return _invalid("web_search", f"is not supported by model {name!r}")
        return model

    @staticmethod
    def _decode_one(raw: msgspec.Raw, index: int) -> Task | tuple[int, str, bytes]:
        """Slow path: one element of a body that failed to decode as a whole."""
        text = bytes(raw).lstrip()
        if not text.startswith(b"{"):
            return (*w.INVALID_POST, b"{}")
        fields = _ANY.decode(text)
        echo = _ENCODE({k: v for k, v in fields.items() if v is not None})
        if index >= MAX_TASKS_PER_POST:
            return (*w.TOO_MANY_TASKS, echo)
        try:
            return decode_task(text, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            field, reason = explain(err)
            code, message = _invalid(field, reason)
            return (code, message, echo)

    # ---- tasks_ready, task_get, models ------------------------------------------------------

    def _call_task(
        self, se: str, function: str, started: float, result: list[Any], cost: float = 0.0
    ) -> w.TaskOut:
        return w.TaskOut(
            self._ids.make(self._ids.prefix(time.time())),
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
        if found is None or found[0].engine != se:
            out = w.TaskOut(
                task_id,
                40400,
                "Task not found.",
                w.seconds(0.0),
                0.0,
                0,
                path,
                w.to_data(se, {}),
                None,
            )
            return Reply(200, 20000, w.envelope(w.OK, started, [out]))
        task, done_mono = found
        if now < done_mono:
            posted_mono = self._clock.mono(task.posted_at)
            halfway = posted_mono + (done_mono - posted_mono) / 2
            code = w.TASK_IN_QUEUE if now < halfway else w.TASK_HANDED
            out = w.TaskOut(
                task_id, code[0], code[1], w.seconds(0.0), 0.0, 0, path, task.data, None
            )
            return Reply(200, 20000, w.envelope(w.OK, started, [out]))
        self._store.collect(task, now)
        return Reply(200, 20000, self._result_envelope(task, done_mono, started))

    def _result_envelope(self, task: CreatedTask, done_mono: float, started: float) -> bytes:
        """task_get's envelope for a done task (also the body of its postback)."""
        se = task.engine
        path = w.path_of(w.API, se, w.FUNCTION, "task_get", task.id)
        model = RESOLVE[se][task.model_name]
        result = llm_result(
            model_name=model.model_name,
            user_prompt=task.user_prompt,
            done_unix=self._clock.wall(done_mono),
            web_search=bool(task.data.get("web_search")),
            cost_usd=task.cost_usd,
        )
        elapsed = w.seconds(time.perf_counter() - started)
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
            raws = _RAW_LIST.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
        if not raws:
            return Reply(200, w.INVALID_POST[0], w.envelope(w.INVALID_POST, started))
        path = [p for p in request.path.split("/") if p]
        base = f"{request.scheme}://{request.host}"
        out: list[w.TaskOut] = []
        for raw in raws:
            task_id = self._ids.make(self._ids.prefix(time.time()))
            echo: dict[str, Any] = {}
            try:
                fields = _ANY.decode(raw)
                if isinstance(fields, dict):
                    echo = {k: v for k, v in fields.items() if v is not None}
                query = _ID_LIST.decode(b"[" + bytes(raw) + b"]")[0]
                lo = _parse_datetime(query.datetime_from)
                hi = _parse_datetime(query.datetime_to)
            except (msgspec.ValidationError, msgspec.DecodeError) as err:
                field, reason = explain(err)
                field = field.removeprefix("[0].")
                code, message = _invalid(field, reason)
                data = {"api": w.API, "function": "id_list", **echo}
                out.append(
                    w.TaskOut(task_id, code, message, w.seconds(0.0), 0.0, 0, path, data, None)
                )
                continue
            except ValueError as err:
                code, message = _invalid("datetime_from/datetime_to", str(err))
                data = {"api": w.API, "function": "id_list", **echo}
                out.append(
                    w.TaskOut(task_id, code, message, w.seconds(0.0), 0.0, 0, path, data, None)
                )
                continue
            indexes = self._store.posted_between(lo, hi)
            if query.sort == "desc":
                indexes.reverse()
            result = [
                self._id_list_item(i, now, base, query.include_metadata)
                for i in indexes[query.offset : query.offset + query.limit]
            ]
            data = {"api": w.API, "function": "id_list", **echo}
            elapsed = w.seconds(time.perf_counter() - started)
            out.append(
                w.TaskOut(task_id, 20000, "Ok.", elapsed, 0, len(result), path, data, result)
            )
        return Reply(200, 20000, w.envelope(w.OK, started, out))

    def _id_list_item(self, index: int, now: float, base: str, metadata: bool) -> dict[str, Any]:
        task = self._store.created[index]
        done_mono = self._store.done_mono(index)
        done = done_mono <= now
        return {
            "id": task.id,
            "url": f"{base}/v3/ai_optimization/{task.engine}/llm_responses/task_post",
            "datetime_posted": w.utc_datetime(task.posted_at),
            "datetime_done": w.utc_datetime(self._clock.wall(done_mono)) if done else None,
            "status": "ok" if done else "in_progress",
            "cost": task.cost_usd,
            "metadata": task.data if metadata else None,
        }

    def _user_data(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        cfg = self._config
        per_minute = (
            UNLIMITED_PER_MINUTE if cfg.rate is None else round(cfg.rate * 60.0 / cfg.period_s)
        )
        balance = self._money.balance_usd
        funds = self._money.funds_usd
        result = {
            "login": cfg.login,
            "timezone": "UTC",
            "rates": {"limits": {"minute": {"ai_optimization": per_minute}}},
            "money": {
                "total": UNLIMITED_FUNDS_USD if funds is None else round(funds, 6),
                "balance": UNLIMITED_FUNDS_USD if balance is None else balance,
            },
        }
        out = w.TaskOut(
            self._ids.make(self._ids.prefix(time.time())),
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
