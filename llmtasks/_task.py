"""The task object of the LLM Responses task_post API: its fields and the limits that hold
for every engine.

The struct carries only what is true of a task on every engine (types, lengths, the widest
ranges); the rules that depend on the engine and the model live in ``_rules``. ``StrictTask``
refuses unknown fields, so a typo never costs money or silently drops an option. Decoding with
msgspec is what keeps reading a million lines fast.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

# Defined with the other errors; importable from here as before.
from llmtasks._errors import TaskRuleError as TaskRuleError

MAX_TASKS_PER_POST: Final = 100
PROMPT_MAX_CHARS: Final = 500
TAG_MAX_CHARS: Final = 255
CHAIN_MAX_ITEMS: Final = 10
#: The widest max_output_tokens any engine takes (chat_gpt's 16 and the reasoning minimums are
#: engine rules, in ``_rules``).
MAX_OUTPUT_TOKENS: Final = (1, 4096)

ENGINES: Final = ("chat_gpt", "claude", "gemini")

Text500 = Annotated[str, msgspec.Meta(max_length=PROMPT_MAX_CHARS)]


class ChainMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["user", "ai"]
    message: Text500


Chain = Annotated[list[ChainMessage], msgspec.Meta(max_length=CHAIN_MAX_ITEMS)]


class Task(msgspec.Struct, frozen=True, omit_defaults=True):
    """One task. ``None`` means "not set" (the official client sends unset fields as null)."""

    user_prompt: Text500 | None = None
    model_name: str | None = None
    max_output_tokens: (
        Annotated[int, msgspec.Meta(ge=MAX_OUTPUT_TOKENS[0], le=MAX_OUTPUT_TOKENS[1])] | None
    ) = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    system_message: Text500 | None = None
    message_chain: Chain | None = None
    web_search: bool | None = None
    use_reasoning: bool | None = None
    force_web_search: bool | None = None
    web_search_country_iso_code: str | None = None
    web_search_city: str | None = None
    tag: Annotated[str, msgspec.Meta(max_length=TAG_MAX_CHARS)] | None = None
    postback_url: str | None = None
    pingback_url: str | None = None


class StrictTask(Task, frozen=True, forbid_unknown_fields=True):
    """A task as read from user input: unknown fields are an error."""


def check_rules(task: Task, *, require_model: bool = False) -> None:
    """The two required fields (``require_model``). Kept for callers of the engine-free
    check; the engine's rules are ``_rules.TaskRules``. Raises ``TaskRuleError``."""
    if require_model:
        if task.user_prompt is None or task.user_prompt == "":
            raise TaskRuleError("user_prompt", "is required")
        if not task.model_name:
            raise TaskRuleError("model_name", "is required")


_AT = re.compile(r" - at `\$\.?([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")


def explain(err: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """Split a msgspec error about one task into (field, reason)."""
    text = str(err)
    cause = err.__cause__ or err.__context__
    if isinstance(cause, TaskRuleError):
        return cause.field, cause.reason
    for pattern in (_UNKNOWN, _MISSING):
        m = pattern.search(text)
        if m:
            return m.group(1), "unknown field" if pattern is _UNKNOWN else "is required"
    m = _AT.search(text)
    if m:
        return m.group(1), text[: m.start()]
    if ": " in text and text.split(": ", 1)[0].isidentifier():
        field, reason = text.split(": ", 1)
        return field, reason
    return "", text


_decoders: dict[type[Task], msgspec.json.Decoder[Any]] = {}


def decode_task(raw: bytes | str, *, strict: bool = True) -> Task:
    """Decode one JSON task object; raises msgspec errors (see ``explain``)."""
    cls: type[Task] = StrictTask if strict else Task
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.json.Decoder(cls)
    task: Task = dec.decode(raw)
    return task
