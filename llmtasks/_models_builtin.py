"""The models each engine offered when this table was written, for runs that cannot reach
the models endpoint (``--dry-run`` offline, a failing call). The endpoint is the source of
truth; this table only keeps the reasoning rules working without it, and a run that uses it
says so. Written from the 2026 documentation digest: on chat_gpt the gpt-5 family and the
o-series reason; on claude and gemini ``reasoning`` means "takes ``use_reasoning``".
"""

from __future__ import annotations

from typing import Final

# (model_name, reasoning, web_search_supported, task_post_supported)
_Row = tuple[str, bool, bool, bool]

_CHAT_GPT: Final[tuple[_Row, ...]] = (
    ("gpt-5", True, True, True),
    ("gpt-5-mini", True, True, True),
    ("gpt-5-nano", True, False, True),
    ("gpt-4.1", False, True, True),
    ("gpt-4.1-mini", False, True, True),
    ("gpt-4.1-nano", False, False, True),
    ("gpt-4o", False, True, True),
    ("gpt-4o-mini", False, True, True),
    ("o3", True, True, True),
    ("o3-mini", True, False, True),
    ("o4-mini", True, True, True),
    ("o1", True, False, True),
    ("o1-pro", True, False, False),
)

_CLAUDE: Final[tuple[_Row, ...]] = (
    ("claude-opus-4-1", True, True, True),
    ("claude-opus-4", True, True, True),
    ("claude-sonnet-4", True, True, True),
    ("claude-3-7-sonnet", True, True, True),
    ("claude-3-5-haiku", False, True, True),
    ("claude-3-haiku", False, False, False),
)

_GEMINI: Final[tuple[_Row, ...]] = (
    ("gemini-2.5-pro", True, True, True),
    ("gemini-2.5-flash", True, True, True),
    ("gemini-2.5-flash-lite", True, True, True),
    ("gemini-2.0-flash", False, True, True),
    ("gemini-2.0-flash-lite", False, False, False),
)

BUILTIN: Final[dict[str, tuple[_Row, ...]]] = {
    "chat_gpt": _CHAT_GPT,
    "claude": _CLAUDE,
    "gemini": _GEMINI,
}
