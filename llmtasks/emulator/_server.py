"""``Emulator``: builds the app from its parts, serves it, and shows its state to Python.

How a request travels: ``_guard`` bounds and reads the body of every request; an API call
then passes the ``_gate`` (auth, concurrency, per-function rate windows, faults) to its
handler: ``_task_post`` (creating tasks), ``_task_queries`` (tasks_ready, task_get, id_list)
or ``_account`` (user_data, models). ``/_emulator/*`` routes (``_inspect``) skip the gate.
What they all share is one ``_state.Service``; postbacks and pingbacks are sent by a
``_postback.PushSender``. The socket is served by the receiver's ``_inbound.Listener``: a cap
on open connections and a time limit on each request, since people run this server too.
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from llmtasks._inbound import Listener
from llmtasks.emulator import _wire as w
from llmtasks.emulator._account import Account
from llmtasks.emulator._config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT_S,
    EmulatorConfig,
)
from llmtasks.emulator._gate import Gate
from llmtasks.emulator._guard import MAX_BODY_BYTES, guard
from llmtasks.emulator._inspect import Inspection
from llmtasks.emulator._postback import Delivery, PushSender
from llmtasks.emulator._state import CallRecord, CreatedTask, Service
from llmtasks.emulator._task_post import TaskPost
from llmtasks.emulator._task_queries import TaskQueries

# Not the receiver's 5 s: an idle connection is closed only by the request timeout, long
# after aiohttp's client drops its own (15 s), so none is closed under a client's feet.
_KEEPALIVE_S: Final = 75.0


class Emulator:
    """A local DataForSEO LLM Responses service. Use ``async with`` or ``start``/``close``.

    At most ``max_connections`` are open at once (the next get 503 and are closed); a
    connection busy with one request, or idle, for longer than ``request_timeout_s`` is cut.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if not request_timeout_s > 0:
            raise ValueError("request_timeout_s must be > 0")
        self._service = Service(config if config is not None else EmulatorConfig())
        self._store = self._service.store
        self._host = host
        self._port = port
        self._started = False
        self._gate = Gate(self._service)
        self._queries = TaskQueries(self._service)
        self._push = PushSender(
            done_mono=self._store.done_mono,
            task_at=self._store.created.__getitem__,
            result_body=self._queries.push_body,
            release=lambda index: self._store.release(index, time.monotonic()),
        )
        self.app = self._make_app()
        # Bodies are inflated by _guard, within bounds; the Listener turns aiohttp's off.
        self._listener = Listener(
            self.app,
            host=host,
            port=port,
            max_connections=max_connections,
            timeout_s=request_timeout_s,
            keepalive_s=_KEEPALIVE_S,
        )

    # ---- public surface -------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        return self._service.config

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
        return self._service.calls

    @property
    def deliveries(self) -> list[Delivery]:
        """Every postback/pingback attempt, in order."""
        return self._push.deliveries

    @property
    def tasks_created(self) -> int:
        return self._service.tasks_created

    @property
    def calls_count(self) -> int:
        """API calls received, refused ones included."""
        return self._gate.calls_count

    @property
    def in_flight(self) -> int:
        return self._gate.in_flight

    @property
    def balance_usd(self) -> float | None:
        """What is left of ``funds_usd``; ``None`` when funds are unlimited."""
        return self._service.money.balance_usd

    @property
    def spent_usd(self) -> float:
        return round(self._service.money.spent_usd, 6)

    @property
    def now_unix(self) -> float:
        """The service's clock (what its ``Date`` headers and datetimes show)."""
        return self._service.clock.now()

    def reconfigure(self, **changes: Any) -> EmulatorConfig:
        """Change settings of a running emulator; ``funds_usd`` sets the balance anew."""
        new = self._service.reconfigure(changes)
        self._gate.reconfigured()
        return new

    def complete_all(self) -> None:
        """Make every created task done now (tests that do not want to wait)."""
        self._store.complete_all()
        self._push.rescheduled()

    @property
    def connections_turned_away(self) -> int:
        """Connections refused with 503 because ``max_connections`` were open."""
        return self._listener.turned_away

    @property
    def connections_cut_off(self) -> int:
        """Connections cut because one request (or idling) took over ``request_timeout_s``."""
        return self._listener.cut_off

    async def start(self) -> None:
        if self._started:
            return
        await self._listener.start()
        self._started = True
        self._port = self._listener.port

    async def close(self) -> None:
        await self._push.close()
        if self._started:
            self._started = False
            await self._listener.close()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- the routes -----------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
        api = self._gate.route
        tasks = self._queries
        account = Account(self._service)
        inspect = Inspection(self)
        add_get, add_post = app.router.add_get, app.router.add_post
        llm = "/v3/ai_optimization/{se}/llm_responses"
        add_post(f"{llm}/task_post", api("task_post", TaskPost(self._service, self._push)))
        add_get(f"{llm}/tasks_ready", api("tasks_ready", tasks.tasks_ready))
        add_get(f"{llm}/task_get/{{id}}", api("task_get", tasks.task_get))
        add_get(f"{llm}/models", api("models", account.models))
        add_post("/v3/ai_optimization/id_list", api("id_list", tasks.id_list))
        add_post("/v3/appendix/id_list", api("id_list", tasks.id_list))
        add_get("/v3/appendix/user_data", api(None, account.user_data))
        add_get("/_emulator/created", inspect.created)
        add_get("/_emulator/calls", inspect.calls)
        add_get("/_emulator/deliveries", inspect.deliveries)
        add_get("/_emulator/stats", inspect.stats)
        add_get("/_emulator/config", inspect.config)
        add_post("/_emulator/config", inspect.set_config)
        add_post("/_emulator/complete", inspect.complete)
        app.router.add_route("*", "/{tail:.*}", api(None, _not_found))
        return app


def _not_found(request: web.Request, body: bytes, now: float, started: float) -> w.Reply:
    return w.not_found(started)
