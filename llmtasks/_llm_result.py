"""The documented ``task_get`` result of LLM Responses, typed (see the API digest).

``result[0]`` of a finished task: the dated model used, token counts, whether the web was
searched, the provider's charge, ``fan_out_queries`` and ``items``, each a ``message`` or a
``reasoning`` item made of ``sections``. A message section's ``annotations`` are its
citations: ``null`` without web search, possibly empty with it.

Lenient on purpose: the service adds fields (ignored here), sends ``null`` for what it does
not know (every field is optional) and may send ``12.0`` where an integer is documented
(``strict=False``). Exports must not lose a row because the service grew a field.
"""

from __future__ import annotations

import msgspec


class Annotation(msgspec.Struct, frozen=True):
    """One citation. ``start_index``/``end_index`` delimit the cited span of the section's
    ``text``; for gemini ``url`` is a short-lived Google redirect and ``direct_url`` (newer
    responses) the real source. Some responses also carry the span itself as ``text``."""

    title: str | None = None
    url: str | None = None
    start_index: int | None = None
    end_index: int | None = None
    direct_url: str | None = None
    text: str | None = None


class Section(msgspec.Struct, frozen=True):
    type: str | None = None
    text: str | None = None
    annotations: list[Annotation] | None = None


class Item(msgspec.Struct, frozen=True):
    """``type`` is ``message`` (the answer) or ``reasoning`` (the model's summary of its
    reasoning); other types may appear and are kept, not interpreted."""

    type: str | None = None
    sections: list[Section] | None = None


class LlmResult(msgspec.Struct, frozen=True):
    model_name: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    web_search: bool | None = None
    money_spent: float | None = None
    datetime: str | None = None
    fan_out_queries: list[str] | None = None
    items: list[Item] | None = None


_decode = msgspec.json.Decoder(list[LlmResult] | None, strict=False).decode


def decode_result(raw: bytes | str) -> LlmResult | None:
    """The first element of a stored task ``result`` list (None when the list is empty or
    null). Raises ``msgspec.DecodeError``/``ValidationError`` on a shape nothing can read."""
    results = _decode(raw)
    return results[0] if results else None
