"""The task object of the LLM Responses task_post API and its documented rules.

One definition serves both sides: the client validates input lines with it before anything
is sent (``StrictTask`` also refuses unknown fields, so a typo never costs money or silently
drops an option), and the emulator validates POST bodies with it (``Task`` ignores unknown
fields, as a lenient server would). Decoding with msgspec is what lets the emulator check
100,000 tasks a second.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Final, Literal

import msgspec

MAX_TASKS_PER_POST: Final = 100
PROMPT_MAX_CHARS: Final = 500
TAG_MAX_CHARS: Final = 255
CHAIN_MAX_ITEMS: Final = 10
REASONING_TOKENS: Final = (1024, 4096)
NON_REASONING_TOKENS: Final = (16, 2048)
# Documented: temperature and top_p are "not supported in o4-mini, o3-mini, o1-pro, o1".
NO_SAMPLING_MODELS: Final = ("o4-mini", "o3-mini", "o1-pro", "o1")

ENGINES: Final = ("chat_gpt", "claude", "gemini")

Text500 = Annotated[str, msgspec.Meta(max_length=PROMPT_MAX_CHARS)]


class ChainMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["user", "ai"]
    message: Text500


Chain = Annotated[list[ChainMessage], msgspec.Meta(max_length=CHAIN_MAX_ITEMS)]


class TaskRuleError(ValueError):
    """A rule between fields was broken; ``field`` names the field to blame."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def is_reasoning_model(model_name: str) -> bool:
    return model_name.startswith("o")


@functools.lru_cache(maxsize=4096)
def _no_sampling(model_name: str) -> bool:
    # Runs for every task decoded, with few distinct names: worth remembering.
    return any(model_name == m or model_name.startswith(m + "-") for m in NO_SAMPLING_MODELS)


class Task(msgspec.Struct, frozen=True, omit_defaults=True):
    """One task. ``None`` means "not set" (the official client sends unset fields as null)."""

    user_prompt: Text500 | None = None
    model_name: str | None = None
    max_output_tokens: int | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    system_message: Text500 | None = None
    message_chain: Chain | None = None
    web_search: bool | None = None
    force_web_search: bool | None = None
    web_search_country_iso_code: str | None = None
    web_search_city: str | None = None
    tag: Annotated[str, msgspec.Meta(max_length=TAG_MAX_CHARS)] | None = None
    postback_url: str | None = None
    pingback_url: str | None = None

    def __post_init__(self) -> None:
        check_rules(self)


class StrictTask(Task, frozen=True, forbid_unknown_fields=True):
    """A task as read from user input: unknown fields are an error."""


def check_rules(task: Task, *, require_model: bool = False) -> None:
    """Rules that involve more than one field. Raises ``TaskRuleError``."""
    if require_model:
        if task.user_prompt is None or task.user_prompt == "":
            raise TaskRuleError("user_prompt", "is required")
        if not task.model_name:
            raise TaskRuleError("model_name", "is required")
    model = task.model_name
    if model is None or (
        task.max_output_tokens is None and task.temperature is None and task.top_p is None
    ):
        return
    if task.max_output_tokens is not None:
        lo, hi = REASONING_TOKENS if is_reasoning_model(model) else NON_REASONING_TOKENS
        if not lo <= task.max_output_tokens <= hi:
            kind = "reasoning" if is_reasoning_model(model) else "non-reasoning"
            raise TaskRuleError(
                "max_output_tokens", f"must be {lo}..{hi} for {kind} model {model!r}"
            )
    if _no_sampling(model):
        for name in ("temperature", "top_p"):
            if getattr(task, name) is not None:
                raise TaskRuleError(name, f"is not supported by model {model!r}")


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
