"""What the service sends back, as typed Structs: one decoder per reply shape, all here.

Each Struct holds only the fields something reads; msgspec skips the rest without building
them. Fields the service may leave out have defaults. Which calls answer with which shape:

- task_post: ``Envelope`` of ``TaskReply`` (read by ``_transport.classify`` for every reply,
  and by ``_replies`` for the receipts);
- tasks_ready: ``ReadyItem`` (collect, reconcile), decoded one entry at a time
  (``ready_items``);
- task_get, and a postback's body: ``GotEnvelope`` / ``Postback`` of ``GotTask`` (collect,
  receive);
- id_list: ``IdListItem`` (reconcile), decoded one item at a time (``id_list_items``);
- user_data: ``UserDataEnvelope`` down to ``MinuteLimits`` (the account check);
- models: ``ModelsEnvelope`` of ``ModelInfo``.

A reply that does not decode is the caller's to word (each says what it could not read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec

_T = TypeVar("_T")

# -- task_post (and the envelope of every call: its status is what classify reads) ------


class TaskData(msgspec.Struct, frozen=True):
    tag: str | None = None


# One per task sent; it holds a TaskData, so msgspec would leave it to the cyclic GC,
# and these allocations set off a collection every few calls. It cannot be in a cycle.
class TaskReply(msgspec.Struct, frozen=True, gc=False):
    status_code: int
    id: str | None = None
    status_message: str = ""
    cost: float | None = None
    data: TaskData | None = None


class Envelope(msgspec.Struct, frozen=True):
    status_code: int
    status_message: str = ""
    cost: float | None = None
    tasks: list[TaskReply] | None = None


decode_envelope: Final = msgspec.json.Decoder(Envelope).decode

# -- tasks_ready -----------------------------------------------------------------------


class ReadyItem(msgspec.Struct, frozen=True):
    id: str
    tag: str | None = None


class _ReadyTask(msgspec.Struct, frozen=True):
    status_code: int = 0
    result: list[msgspec.Raw] | None = None


class _ReadyEnvelope(msgspec.Struct, frozen=True):
    tasks: list[_ReadyTask] | None = None


_decode_ready: Final = msgspec.json.Decoder(_ReadyEnvelope).decode
_decode_ready_item: Final = msgspec.json.Decoder(ReadyItem).decode


def ready_items(body: bytes) -> tuple[list[ReadyItem], int] | None:
    """(the tasks a tasks_ready answer lists, how many entries it had), None when the body
    is not its envelope. An entry the documented shape does not fit is left out, not the
    page; the count is of every entry (a full page is full whatever its entries hold)."""
    try:
        tasks = _decode_ready(body).tasks
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    raw = [r for t in tasks or [] for r in t.result or []]
    return _each(raw, _decode_ready_item), len(raw)


# -- task_get, and postbacks (the same envelope, one task) -------------------------------


class GotData(msgspec.Struct, frozen=True):
    tag: str | None = None


class GotTask(msgspec.Struct, frozen=True):
    """One element of a task_get (or postback) envelope's ``tasks``. ``result`` is kept as
    the service's bytes: the results store writes them as they came."""

    status_code: int
    id: str | None = None
    status_message: str = ""
    data: GotData | None = None
    result: msgspec.Raw = msgspec.Raw(b"null")


class GotEnvelope(msgspec.Struct, frozen=True):
    status_code: int = 0
    status_message: str = ""
    tasks: list[GotTask] | None = None


class Postback(msgspec.Struct, frozen=True):
    """What a postback must be: the envelope of exactly one task. A fixed-length tuple makes
    the decoder stop at the second task instead of building a million of them."""

    status_code: int = 0
    tasks: tuple[GotTask] | None = None


decode_got: Final = msgspec.json.Decoder(GotEnvelope).decode
decode_postback: Final = msgspec.json.Decoder(Postback).decode

# -- id_list -------------------------------------------------------------------------------


class IdListMetadata(msgspec.Struct, frozen=True):
    """The POST fields id_list keeps with a task (``include_metadata``): reconcile reads the
    tag and the prompt."""

    tag: str | None = None
    user_prompt: str | None = None


class IdListItem(msgspec.Struct, frozen=True):
    id: str
    url: str = ""
    # Any: a cost that is not a number leaves the task's cost unknown, not the task unread.
    cost: Any = None
    metadata: IdListMetadata | None = None

    @property
    def cost_usd(self) -> float | None:
        cost = self.cost
        return float(cost) if isinstance(cost, int | float) else None


class _IdListTask(msgspec.Struct, frozen=True):
    status_code: int = 0
    status_message: str = ""
    result: list[msgspec.Raw] | None = None


class _IdListEnvelope(msgspec.Struct, frozen=True):
    tasks: list[_IdListTask] | None = None


_decode_id_list: Final = msgspec.json.Decoder(_IdListEnvelope).decode
_decode_id_list_item: Final = msgspec.json.Decoder(IdListItem).decode


def id_list_items(body: bytes) -> list[IdListItem] | None:
    """The tasks an id_list answer lists; None unless the body is an answer (its first task
    20000). An item the documented shape does not fit is left out (it names no line
    reconcile could settle), not the whole page."""
    try:
        tasks = _decode_id_list(body).tasks
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not tasks or tasks[0].status_code != 20000:
        return None
    return _each(tasks[0].result or [], _decode_id_list_item)


def _each(raw: list[msgspec.Raw], decode: Callable[[msgspec.Raw], _T]) -> list[_T]:
    out: list[_T] = []
    for item in raw:
        try:
            out.append(decode(item))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return out


# -- user_data -----------------------------------------------------------------------------


class LlmResponsesLimits(msgspec.Struct, frozen=True):
    live: float | None = None
    task_post: float | None = None
    tasks_ready: float | None = None
    task_get: float | None = None
    models: float | None = None


class AiOptimizationLimits(msgspec.Struct, frozen=True):
    llm_responses: LlmResponsesLimits | None = None


class MinuteLimits(msgspec.Struct, frozen=True):
    total: float | None = None
    total_ai_optimization: float | None = None
    # A number on older accounts (and older emulators), the nested object today.
    ai_optimization: AiOptimizationLimits | float | None = None


class Limits(msgspec.Struct, frozen=True):
    minute: MinuteLimits | None = None


class Rates(msgspec.Struct, frozen=True):
    limits: Limits | None = None


class Money(msgspec.Struct, frozen=True):
    balance: float | None = None


class UserData(msgspec.Struct, frozen=True):
    money: Money | None = None
    rates: Rates | None = None


class UserDataTask(msgspec.Struct, frozen=True):
    status_code: int = 0
    status_message: str = ""
    result: list[UserData] | None = None


class UserDataEnvelope(msgspec.Struct, frozen=True):
    tasks: list[UserDataTask] | None = None


decode_user_data: Final = msgspec.json.Decoder(UserDataEnvelope).decode

# -- models --------------------------------------------------------------------------------


class ModelInfo(msgspec.Struct, frozen=True):
    model_name: str
    #: None when the list does not say (an older answer): the reasoning rules then stay
    #: unenforced for the model rather than guessed.
    reasoning: bool | None = None
    web_search_supported: bool = False
    task_post_supported: bool = False


class ModelsTask(msgspec.Struct, frozen=True):
    status_code: int = 0
    status_message: str = ""
    result: list[ModelInfo] | None = None


class ModelsEnvelope(msgspec.Struct, frozen=True):
    status_code: int = 0
    tasks: list[ModelsTask] | None = None


decode_models: Final = msgspec.json.Decoder(ModelsEnvelope).decode
