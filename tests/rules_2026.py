"""The 2026 task rules as a table of cases, per engine: plain data, written from the docs digest
(/work/shared/api/README.md, "A task ... the rules as documented in 2026"), not from any code.

Each case is ``(engine, task, expected, field, code)``; the first three are the point:

- ``"accept"``: the service accepts the task;
- ``"refuse"``: the service certainly refuses it, blaming ``field`` with status ``code``
  (40501 invalid field, 40506 unknown field); a field inside the chain is blamed as
  ``message_chain`` (the service may add ``[i].role``);
- ``"unsettled"``: the docs do not settle it (a client warns and sends; the emulator accepts
  by default, see docs/emulator.md).

Which model reasons, searches the web or takes task_post is what the models endpoint says;
``MODELS`` lists what these cases assume, and tests check the emulator's endpoint agrees.
The same table is meant to be fed to the client's validation and to the emulator.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

INVALID: Final = 40501
UNKNOWN: Final = 40506


class Case(NamedTuple):
    engine: str
    task: dict[str, Any]
    expected: str  # "accept" | "refuse" | "unsettled"
    field: str | None = None
    code: int | None = None
    why: str = ""


# name → (reasoning, web_search_supported, task_post_supported), per engine
MODELS: Final[dict[str, dict[str, tuple[bool, bool, bool]]]] = {
    "chat_gpt": {
        "gpt-4.1-mini": (False, True, True),
        "gpt-4.1-mini-2025-04-14": (False, True, True),
        "gpt-4.1-nano": (False, False, True),
        "gpt-4o": (False, True, True),
        "gpt-5": (True, True, True),
        "o3": (True, True, True),
        "o1-pro": (True, False, False),
    },
    "claude": {
        "claude-sonnet-4-0": (True, True, True),
        "claude-sonnet-4-20250514": (True, True, True),
        "claude-3-5-haiku-latest": (False, True, True),
        "claude-3-5-sonnet-latest": (False, False, True),
        "claude-3-haiku": (False, False, False),
    },
    "gemini": {
        "gemini-2.5-flash": (True, True, True),
        "gemini-flash-latest": (True, True, True),
        "gemini-2.5-pro": (True, True, True),
        "gemini-2.0-flash": (False, True, True),
        "gemini-2.0-flash-lite": (False, False, True),
        "gemini-1.5-pro": (False, True, False),
    },
}

# Per engine: a plain model, a reasoning model, a model without web search or task_post.
PLAIN: Final = {
    "chat_gpt": "gpt-4.1-mini",
    "claude": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.0-flash",
}
REASONING: Final = {"chat_gpt": "o3", "claude": "claude-sonnet-4-0", "gemini": "gemini-2.5-flash"}
NO_WEB: Final = {
    "chat_gpt": "gpt-4.1-nano",
    "claude": "claude-3-5-sonnet-latest",
    "gemini": "gemini-2.0-flash-lite",
}
NO_POST: Final = {"chat_gpt": "o1-pro", "claude": "claude-3-haiku", "gemini": "gemini-1.5-pro"}
DATED: Final = {
    "chat_gpt": "gpt-4.1-mini-2025-04-14",
    "claude": "claude-sonnet-4-20250514",
    "gemini": "gemini-flash-latest",
}
OTHER_ENGINE: Final = {
    "chat_gpt": "claude-sonnet-4-0",
    "claude": "gemini-2.5-flash",
    "gemini": "gpt-4o",
}
ENGINES: Final = ("chat_gpt", "claude", "gemini")

# The 36 codes the digest lists for claude's web_search_country_iso_code.
CLAUDE_COUNTRY_CODES: Final = (
    "AR AT AU BE BR CA CH CL CN DE DK ES FI FR GB HK ID IN IT JP KR MX MY NL NO NZ PH PL PT RU SA "
    "SE TR TW US ZA"
)
LONG: Final = "x" * 500
ITEM: Final = {"role": "user", "message": "hi"}


def _t(model: str, **fields: Any) -> dict[str, Any]:
    return {"user_prompt": "which brands lead?", "model_name": model, **fields}


def _common(se: str) -> list[Case]:
    """Rules the digest gives for every engine."""
    m = PLAIN[se]
    ok, bad = "accept", "refuse"
    return [
        Case(se, _t(m), ok),
        Case(se, {"model_name": m}, bad, "user_prompt", INVALID, "required"),
        Case(se, _t(m, user_prompt=""), bad, "user_prompt", INVALID, "required"),
        Case(se, _t(m, user_prompt=LONG), ok),
        Case(se, _t(m, user_prompt=LONG + "x"), bad, "user_prompt", INVALID, "at most 500"),
        Case(se, _t(m, user_prompt=5), bad, "user_prompt", INVALID, "a string"),
        Case(se, {"user_prompt": "q"}, bad, "model_name", INVALID, "required"),
        Case(se, _t("gpt-99-ultra"), bad, "model_name", INVALID, "not in the list"),
        Case(se, _t(OTHER_ENGINE[se]), bad, "model_name", INVALID, "another engine's"),
        Case(se, _t(DATED[se]), ok, why="dated or alias name"),
        Case(se, _t(NO_POST[se]), bad, "model_name", INVALID, "task_post_supported false"),
        Case(se, _t(m, system_message=LONG), ok),
        Case(se, _t(m, system_message=LONG + "x"), bad, "system_message", INVALID),
        Case(se, _t(m, message_chain=[ITEM] * 10), ok),
        Case(se, _t(m, message_chain=[ITEM] * 11), bad, "message_chain", INVALID),
        Case(se, _t(m, message_chain=[{"role": "ai", "message": LONG}]), ok),
        Case(
            se,
            _t(m, message_chain=[{"role": "system", "message": "m"}]),
            bad,
            "message_chain",
            INVALID,
        ),
        Case(
            se,
            _t(m, message_chain=[{"role": "user", "message": LONG + "x"}]),
            bad,
            "message_chain",
            INVALID,
        ),
        Case(se, _t(m, tag="t" * 255), ok),
        Case(se, _t(m, tag="t" * 256), bad, "tag", INVALID),
        Case(se, _t(m, postback_url="http://127.0.0.1:9/p?id=$id&tag=$tag"), ok),
        Case(se, _t(m, pingback_url="http://127.0.0.1:9/p?id=$id"), ok),
        Case(se, _t(m, postback_data="advanced"), bad, "postback_data", UNKNOWN, "no such field"),
        Case(se, _t(m, colour="blue"), bad, "colour", UNKNOWN),
        Case(
            se,
            _t(m, max_output_tokens=None, temperature=None, tag=None, web_search=None),
            ok,
            why="null is not set",
        ),
        Case(se, _t(m, max_output_tokens=4096), ok, why="4096 for every model since Feb 2026"),
        Case(se, _t(m, max_output_tokens=4097), bad, "max_output_tokens", INVALID),
        Case(se, _t(m, max_output_tokens=512.5), bad, "max_output_tokens", INVALID),
        Case(se, _t(m, max_output_tokens="big"), bad, "max_output_tokens", INVALID),
        Case(se, _t(m, max_output_tokens=512.0), "unsettled", why="JSON has one number type"),
        Case(se, _t(m, top_p=0), ok),
        Case(se, _t(m, top_p=1), ok),
        Case(se, _t(m, top_p=1.01), bad, "top_p", INVALID),
        Case(se, _t(m, temperature=-0.1), bad, "temperature", INVALID),
        Case(se, _t(m, temperature=0), ok),
        Case(se, _t(m, web_search=True), ok),
        Case(se, _t(NO_WEB[se], web_search=True), bad, "web_search", INVALID, "not supported"),
        Case(se, _t(NO_WEB[se], web_search=False), ok),
        Case(se, _t(m, web_search="yes"), bad, "web_search", INVALID),
    ]


def _chat_gpt() -> list[Case]:
    se, m, r = "chat_gpt", "gpt-4.1-mini", "o3"
    ok, bad = "accept", "refuse"
    return [
        Case(se, _t(m, max_output_tokens=16), ok),
        Case(se, _t(m, max_output_tokens=15), bad, "max_output_tokens", INVALID),
        Case(se, _t(m, max_output_tokens=2049), ok, why="the 2048 cap is gone"),
        Case(se, _t(r, max_output_tokens=1024), ok),
        Case(se, _t(r, max_output_tokens=1023), bad, "max_output_tokens", INVALID),
        Case(se, _t("gpt-5", max_output_tokens=1023), bad, "max_output_tokens", INVALID),
        Case(se, _t("gpt-5", max_output_tokens=4096), ok),
        Case(se, _t(m, temperature=2), ok),
        Case(se, _t(m, temperature=2.01), bad, "temperature", INVALID),
        Case(se, _t(m, temperature=1.5), ok),
        Case(se, _t(r, temperature=0.5), bad, "temperature", INVALID, "not on reasoning models"),
        Case(se, _t("gpt-5", temperature=0.5), bad, "temperature", INVALID, "gpt-5 reasons"),
        Case(se, _t(r, top_p=0.5), ok, why="top_p has no reasoning rule on chat_gpt"),
        Case(se, _t(m, temperature=0.5, top_p=0.5), "unsettled", why="not together vs examples"),
        Case(se, _t(m, use_reasoning=True), bad, "use_reasoning", UNKNOWN, "no such field"),
        Case(se, _t(r, use_reasoning=False), bad, "use_reasoning", UNKNOWN, "no such field"),
        Case(se, _t(m, web_search=True, force_web_search=True), ok),
        Case(
            se, _t(m, force_web_search=True), bad, "force_web_search", INVALID, "needs web_search"
        ),
        Case(se, _t(m, web_search=False, force_web_search=True), bad, "force_web_search", INVALID),
        Case(se, _t(m, force_web_search=False), "unsettled", why="false forces nothing"),
        Case(
            se,
            _t(r, web_search=True, force_web_search=True),
            bad,
            "force_web_search",
            INVALID,
            "not on reasoning models",
        ),
        Case(se, _t(r, web_search=True), ok),
        Case(se, _t(m, web_search=True, web_search_country_iso_code="US"), ok),
        Case(se, _t(m, web_search=True, web_search_country_iso_code="EG"), ok, why="any ISO code"),
        Case(
            se,
            _t(m, web_search_country_iso_code="US"),
            bad,
            "web_search_country_iso_code",
            INVALID,
            "needs web_search",
        ),
        Case(se, _t(m, web_search=True, web_search_city="Paris"), ok),
        Case(se, _t(m, web_search_city="Paris"), ok, why="free text, no dependency documented"),
    ]


def _claude() -> list[Case]:
    se, m, r = "claude", "claude-3-5-haiku-latest", "claude-sonnet-4-0"
    ok, bad = "accept", "refuse"
    return [
        Case(se, _t(m, max_output_tokens=1), ok),
        Case(se, _t(m, max_output_tokens=0), bad, "max_output_tokens", INVALID),
        Case(se, _t(m, max_output_tokens=15), ok, why="1..4096 on claude"),
        Case(se, _t(r, max_output_tokens=512), ok, why="reasoning is use_reasoning, not the model"),
        Case(se, _t(r, use_reasoning=True), ok),
        Case(se, _t(r, use_reasoning=False), ok),
        Case(se, _t(m, use_reasoning=True), bad, "use_reasoning", INVALID, "model not reasoning"),
        Case(se, _t(m, use_reasoning=False), ok),
        Case(se, _t(r, use_reasoning="yes"), bad, "use_reasoning", INVALID),
        Case(se, _t(r, use_reasoning=True, max_output_tokens=1025), ok),
        Case(
            se, _t(r, use_reasoning=True, max_output_tokens=1024), bad, "max_output_tokens", INVALID
        ),
        Case(se, _t(r, use_reasoning=True, max_output_tokens=4096), ok),
        Case(se, _t(m, temperature=1), ok),
        Case(se, _t(m, temperature=1.01), bad, "temperature", INVALID, "0..1 on claude"),
        Case(se, _t(m, temperature=2), bad, "temperature", INVALID, "0..1 on claude"),
        Case(se, _t(r, temperature=0.5), ok, why="without use_reasoning"),
        Case(se, _t(r, use_reasoning=True, temperature=0.5), bad, "temperature", INVALID),
        Case(se, _t(r, use_reasoning=True, top_p=0.5), bad, "top_p", INVALID),
        Case(se, _t(r, use_reasoning=False, temperature=0.5, top_p=0.9), "unsettled"),
        Case(se, _t(m, temperature=0.5, top_p=0.5), "unsettled", why="not together vs examples"),
        Case(se, _t(m, web_search=True, force_web_search=True), ok),
        Case(
            se, _t(m, force_web_search=True), bad, "force_web_search", INVALID, "needs web_search"
        ),
        Case(se, _t(m, force_web_search=False), "unsettled", why="false forces nothing"),
        Case(
            se,
            _t(r, use_reasoning=True, web_search=True, force_web_search=True),
            bad,
            "force_web_search",
            INVALID,
            "not with use_reasoning",
        ),
        Case(se, _t(r, web_search=True, force_web_search=True), ok, why="reasoning not asked"),
        Case(se, _t(r, use_reasoning=True, web_search=True), ok),
        *(
            Case(se, _t(m, web_search=True, web_search_country_iso_code=code), ok)
            for code in CLAUDE_COUNTRY_CODES.split(" ")
        ),
        Case(
            se,
            _t(m, web_search=True, web_search_country_iso_code="EG"),
            bad,
            "web_search_country_iso_code",
            INVALID,
            "not one of the 36",
        ),
        Case(
            se,
            _t(m, web_search=True, web_search_country_iso_code="UA"),
            bad,
            "web_search_country_iso_code",
            INVALID,
            "not one of the 36",
        ),
        Case(
            se,
            _t(m, web_search_country_iso_code="US"),
            bad,
            "web_search_country_iso_code",
            INVALID,
            "needs web_search",
        ),
        Case(se, _t(m, web_search=True, web_search_country_iso_code="us"), "unsettled"),
        Case(se, _t(m, web_search=True, web_search_city="Berlin"), ok),
    ]


def _gemini() -> list[Case]:
    se, m, r, pro = "gemini", "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro"
    ok, bad = "accept", "refuse"
    return [
        Case(se, _t(m, max_output_tokens=1), ok),
        Case(se, _t(m, max_output_tokens=0), bad, "max_output_tokens", INVALID),
        Case(se, _t(r, max_output_tokens=100), ok),
        Case(se, _t(r, use_reasoning=True), ok),
        Case(se, _t(m, use_reasoning=True), bad, "use_reasoning", INVALID, "model not reasoning"),
        Case(se, _t(m, use_reasoning=False), ok),
        Case(se, _t(r, use_reasoning=True, max_output_tokens=1024), ok),
        Case(
            se, _t(r, use_reasoning=True, max_output_tokens=1023), bad, "max_output_tokens", INVALID
        ),
        Case(se, _t(pro, use_reasoning=True), ok),
        Case(
            se,
            _t(pro, use_reasoning=True, max_output_tokens=1023),
            bad,
            "max_output_tokens",
            INVALID,
        ),
        Case(se, _t(pro, max_output_tokens=512), "unsettled", why="Pro reasons always"),
        Case(se, _t(m, temperature=2), ok),
        Case(se, _t(m, temperature=2.5), bad, "temperature", INVALID),
        Case(se, _t(r, use_reasoning=True, temperature=1.5), ok, why="no reasoning rule on gemini"),
        Case(se, _t(r, use_reasoning=True, top_p=0.5), ok),
        Case(se, _t(m, temperature=0.5, top_p=0.5), ok, why="no rule on gemini"),
        Case(se, _t(m, web_search=True, force_web_search=True), "unsettled", why="no such field"),
        Case(se, _t(m, force_web_search=True), "unsettled", why="no such field"),
        Case(se, _t(m, web_search=True, web_search_country_iso_code="US"), "unsettled"),
        Case(se, _t(m, web_search=True, web_search_city="Paris"), "unsettled"),
    ]


CASES: Final[list[Case]] = [
    *(c for se in ENGINES for c in _common(se)),
    *_chat_gpt(),
    *_claude(),
    *_gemini(),
]


def case_id(index: int, case: Case) -> str:
    """A short readable test id: number, engine, expectation, the fields set."""
    shown = [f"{k}={str(v)[:16]}" for k, v in case.task.items() if k != "user_prompt"]
    return f"{index:03d}-{case.engine}-{case.expected}-{','.join(shown)}"
