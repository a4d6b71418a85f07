"""The models endpoint: which models an engine offers, which reason, and whether task_post
takes them.

The endpoint is the source of truth for "reasoning" (the 2026 rules hang on it, not on the
model's name). ``load_models`` gets an engine's list once per run: from a cache file younger
than a day, else from the endpoint (a free call that counts against the account's limit),
else from the built-in table (``_models_builtin``), saying so. The service resolves a base
name such as ``gpt-4.1`` to its latest dated version (``gpt-4.1-2025-04-14``), and publishes
aliases such as ``claude-sonnet-4-0``; both count as listed.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Final, Literal

import msgspec

from llmtasks._client import AccountClient, BaseTransport, Request
from llmtasks._errors import AuthError, ConfigError, LlmtasksError, ServiceError
from llmtasks._models_builtin import BUILTIN
from llmtasks._task import ENGINES
from llmtasks._throttle import RetryPolicy, Throttle
from llmtasks._wire import ModelInfo as ModelInfo
from llmtasks._wire import decode_models
from llmtasks._words import count

log = logging.getLogger("llmtasks")

_DATED: Final = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_ALIAS: Final = re.compile(r"^(?P<base>.+?)-(?:0|latest)$")
#: How long a fetched list is trusted: models lists change, but not by the hour.
CACHE_MAX_AGE_S: Final = 24 * 3600.0
#: A run waits for the list before its first POST; past this, the built-in table will do.
_ATTEMPTS: Final = 3

Source = Literal["service", "cache", "built-in"]


class ModelList(msgspec.Struct, frozen=True):
    """One engine's models and where they came from (``note``: why the built-in table)."""

    engine: str
    models: tuple[ModelInfo, ...]
    source: Source
    note: str = ""


class _CacheFile(msgspec.Struct):
    base_url: str
    engine: str
    fetched_at: float
    models: list[ModelInfo]


_decode_cache: Final = msgspec.json.Decoder(_CacheFile).decode


def models_path(engine: str) -> str:
    return f"/v3/ai_optimization/{engine}/llm_responses/models"


async def fetch_models(
    transport: BaseTransport,
    engine: str,
    *,
    throttle: Throttle | None = None,
    policy: RetryPolicy | None = None,
) -> list[ModelInfo]:
    """The models endpoint, asked through the one retry loop (a GET: a lost reply is asked
    again, at most ``_ATTEMPTS`` times), in a ``throttle`` slot that hears the reply.
    Raises ``ServiceError`` when it gives no list."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    client = AccountClient(
        transport, throttles={} if throttle is None else {"models": throttle}, policy=policy
    )
    answer = await client.call(
        Request("models", "GET", models_path(engine), idempotent=True), attempts=_ATTEMPTS
    )
    reply = answer.reply
    if reply is None:
        raise ServiceError(f"models for {engine}: not asked, the run is stopping")
    if reply.kind == "auth":
        raise AuthError(f"the service refused the credentials ({reply.message})")
    if reply.kind != "ok":
        raise ServiceError(f"models for {engine}: {reply.message or reply.kind}")
    try:
        env = decode_models(reply.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ServiceError(f"models for {engine}: unreadable answer ({exc})") from None
    tasks = env.tasks or []
    if not tasks or tasks[0].status_code != 20000 or tasks[0].result is None:
        message = tasks[0].status_message if tasks else "no task in the answer"
        raise ServiceError(f"models for {engine}: {message}")
    return tasks[0].result


def builtin_models(engine: str) -> tuple[ModelInfo, ...]:
    return tuple(
        ModelInfo(model_name=n, reasoning=r, web_search_supported=w, task_post_supported=p)
        for n, r, w, p in BUILTIN[engine]
    )


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/llmtasks`` (``~/.cache/llmtasks`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "llmtasks"


def cache_path(directory: Path, base_url: str, engine: str) -> Path:
    # Keyed by service and engine; the base URL never holds credentials (check_base_url).
    key = hashlib.sha256(f"{base_url}\n{engine}".encode()).hexdigest()[:16]
    return directory / f"models-{engine}-{key}.json"


def _read_cache(path: Path, base_url: str, engine: str, max_age_s: float) -> list[ModelInfo] | None:
    try:
        cached = _decode_cache(path.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    age = time.time() - cached.fetched_at
    if cached.base_url != base_url or cached.engine != engine or not 0 <= age < max_age_s:
        return None
    return cached.models


def _write_cache(path: Path, base_url: str, engine: str, models: list[ModelInfo]) -> None:
    doc = _CacheFile(base_url=base_url, engine=engine, fetched_at=time.time(), models=models)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(msgspec.json.encode(doc))
        os.replace(tmp, path)
    except OSError as exc:
        # A cache is a convenience: the next run fetches again.
        log.info("could not write the models cache %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


async def load_models(
    transport: BaseTransport | None,
    engine: str,
    *,
    cache_dir: Path | None = None,
    max_age_s: float = CACHE_MAX_AGE_S,
    throttle: Throttle | None = None,
) -> ModelList:
    """An engine's models: cached (younger than ``max_age_s``), fetched, or built in.

    ``transport`` None means offline: the built-in table. The call takes a slot of
    ``throttle``, so it counts against the account's rate like any other. ``cache_dir``
    None: no cache.
    Never raises for the service: any failure gives the built-in table, ``note`` says why."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if transport is None:
        return ModelList(engine, builtin_models(engine), "built-in", "offline")
    path = cache_path(cache_dir, transport.base_url, engine) if cache_dir else None
    if path is not None:
        cached = _read_cache(path, transport.base_url, engine, max_age_s)
        if cached is not None:
            return ModelList(engine, tuple(cached), "cache")
    try:
        models = await fetch_models(transport, engine, throttle=throttle)
    except LlmtasksError as exc:
        # Even a refused login: the list only sharpens the checks, and the first POST
        # speaks for the credentials (the service's 401s also come and go under load).
        return ModelList(engine, builtin_models(engine), "built-in", str(exc))
    if path is not None:
        _write_cache(path, transport.base_url, engine, models)
    return ModelList(engine, tuple(models), "service")


