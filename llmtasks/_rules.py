"""The per-engine rules of a task, as documented in 2026 (docs/input-formats.md has the table).

The principle: **reject locally only what the service certainly refuses.** A task the
service refuses costs nothing but a share of one call; a valid task refused here is lost
work. So a rule the documentation states plainly rejects the line before any call; where the
documentation is unsettled (temperature with top_p on chat_gpt and claude; gemini's
force_web_search, web_search_country_iso_code and web_search_city), the line is sent and one
warning per rule and run says so. An unknown model gets a warning, not a rejection: models
lists change, and the service has the last word.

"Reasoning" is the models endpoint's ``reasoning`` flag (``_models``): on chat_gpt it is the
model's own nature; on claude and gemini it says whether the task may ask ``use_reasoning``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from llmtasks._models import ModelInfo, ModelList, builtin_models, closest_names, find_model
from llmtasks._task import ENGINES, Task, TaskRuleError

log = logging.getLogger("llmtasks")

#: Claude's web_search_country_iso_code takes one of these 36 codes and nothing else.
_CLAUDE_CODES: Final = (
    "AR AT AU BE BR CA CH CL CN DE DK ES FI FR GB HK ID IN IT JP KR MX MY NL NO NZ PH PL PT RU "
    "SA SE TR TW US ZA"
)
CLAUDE_COUNTRIES: Final = frozenset(_CLAUDE_CODES.split())
#: max_output_tokens (low, high) per engine: plain, and when the task reasons.
TOKENS: Final[dict[str, tuple[tuple[int, int], tuple[int, int]]]] = {
    "chat_gpt": ((16, 4096), (1024, 4096)),
    "claude": ((1, 4096), (1025, 4096)),
    "gemini": ((1, 4096), (1024, 4096)),
}
#: The highest temperature per engine.
TEMPERATURE_MAX: Final[dict[str, float]] = {"chat_gpt": 2.0, "claude": 1.0, "gemini": 2.0}

Warn = Callable[[str], None]


class TaskRules:
    """Checks tasks for one engine against one models list.

    ``check(task, line)`` raises ``TaskRuleError`` for what the service certainly refuses,
    and reports what it may refuse through ``warn`` once per kind per run (``warned`` counts
    every occurrence). A list from the built-in table (``models.source``) cannot prove a model
    unusable, so a model it marks ``task_post_supported: false`` is warned about, not refused.
    """

    def __init__(
        self, engine: str, models: ModelList | None = None, *, warn: Warn | None = None
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.engine = engine
        self.models = models or ModelList(engine, builtin_models(engine), "built-in", "offline")
        self._warn = warn or log.warning
        self.warned: dict[str, int] = {}
        self._lookup: dict[str, ModelInfo | None] = {}

    def warn_once(self, key: str, message: str) -> None:
        n = self.warned.get(key, 0)
        self.warned[key] = n + 1
        if n == 0:
            self._warn(message)

    def model(self, name: str, line: int = 0) -> ModelInfo | None:
        """The listed model ``name`` means, or None (warned about once). Raises when the
        service's own list says task_post does not take it."""
        if name in self._lookup:
            info = self._lookup[name]
        else:
            info = self._lookup[name] = find_model(self.models.models, name)
        where = f" (first on line {line})" if line else ""
        if info is None:
            close = closest_names(self.models.models, name)
            hint = f"; closest: {', '.join(close)}" if close else ""
            self.warn_once(
                f"unknown model {name}",
                f"model {name!r} is not in the {self.engine} models list "
                f"({self._list_source()}){hint}; sent, the service decides{where}",
            )
            return None
        if not info.task_post_supported:
            reason = f"model {name!r} ({info.model_name}) does not support task_post"
            if self.models.source != "built-in":
                raise TaskRuleError("model_name", f"{reason} on {self.engine}")
            self.warn_once(
                f"no task_post {name}",
                f"{reason} according to the built-in table; sent, the service decides{where}",
            )
        return info

    def _list_source(self) -> str:
        return {"service": "from the service", "cache": "cached from the service"}.get(
            self.models.source, "built-in table"
        )

    def check(self, task: Task, line: int = 0) -> None:
        """Raise ``TaskRuleError`` if the service certainly refuses ``task``."""
        if not task.user_prompt:
            raise TaskRuleError("user_prompt", "is required")
        name = task.model_name
        if not name:
            raise TaskRuleError("model_name", "is required")
        info = self.model(name, line)
        # None: the model is not listed (or its entry does not say): not known.
        reasoning = None if info is None else info.reasoning
        if task.web_search and info is not None and not info.web_search_supported:
            raise TaskRuleError(
                "web_search", f"is not supported by model {name!r} on {self.engine}"
            )
        engine = self.engine
        if engine == "chat_gpt":
            if task.use_reasoning is not None:
                raise TaskRuleError(
                    "use_reasoning",
                    "unknown field for chat_gpt (claude and gemini only: on chat_gpt reasoning "
                    "is the model's own)",
                )
            uses_reasoning = reasoning is True
        else:
            if task.use_reasoning and info is not None and info.reasoning is False:
                raise TaskRuleError(
                    "use_reasoning",
                    f"model {name!r} does not reason on {engine} (its models entry has "
                    "reasoning: false)",
                )
            uses_reasoning = task.use_reasoning is True
        self._tokens(task, name, uses_reasoning)
        self._sampling(task, name, uses_reasoning, line)
        self._web_search(task, name, uses_reasoning, line)

    def _tokens(self, task: Task, name: str, uses_reasoning: bool) -> None:
        n = task.max_output_tokens
        if n is None:
            return
        plain, reasoned = TOKENS[self.engine]
        lo, hi = reasoned if uses_reasoning else plain
        if not lo <= n <= hi:
            if self.engine == "chat_gpt":
                what = "reasoning model" if uses_reasoning else "model"
                raise TaskRuleError("max_output_tokens", f"must be {lo}..{hi} for {what} {name!r}")
            what = " with use_reasoning" if uses_reasoning else ""
            raise TaskRuleError("max_output_tokens", f"must be {lo}..{hi} on {self.engine}{what}")

    def _sampling(self, task: Task, name: str, uses_reasoning: bool, line: int) -> None:
        engine = self.engine
        t, p = task.temperature, task.top_p
        if t is not None:
            if t > TEMPERATURE_MAX[engine]:
                raise TaskRuleError(
                    "temperature", f"must be 0..{TEMPERATURE_MAX[engine]:g} on {engine}"
                )
            if uses_reasoning and engine == "chat_gpt":
                raise TaskRuleError("temperature", f"is not supported by reasoning model {name!r}")
            if uses_reasoning and engine == "claude":
                raise TaskRuleError("temperature", "is not supported with use_reasoning on claude")
        if p is not None and uses_reasoning and engine == "claude":
            raise TaskRuleError("top_p", "is not supported with use_reasoning on claude")
        if t is not None and p is not None and engine != "gemini":
            where = f" (first on line {line})" if line else ""
            self.warn_once(
                "temperature+top_p",
                f"temperature and top_p together: the {engine} docs say not to, their own "
                f"examples send both; sent, the service decides{where}",
            )

    def _web_search(self, task: Task, name: str, uses_reasoning: bool, line: int) -> None:
        engine = self.engine
        where = f" (first on line {line})" if line else ""
        if engine == "gemini":
            for field in ("force_web_search", "web_search_country_iso_code", "web_search_city"):
                if getattr(task, field) is not None:
                    self.warn_once(
                        f"gemini {field}",
                        f"{field} is not documented for gemini (unsettled whether the service "
                        f"ignores or refuses it); sent, the service decides{where}",
                    )
            return
        if task.force_web_search:
            if not task.web_search:
                raise TaskRuleError("force_web_search", "needs web_search: true")
            if uses_reasoning:
                what = (
                    f"by reasoning model {name!r}"
                    if engine == "chat_gpt"
                    else "with use_reasoning on claude"
                )
                raise TaskRuleError("force_web_search", f"is not supported {what}")
        code = task.web_search_country_iso_code
        if code is not None:
            if engine == "claude" and code.upper() not in CLAUDE_COUNTRIES:
                raise TaskRuleError(
                    "web_search_country_iso_code",
                    f"{code!r} is not one of claude's 36 codes ({_CLAUDE_CODES})",
                )
            if engine == "claude" and code not in CLAUDE_COUNTRIES:
                # The docs list the codes in capitals and say nothing of case: not certain.
                where = f" (first on line {line})" if line else ""
                self.warn_once(
                    "country code case",
                    f"web_search_country_iso_code {code!r} is not in capitals as documented; "
                    f"sent as written, the service decides{where}",
                )
            if not task.web_search:
                raise TaskRuleError("web_search_country_iso_code", "needs web_search: true")
