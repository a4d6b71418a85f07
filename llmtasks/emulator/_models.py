"""The model catalogue per engine, as the ``models`` endpoint reports it.

Names follow the providers' own scheme; a base name (``gpt-4.1``) resolves to its latest
dated version as documented. At least one model per engine cannot be used with task_post,
so clients meet that refusal in tests.
"""

from __future__ import annotations

from typing import Final

import msgspec


class Model(msgspec.Struct, frozen=True):
    model_name: str
    web_search_supported: bool
    task_post_supported: bool


def _m(name: str, web: bool, post: bool = True) -> Model:
    return Model(model_name=name, web_search_supported=web, task_post_supported=post)


CATALOGUE: Final[dict[str, tuple[Model, ...]]] = {
    "chat_gpt": (
        _m("gpt-4.1-2025-04-14", True),
        _m("gpt-4.1-mini-2025-04-14", True),
        _m("gpt-4.1-nano-2025-04-14", False),
        _m("gpt-4o-2024-11-20", True),
        _m("gpt-4o-mini-2024-07-18", True),
        _m("o3-2025-04-16", True),
        _m("o3-mini-2025-01-31", False),
        _m("o4-mini-2025-04-16", True),
        _m("o1-2024-12-17", False),
        _m("o1-pro-2025-03-19", False, post=False),
    ),
    "claude": (
        _m("claude-opus-4-20250514", True),
        _m("claude-sonnet-4-20250514", True),
        _m("claude-3-7-sonnet-20250219", True),
        _m("claude-3-5-haiku-20241022", True),
        _m("claude-3-haiku-20240307", False, post=False),
    ),
    "gemini": (
        _m("gemini-2.5-pro", True),
        _m("gemini-2.5-flash", True),
        _m("gemini-2.5-flash-lite", True),
        _m("gemini-2.0-flash", True),
        _m("gemini-2.0-flash-lite", False, post=False),
    ),
}

# Aliases the providers publish besides "name without its date".
_EXTRA_ALIASES: Final[dict[str, dict[str, str]]] = {
    "claude": {
        "claude-opus-4-0": "claude-opus-4-20250514",
        "claude-sonnet-4-0": "claude-sonnet-4-20250514",
        "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    },
}


def _base_name(name: str) -> str:
    """``gpt-4.1-2025-04-14`` → ``gpt-4.1``; ``claude-3-haiku-20240307`` → ``claude-3-haiku``."""
    parts = name.split("-")
    if len(parts) > 3 and all(p.isdigit() for p in parts[-3:]) and len(parts[-3]) == 4:
        return "-".join(parts[:-3])
    if len(parts) > 1 and parts[-1].isdigit() and len(parts[-1]) == 8:
        return "-".join(parts[:-1])
    return name


def _resolver(engine: str) -> dict[str, Model]:
    table: dict[str, Model] = {}
    by_name = {m.model_name: m for m in CATALOGUE[engine]}
    for model in CATALOGUE[engine]:
        table[model.model_name] = model
        table.setdefault(_base_name(model.model_name), model)
    for alias, name in _EXTRA_ALIASES.get(engine, {}).items():
        table[alias] = by_name[name]
    return table


# Every name task_post accepts for an engine (base names, aliases, full names) → its model.
RESOLVE: Final[dict[str, dict[str, Model]]] = {engine: _resolver(engine) for engine in CATALOGUE}