def base_name(name: str) -> str:
    """``gpt-4.1-2025-04-14`` → ``gpt-4.1``; ``claude-sonnet-4-0`` → ``claude-sonnet-4``."""
    for pattern in (_DATED, _ALIAS):
        m = pattern.match(name)
        if m:
            return m["base"]
    return name


def find_model(models: tuple[ModelInfo, ...] | list[ModelInfo], name: str) -> ModelInfo | None:
    """The listed model a task's ``model_name`` means: exact, or by base name (newest)."""
    for m in models:
        if m.model_name == name:
            return m
    wanted = base_name(name)
    matches = [m for m in models if base_name(m.model_name) == wanted]
    return max(matches, key=lambda m: m.model_name) if matches else None


def closest_names(models: tuple[ModelInfo, ...] | list[ModelInfo], name: str) -> list[str]:
    """Up to three listed names (base names included) that look like ``name``."""
    names = {m.model_name for m in models if m.task_post_supported}
    names |= {base_name(n) for n in names}
    return difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.5)


def model_warning(
    models: tuple[ModelInfo, ...] | list[ModelInfo], engine: str, name: str
) -> str | None:
    """Why ``name`` will probably be refused by task_post on ``engine``; None if it looks fine."""
    model = find_model(models, name)
    if model is None:
        close = closest_names(models, name)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"model {name!r} is not in the {engine} models list{hint}"
    if not model.task_post_supported:
        return f"model {name!r} ({model.model_name}) does not support task_post on {engine}"
    return None


class ModelCatalog:
    """The models lists of one run: each engine's list is fetched at most once."""

    def __init__(self, transport: BaseTransport, *, throttle: Throttle | None = None) -> None:
        self._transport = transport
        self._throttle = throttle
        self._cache: dict[str, list[ModelInfo]] = {}

    async def models(self, engine: str) -> list[ModelInfo]:
        if engine not in self._cache:
            self._cache[engine] = await fetch_models(
                self._transport, engine, throttle=self._throttle
            )
        return self._cache[engine]

    async def check(self, engine: str, name: str) -> str | None:
        """A warning for ``name`` on ``engine``, or None (also when it is fine)."""
        return model_warning(await self.models(engine), engine, name)


def format_table(models: list[ModelInfo], engine: str) -> str:
    """A plain-text table, one model per line."""
    header = ("model_name", "reasoning", "web_search", "task_post")
    rows = [
        (
            m.model_name,
            "?" if m.reasoning is None else "yes" if m.reasoning else "no",
            "yes" if m.web_search_supported else "no",
            "yes" if m.task_post_supported else "no",
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{engine}: {count(len(models), 'model')}"]
    for r in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
