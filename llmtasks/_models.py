"""The models endpoint: which models an engine offers, and whether task_post takes them.

``ModelCatalog`` fetches each engine's list once per run (one free call) and answers
``check(engine, name)`` with a warning or ``None``. The service resolves a base name such as
``gpt-4.1`` to its latest dated version (``gpt-4.1-2025-04-14``), and publishes aliases such
as ``claude-sonnet-4-0``; both count as listed.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from llmtasks._errors import AuthError, ConfigError, ServiceError
from llmtasks._task import ENGINES
from llmtasks._transport import Transport
from llmtasks._words import count

_DATED: Final = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_ALIAS: Final = re.compile(r"^(?P<base>.+?)-(?:0|latest)$")


class ModelInfo(msgspec.Struct, frozen=True):
    model_name: str
    web_search_supported: bool = False
    task_post_supported: bool = False


class _ModelsTask(msgspec.Struct):
    status_code: int = 0
    status_message: str = ""
    result: list[ModelInfo] | None = None


class _ModelsEnvelope(msgspec.Struct):
    status_code: int = 0
    tasks: list[_ModelsTask] | None = None


_decode: Final = msgspec.json.Decoder(_ModelsEnvelope).decode


def models_path(engine: str) -> str:
    return f"/v3/ai_optimization/{engine}/llm_responses/models"


async def fetch_models(transport: Transport, engine: str) -> list[ModelInfo]:
    """One call to the models endpoint. Raises ``ServiceError`` when it gives no list."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    reply = await transport.get(models_path(engine))
    if reply.kind == "auth":
        raise AuthError(f"the service refused the credentials ({reply.message})")
    if reply.kind != "ok":
        raise ServiceError(f"models for {engine}: {reply.message or reply.kind}")
    try:
        env = _decode(reply.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ServiceError(f"models for {engine}: unreadable answer ({exc})") from None
    tasks = env.tasks or []
    if not tasks or tasks[0].status_code != 20000 or tasks[0].result is None:
        message = tasks[0].status_message if tasks else "no task in the answer"
        raise ServiceError(f"models for {engine}: {message}")
    return tasks[0].result


def base_name(name: str) -> str:
    """``gpt-4.1-2025-04-14`` → ``gpt-4.1``; ``claude-sonnet-4-0`` → ``claude-sonnet-4``."""
    for pattern in (_DATED, _ALIAS):
        m = pattern.match(name)
        if m:
            return m["base"]
    return name


def find_model(models: list[ModelInfo], name: str) -> ModelInfo | None:
    """The listed model a task's ``model_name`` means: exact, or by base name (newest)."""
    for m in models:
        if m.model_name == name:
            return m
    wanted = base_name(name)
    matches = [m for m in models if base_name(m.model_name) == wanted]
    return max(matches, key=lambda m: m.model_name) if matches else None


def model_warning(models: list[ModelInfo], engine: str, name: str) -> str | None:
    """Why ``name`` will probably be refused by task_post on ``engine``; None if it looks fine."""
    model = find_model(models, name)
    if model is None:
        known = ", ".join(m.model_name for m in models if m.task_post_supported)
        return f"model {name!r} is not in the {engine} models list (task_post takes: {known})"
    if not model.task_post_supported:
        return f"model {name!r} ({model.model_name}) does not support task_post on {engine}"
    return None


class ModelCatalog:
    """The models lists of one run: each engine's list is fetched at most once."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._cache: dict[str, list[ModelInfo]] = {}

    async def models(self, engine: str) -> list[ModelInfo]:
        if engine not in self._cache:
            self._cache[engine] = await fetch_models(self._transport, engine)
        return self._cache[engine]

    async def check(self, engine: str, name: str) -> str | None:
        """A warning for ``name`` on ``engine``, or None (also when it is fine)."""
        return model_warning(await self.models(engine), engine, name)


def format_table(models: list[ModelInfo], engine: str) -> str:
    """A plain-text table, one model per line."""
    header = ("model_name", "web_search", "task_post")
    rows = [
        (
            m.model_name,
            "yes" if m.web_search_supported else "no",
            "yes" if m.task_post_supported else "no",
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{engine}: {count(len(models), 'model')}"]
    for r in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
