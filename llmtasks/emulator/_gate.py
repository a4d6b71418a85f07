"""The gate every API call passes before and after its handler.

In order: auth (and the spurious-401 fault), the cap on calls served at once (40209), the
function's sliding-window budget and the account's total (40202), the 500 fault; then the
endpoint's synchronous handler; then the latency and drop faults, the call record and the
``Date`` header. Bodies were already bounded by ``_guard`` in front of every route.
Handlers never await, so what they change is changed atomically.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Literal

from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._state import CallRecord, Service, SlidingWindow
from llmtasks.emulator._wire import Reply

# Which sliding window a route counts against; each function is its own budget.
Limit = Literal["task_post", "task_get", "models", "tasks_ready", "id_list"] | None
Handler = Callable[[web.Request, bytes, float, float], Reply]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def budget(limit: str, cfg: EmulatorConfig) -> tuple[int | None, float]:
    """(calls, per seconds) of one function; ``total`` is every limited call together."""
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


def auth_header(config: EmulatorConfig) -> str:
    token = base64.b64encode(f"{config.login}:{config.password}".encode()).decode()
    return f"Basic {token}"


def answer_delay_s(*, arrived_at: float, latency_s: float, now: float) -> float:
    """How long a call that arrived at ``arrived_at`` still waits for its answer, ``now``:
    the configured latency is the service's whole answer time, the emulator's own work on
    the call included (added on top, it put even a bare client a few percent under the
    ``30 / latency`` that the in-flight cap allows, more the more calls arrive at once)."""
    return max(0.0, arrived_at + latency_s - now)


class Gate:
    """Admits, counts and answers the API calls of one ``Service``."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._windows = {
            name: SlidingWindow()
            for name in ("task_post", "task_get", "models", "tasks_ready", "id_list", "total")
        }
        self._auth = auth_header(service.config)
        self._date_second = -1
        self._date_header = ""
        self.in_flight = 0
        self.calls_count = 0

    def reconfigured(self) -> None:
        """The service's settings changed: take the new credentials."""
        self._auth = auth_header(self._service.config)

    def route(self, limit: Limit, handler: Handler) -> Route:
        """An aiohttp route that serves ``handler`` behind the gate."""

        async def serve(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, limit, handler)

        return serve

    async def serve(
        self, request: web.Request, limit: Limit, handler: Handler
    ) -> web.StreamResponse:
        started = time.perf_counter()
        now = time.monotonic()
        cfg = self._service.config
        rng = self._service.rng
        self.calls_count += 1
        if not self._authorized(request.headers.get("Authorization"), cfg) or (
            cfg.spurious_401_rate and rng.random() < cfg.spurious_401_rate
        ):
            reply = w.refusal(w.NOT_AUTHORIZED, started, 401)
            return await self._answer(request, reply, now, cfg, drop=False)
        self.in_flight += 1
        try:
            drop = False
            # Counted before anything can refuse it: refused calls use up the window too.
            within = limit is None or self._count(limit, now, cfg)
            if self.in_flight > cfg.max_in_flight:
                reply = w.refusal(w.TOO_MANY_AT_ONCE, started)
            elif not within:
                reply = w.refusal(w.RATE_LIMITED, started)
            elif cfg.fail_rate and rng.random() < cfg.fail_rate:
                reply = Reply(500, None, b"500 Internal Server Error", content_type="text/plain")
            else:
                body = await request.read() if request.body_exists else b""
                reply = handler(request, body, now, started)
                drop = bool(cfg.drop_rate) and rng.random() < cfg.drop_rate
            return await self._answer(request, reply, now, cfg, drop=drop)
        finally:
            self.in_flight -= 1

    def _authorized(self, header: str | None, cfg: EmulatorConfig) -> bool:
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
        return decoded == f"{cfg.login}:{cfg.password}"

    def _count(self, limit: str, now: float, cfg: EmulatorConfig) -> bool:
        calls, period_s = budget(limit, cfg)
        ok = self._windows[limit].hit(now, calls, period_s)
        return self._windows["total"].hit(now, cfg.total_rate, 60.0) and ok

    def _date(self) -> str:
        """The ``Date`` header from the service's clock (one string per second)."""
        now = self._service.clock.now()
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_header = formatdate(second, usegmt=True)
        return self._date_header

    async def _answer(
        self, request: web.Request, reply: Reply, now: float, cfg: EmulatorConfig, *, drop: bool
    ) -> web.StreamResponse:
        if cfg.latency_ms:
            delay_s = answer_delay_s(
                arrived_at=now, latency_s=cfg.latency_ms / 1000.0, now=time.monotonic()
            )
            if delay_s:
                await asyncio.sleep(delay_s)
        if cfg.record:
            self._service.calls.append(
                CallRecord(
                    at=now,
                    at_wall=self._service.clock.wall(now),
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
