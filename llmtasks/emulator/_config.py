"""The emulator's settings. Every fault is off by default: a default emulator is a well-behaved
service with no call limit, so tests opt into exactly the misbehaviour they exercise."""

from __future__ import annotations

from typing import Literal

import msgspec

DEFAULT_LOGIN = "login"
DEFAULT_PASSWORD = "password"
# Far above what a fleet of clients opens (each keeps at most 30 connections), far below a
# process's usual 1024 file descriptors.
DEFAULT_MAX_CONNECTIONS = 512
# Longer than any answer takes (``latency_ms`` included) and than aiohttp's client keeps an
# idle connection (15 s), so only a stalled or abandoned connection is ever cut.
DEFAULT_REQUEST_TIMEOUT_S = 60.0


class EmulatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one emulator. Rates are calls per window; ``None`` means no limit."""

    login: str = DEFAULT_LOGIN
    password: str = DEFAULT_PASSWORD
    # Calls per sliding window of period_s seconds, each function its own budget: ``rate`` is
    # task_post's (the name predates the split). Refused calls count too.
    rate: int | None = None
    task_get_rate: int | None = None
    models_rate: int | None = None
    period_s: float = 60.0
    # Authenticated requests being served at once; the one over the cap gets 40209.
    max_in_flight: int = 30
    # Their own documented limits, per sliding 60 s.
    tasks_ready_rate: int | None = 20
    id_list_rate: int | None = 10
    # Every limited call of the account per sliding 60 s (user_data's ``minute.total``).
    total_rate: int | None = None
    # "nested": user_data as documented in 2026; "flat": an older account without the
    # per-function object (``minute.total`` and ``minute.ai_optimization`` numbers).
    user_data_shape: Literal["nested", "flat"] = "nested"
    # Where the docs are unsettled (docs/emulator.md): accept, or refuse as the strict reading.
    sampling_together: Literal["accept", "refuse"] = "accept"
    gemini_search_options: Literal["accept", "refuse"] = "accept"
    # Share of created tasks that fail on the service: task_get answers TASK_FAILED, refunded.
    task_fail_rate: float = 0.0
    # task_get answers 40403 this long after a task was done (30 days, as documented).
    results_ttl_s: float = 30 * 24 * 3600.0
    # The service's clock minus this machine's: its ids, datetimes and Date headers use it.
    clock_offset_s: float = 0.0
    completion_delay_s: float = 0.0
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    funds_usd: float | None = None
    task_cost_usd: float = 0.0102
    spurious_401_rate: float = 0.0
    seed: int | None = None
    # False keeps only counters: no created/calls lists and no task store (so no tasks_ready,
    # task_get or id_list results), which is what a 10-million-line benchmark needs.
    record: bool = True

    def __post_init__(self) -> None:
        for name in (
            "rate",
            "task_get_rate",
            "models_rate",
            "tasks_ready_rate",
            "id_list_rate",
            "total_rate",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.period_s <= 0:
            raise ValueError("period_s must be > 0")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        for name in ("fail_rate", "drop_rate", "spurious_401_rate", "task_fail_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        for name in ("completion_delay_s", "latency_ms", "task_cost_usd", "results_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.funds_usd is not None and self.funds_usd < 0:
            raise ValueError("funds_usd must be >= 0 or None")
