"""The account as ``user_data`` reports it: the balance, and the per-minute limits per function.

The 2026 shape nests the limits per API and function:
``rates.limits.minute.ai_optimization.llm_responses.{task_post, task_get, tasks_ready, models,
live}``, beside the numbers ``minute.total`` and ``minute.total_ai_optimization``. Older
accounts lack the nested object (some report ``ai_optimization`` as a number): then
``minute.total`` is the limit of every function. Whether task_post and task_get share one
budget is not documented, so each published limit is treated as a budget of its own.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from llmtasks._client import AccountClient, BaseTransport, Request
from llmtasks._errors import AuthError, ServiceError
from llmtasks._throttle import RetryPolicy
from llmtasks._transport import describe_code
from llmtasks._wire import AiOptimizationLimits, MinuteLimits, decode_user_data

USER_DATA_PATH: Final = "/v3/appendix/user_data"
#: The documented task_post limit, used when the account cannot be read.
DOCUMENTED_CALLS_PER_MINUTE: Final = 2000

Function = Literal["task_post", "task_get", "tasks_ready", "models", "live"]


class Account(msgspec.Struct, frozen=True):
    """What user_data said: the balance and the minute limits (None where not reported)."""

    balance_usd: float | None = None
    minute: MinuteLimits = MinuteLimits()

    def calls_per_minute(self, function: Function) -> int | None:
        """The account's limit for one LLM Responses function: its own, else ``total``."""
        nested = self.minute.ai_optimization
        if isinstance(nested, AiOptimizationLimits) and nested.llm_responses is not None:
            own = getattr(nested.llm_responses, function)
            if own is not None and own > 0:
                return int(own)
        total = self.minute.total
        return int(total) if total is not None and total > 0 else None

    def source(self, function: Function) -> str:
        """Where ``calls_per_minute(function)`` came from, for messages."""
        nested = self.minute.ai_optimization
        if (
            isinstance(nested, AiOptimizationLimits)
            and nested.llm_responses is not None
            and getattr(nested.llm_responses, function) is not None
        ):
            return f"user_data rates.limits.minute.ai_optimization.llm_responses.{function}"
        return "user_data rates.limits.minute.total"


class AccountUnavailable(ServiceError):
    """user_data did not answer; a run can go on without it."""


def parse_user_data(body: bytes) -> Account:
    """Decode a user_data reply. Raises ``AccountUnavailable`` when it says nothing usable."""
    try:
        env = decode_user_data(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AccountUnavailable(f"cannot read account data: unexpected answer ({exc})") from None
    task = env.tasks[0] if env.tasks else None
    if task is None or task.status_code != 20000 or not task.result:
        what = f"{task.status_code} {task.status_message}" if task else "no task in the answer"
        raise AccountUnavailable(f"cannot read account data: {what}")
    data = task.result[0]
    rates = data.rates
    minute = rates.limits.minute if rates and rates.limits else None
    return Account(
        balance_usd=data.money.balance if data.money else None,
        minute=minute or MinuteLimits(),
    )


async def read_account(transport: BaseTransport, retry: RetryPolicy | None = None) -> Account:
    """The free user_data call, tried up to 3 times (a read: safe to repeat).

    Raises ``AuthError`` for refused credentials, ``ServiceError`` for a refused call and
    ``AccountUnavailable`` when no answer came."""
    client = AccountClient(transport, policy=retry)
    answer = await client.call(
        Request("other", "GET", USER_DATA_PATH, idempotent=True),
        attempts=3,
        # Whatever is not an answer is asked again: nothing here can create or cost anything.
        again=lambda reply, _: reply.kind not in ("ok", "auth", "fatal"),
    )
    reply = answer.reply
    assert reply is not None  # nothing stops this call
    if reply.kind == "auth":
        raise AuthError(f"the service refused the credentials ({describe_code(reply)})")
    if reply.kind == "fatal":
        raise ServiceError(f"cannot read account data: {reply.message} ({describe_code(reply)})")
    if reply.kind != "ok":
        raise AccountUnavailable(f"cannot read account data: {reply.message}")
    return parse_user_data(reply.body)
