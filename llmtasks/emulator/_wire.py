"""The response envelope of every endpoint, encoded with msgspec Structs.

Field order and types follow the documentation example exactly; ``tasks`` is ``null`` on a
whole-call error. Per-task ``data`` and ``path`` are often pre-encoded ``msgspec.Raw`` so the
hot path (task_post) copies bytes instead of building dicts. ``Reply`` is what a handler
gives the gate to send.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

VERSION: Final = "0.1.20250526"
API: Final = "ai_optimization"
FUNCTION: Final = "llm_responses"

OK: Final = (20000, "Ok.")
CREATED: Final = (20100, "Task Created.")
TOO_MANY_TASKS: Final = (40006, "You can set only 100 tasks at a time.")
NOT_AUTHORIZED: Final = (40100, "You are not authorized to access this resource.")
BALANCE_TOO_LOW: Final = (40210, "Balance is too low.")
RATE_LIMITED: Final = (40202, "Rate-limit is exceeded. Please slow down.")
TOO_MANY_AT_ONCE: Final = (40209, "Too many simultaneous requests.")
NOT_FOUND: Final = (40400, "Not Found.")
INVALID_FIELD: Final = 40501
INVALID_POST: Final = (40503, "Invalid POST data.")
TASK_NOT_FOUND: Final = (40401, "Task Not Found.")
RESULTS_EXPIRED: Final = (40403, "Task Results Expired.")
TASK_FAILED: Final = (50000, "Internal Error. The task failed; its cost was refunded.")
TASK_HANDED: Final = (40601, "Task Handed.")
TASK_IN_QUEUE: Final = (40602, "Task in Queue.")


class TaskOut(msgspec.Struct):
    id: str
    status_code: int
    status_message: str
    time: str
    cost: float
    result_count: int
    path: Any
    data: Any
    result: Any


class Envelope(msgspec.Struct):
    version: str
    status_code: int
    status_message: str
    time: str
    cost: float
    tasks_count: int
    tasks_error: int
    tasks: list[TaskOut] | None


class Reply(msgspec.Struct):
    """A handler's answer: the gate adds latency, records the call and sends (or drops) it."""

    http_status: int
    status_code: int | None
    body: bytes
    tasks_created: int = 0
    content_type: str = "application/json"


encoder: Final = msgspec.json.Encoder()
# A body that cannot be read as JSON of the expected shape; nesting too deep for the decoder
# is hostile input like any other, answered 40503 rather than a 500.
UNREADABLE: Final = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def seconds(elapsed_s: float) -> str:
    return f"{elapsed_s:.4f} sec."


def envelope(
    code: tuple[int, str],
    started: float,
    tasks: list[TaskOut] | None = None,
    cost: float = 0.0,
    *,
    errors: int | None = None,
) -> bytes:
    if errors is None:
        errors = 0 if tasks is None else sum(1 for t in tasks if t.status_code >= 40000)
    return encoder.encode(
        Envelope(
            version=VERSION,
            status_code=code[0],
            status_message=code[1],
            time=seconds(time.perf_counter() - started),
            cost=cost,
            tasks_count=0 if tasks is None else len(tasks),
            tasks_error=errors,
            tasks=tasks,
        )
    )


def data_prefix(se: str) -> bytes:
    """The start of a task_post ``data`` object, to which the task's own fields are appended."""
    return encoder.encode({"api": API, "function": FUNCTION, "se": se})[:-1]


def with_prefix(prefix: bytes, encoded_object: bytes) -> msgspec.Raw:
    """Join ``{"api":..,"se":..`` and an encoded object ``{...}`` into one object."""
    if encoded_object == b"{}":
        return msgspec.Raw(prefix + b"}")
    return msgspec.Raw(prefix + b"," + encoded_object[1:])


def utc_datetime(unix_s: float) -> str:
    """The service's datetime format: ``2026-11-25 10:00:00 +00:00``."""
    return time.strftime("%Y-%m-%d %H:%M:%S +00:00", time.gmtime(unix_s))


def path_of(*parts: str) -> list[str]:
    return ["v3", *parts]


def to_data(se: str, fields: dict[str, Any], function: str = FUNCTION) -> dict[str, Any]:
    return {"api": API, "function": function, "se": se, **fields}


def refusal(code: tuple[int, str], started: float, http_status: int = 200) -> Reply:
    """A whole-call error: the envelope with ``code`` and no tasks."""
    return Reply(http_status, code[0], envelope(code, started))


def not_found(started: float) -> Reply:
    return refusal(NOT_FOUND, started, 404)


def call_task(
    task_id: str, se: str, function: str, started: float, result: list[Any], cost: float = 0.0
) -> TaskOut:
    """The one task of a GET call (tasks_ready, models): ``result`` is its whole answer."""
    return TaskOut(
        task_id,
        OK[0],
        OK[1],
        seconds(time.perf_counter() - started),
        cost,
        len(result),
        path_of(API, se, FUNCTION, function),
        to_data(se, {}),
        result,
    )
