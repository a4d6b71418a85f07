"""The account endpoints: user_data (limits and money) and an engine's models list.

user_data reports the limits the gate enforces (``_gate.budget``) as calls per minute, in the
2026 documented shape or an older account's flat one (``user_data_shape``).
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._gate import budget
from llmtasks.emulator._models import CATALOGUE
from llmtasks.emulator._state import Service
from llmtasks.emulator._wire import Reply

DOCUMENTED_PER_MINUTE: Final = 2000  # what user_data reports for a function without a limit
UNLIMITED_FUNDS_USD: Final = 1_000_000.0  # what user_data reports when funds are unlimited


def per_minute(limit: str, cfg: EmulatorConfig) -> int:
    """A function's enforced limit as calls per minute (the documented one if none)."""
    calls, period_s = budget(limit, cfg)
    if calls is None:
        return {"tasks_ready": 20, "id_list": 10}.get(limit, DOCUMENTED_PER_MINUTE)
    return round(calls * 60.0 / period_s)


class Account:
    """The user_data and models handlers of one ``Service``."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def user_data(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        service = self._service
        cfg = service.config
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
        balance = service.money.balance_usd
        funds = service.money.funds_usd
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
            service.new_id(service.clock.wall(now)),
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

    def models(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return w.not_found(started)
        service = self._service
        task_id = service.new_id(service.clock.now())
        out = w.call_task(task_id, se, "models", started, list(CATALOGUE[se]))
        return Reply(200, 20000, w.envelope(w.OK, started, [out]))
