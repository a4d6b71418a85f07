"""Made-up but plausible task_get results in the documented 2026 shape, deterministic.

Everything is derived from a CRC of the seed and the prompt, so the same seed and prompt give
the same result: tests can assert on it. With web search the text carries citations
(``annotations`` spans into the text; gemini's ``url`` is a Google redirect and ``direct_url``
the source) and ``fan_out_queries``; with reasoning a reasoning item comes first.
"""

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
_SOURCES = (
    ("Market overview 2026", "https://www.example.com/research/market-overview-2026"),
    ("Industry statistics and trends", "https://stats.example.org/industry/trends"),
    ("What the latest survey says", "https://news.example.net/2026/survey-results"),
    ("A practical guide", "https://guides.example.com/practical-guide"),
    ("Regional data explained", "https://data.example.org/regional"),
)
_CITED = (
    "Recent reports put the figures higher than a year ago.",
    "Analysts expect the trend to continue through next year.",
    "Surveys show that customers care most about price and quality.",
)
_GOOGLE_REDIRECT = "https://vertexaisearch.cloud.google.com/grounding-api-redirect/"


def _hash(seed: int | None, user_prompt: str) -> int:
    return zlib.crc32(f"{seed or 0}:{user_prompt}".encode())


def answer_text(user_prompt: str, seed: int | None = None) -> str:
    h = _hash(seed, user_prompt)
    return (
        f"{_OPENINGS[h % len(_OPENINGS)]} on: {user_prompt}\n\n{_BODIES[(h >> 8) % len(_BODIES)]}"
    )


def _cited_text(text: str, h: int, engine: str) -> tuple[str, list[dict[str, Any]]]:
    """Append cited sentences; each annotation spans its sentence: text[start:end]."""
    count = (h >> 12) % 4  # 0..3: "may be empty with web search"
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        sentence = _CITED[(h + i) % len(_CITED)]
        start = len(text) + 1
        text = f"{text} {sentence}"
        title, url = _SOURCES[((h >> 16) + i) % len(_SOURCES)]
        note: dict[str, Any] = {
            "title": title,
            "url": url,
            "start_index": start,
            "end_index": start + len(sentence),
        }
        if engine == "gemini":
            token = f"{zlib.crc32(f'{h}:{i}'.encode()):08x}{h:08x}"
            note = {**note, "url": _GOOGLE_REDIRECT + token, "direct_url": url}
        annotations.append(note)
    return text, annotations


def llm_result(
    *,
    engine: str,
    model_name: str,
    user_prompt: str,
    done_unix: float,
    web_search: bool,
    reasoning: bool,
    cost_usd: float,
    seed: int | None,
) -> dict[str, Any]:
    h = _hash(seed, user_prompt)
    text = answer_text(user_prompt, seed)
    annotations: list[dict[str, Any]] | None = None
    fan_out: list[str] | None = None
    if web_search:
        text, annotations = _cited_text(text, h, engine)
        topic = user_prompt[:80]
        fan_out = [topic, f"{topic} 2026", f"{topic} statistics"][: 1 + h % 3]
    items: list[dict[str, Any]] = []
    reasoning_tokens = 0
    if reasoning:
        thought = f"The user asks: {user_prompt[:120]}. List the main factors, then answer briefly."
        items.append({"type": "reasoning", "sections": [{"type": "summary_text", "text": thought}]})
        reasoning_tokens = 64 + (h % 512)
    section = {"type": "text", "text": text, "annotations": annotations}
    items.append({"type": "message", "sections": [section]})
    input_tokens = max(1, len(user_prompt) // 4) + 12
    output_tokens = max(1, len(text) // 4) + reasoning_tokens
    spent = (input_tokens + 4 * output_tokens) * 2e-6 + (0.0025 if web_search else 0.0)
    return {
        "model_name": model_name,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "reasoning_tokens": reasoning_tokens,
        "web_search": web_search,
        "money_spent": round(min(cost_usd, spent), 6),
        "datetime": utc_datetime(done_unix),
        "fan_out_queries": fan_out,
        "items": items,
    }
