"""Made-up but plausible task_get results: the fields a real result has, deterministic text."""

from __future__ import annotations

import zlib
from typing import Any

from llmtasks.emulator._wire import utc_datetime

_OPENINGS = (
    "Here is a concise overview",
    "Short answer first, then the details",
    "Good question; the main points are below",
    "In brief",
)
_BODIES = (
    "The topic depends on recent trends, available data and the context you care about most.",
    "Most sources agree on the basics, while the details vary by region and by year.",
    "It helps to compare a few reliable sources and to check how current they are.",
    "Consider costs, demand and competition before drawing a conclusion.",
)


def answer_text(user_prompt: str) -> str:
    h = zlib.crc32(user_prompt.encode())
    return (
        f"{_OPENINGS[h % len(_OPENINGS)]} on: {user_prompt}\n\n{_BODIES[(h >> 8) % len(_BODIES)]}"
    )


def llm_result(
    *, model_name: str, user_prompt: str, done_unix: float, web_search: bool, cost_usd: float
) -> dict[str, Any]:
    text = answer_text(user_prompt)
    input_tokens = max(1, len(user_prompt) // 4) + 12
    output_tokens = max(1, len(text) // 4)
    return {
        "model_name": model_name,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "web_search": web_search,
        "money_spent": round(min(cost_usd, (input_tokens + 4 * output_tokens) * 2e-6), 6),
        "datetime": utc_datetime(done_unix),
        "items": [
            {
                "type": "message",
                "sections": [{"type": "text", "text": text, "annotations": None}],
            }
        ],
    }
