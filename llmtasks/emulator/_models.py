"""The model catalogue per engine, as the ``models`` endpoint reports it (2026 shape).

Each wire entry is ``model_name``, ``reasoning``, ``web_search_supported``,
``task_post_supported``. Base names (``gpt-4.1``), aliases (``claude-sonnet-4-0``,
``gemini-flash-latest``) and dated names (``gpt-4.1-2025-04-14``) are separate entries, as the
digest says; every one resolves to the dated model that task_get reports. "Reasoning" is the
flag, never the name: the gpt-5 family and the o-series are reasoning models on chat_gpt;
on claude and gemini the flag says that ``use_reasoning: true`` is allowed, and gemini's Pro
models reason always. At least one model per engine cannot be used with task_post.
"""

from __future__ import annotations

from typing import Final

import msgspec


class Model(msgspec.Struct, frozen=True):
    """One entry of the models endpoint, in the documented field order."""

    model_name: str
    reasoning: bool
    web_search_supported: bool
    task_post_supported: bool


class Family(msgspec.Struct, frozen=True):
    """One dated model and every name that resolves to it (emulator-internal)."""

    dated: str
    names: tuple[str, ...]  # base names and aliases, listed before the dated name
    reasoning: bool
    web_search: bool
    task_post: bool = True
    always_reasons: bool = False  # gemini Pro: reasoning items whether asked or not


def _f(
    dated: str,
    *names: str,
    reasoning: bool,
    web: bool,
    post: bool = True,
    always: bool = False,
) -> Family:
    return Family(dated, names, reasoning, web, post, always)


FAMILIES: Final[dict[str, tuple[Family, ...]]] = {
    "chat_gpt": (
        _f("gpt-5-2025-08-07", "gpt-5", reasoning=True, web=True),
        _f("gpt-5-mini-2025-08-07", "gpt-5-mini", reasoning=True, web=True),
        _f("gpt-5-nano-2025-08-07", "gpt-5-nano", reasoning=True, web=False),
        _f("gpt-4.1-2025-04-14", "gpt-4.1", reasoning=False, web=True),
        _f("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini", reasoning=False, web=True),
        _f("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", reasoning=False, web=False),
        _f("gpt-4o-2024-11-20", "gpt-4o", reasoning=False, web=True),
        _f("gpt-4o-mini-2024-07-18", "gpt-4o-mini", reasoning=False, web=True),
        _f("o3-2025-04-16", "o3", reasoning=True, web=True),
        _f("o3-mini-2025-01-31", "o3-mini", reasoning=True, web=False),
        _f("o4-mini-2025-04-16", "o4-mini", reasoning=True, web=True),
        _f("o1-2024-12-17", "o1", reasoning=True, web=False),
        _f("o1-pro-2025-03-19", "o1-pro", reasoning=True, web=False, post=False),
    ),
    "claude": (
        _f("claude-opus-4-1-20250805", "claude-opus-4-1", reasoning=True, web=True),
        _f("claude-opus-4-20250514", "claude-opus-4-0", "claude-opus-4", reasoning=True, web=True),
        _f("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", reasoning=True, web=True),
        _f(
            "claude-sonnet-4-20250514",
            "claude-sonnet-4-0",
            "claude-sonnet-4",
            reasoning=True,
            web=True,
        ),
        _f(
            "claude-3-7-sonnet-20250219",
            "claude-3-7-sonnet-latest",
            "claude-3-7-sonnet",
            reasoning=True,
            web=True,
        ),
        _f(
            "claude-3-5-haiku-20241022",
            "claude-3-5-haiku-latest",
            "claude-3-5-haiku",
            reasoning=False,
            web=True,
        ),
        _f(
            "claude-3-5-sonnet-20241022",
            "claude-3-5-sonnet-latest",
            "claude-3-5-sonnet",
            reasoning=False,
            web=False,
        ),
        _f("claude-3-haiku-20240307", "claude-3-haiku", reasoning=False, web=False, post=False),
    ),
    "gemini": (
        _f("gemini-3-pro-preview", reasoning=True, web=True, always=True),
        _f("gemini-2.5-pro", "gemini-pro-latest", reasoning=True, web=True, always=True),
        _f("gemini-2.5-flash", "gemini-flash-latest", reasoning=True, web=True),
        _f("gemini-2.5-flash-lite", "gemini-flash-lite-latest", reasoning=True, web=True),
        _f("gemini-2.0-flash", reasoning=False, web=True),
        _f("gemini-2.0-flash-lite", reasoning=False, web=False),
        _f("gemini-1.5-pro", reasoning=False, web=True, post=False),
    ),
}


def _entries(family: Family) -> list[Model]:
    return [
        Model(name, family.reasoning, family.web_search, family.task_post)
        for name in (*family.names, family.dated)
    ]


# What the models endpoint lists, per engine.
CATALOGUE: Final[dict[str, tuple[Model, ...]]] = {
    engine: tuple(m for family in families for m in _entries(family))
    for engine, families in FAMILIES.items()
}

# Every name task_post accepts for an engine → its family.
RESOLVE: Final[dict[str, dict[str, Family]]] = {
    engine: {name: f for f in families for name in (*f.names, f.dated)}
    for engine, families in FAMILIES.items()
}
