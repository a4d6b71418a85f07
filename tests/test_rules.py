"""The 2026 per-engine rules, case by case, as the client applies them to input lines.

Every expected value below is the DOCUMENTED one (../shared/api/README.md, "A task ... the
rules as documented in 2026"), not a constant of the implementation: "ok" the service takes
the task, so the client must send it; ("reject", field) the service certainly refuses it, so
the client refuses it before any call, naming the field; ("warn", key) the docs are unsettled,
so the client sends it and warns once per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks._input import read_lines
from llmtasks._models import ModelInfo, ModelList
from llmtasks._rules import TaskRules
from tests.conftest import read_jsonl, run_cli


def _m(name: str, reasoning: bool, web: bool = True, post: bool = True) -> ModelInfo:
    return ModelInfo(
        model_name=name, reasoning=reasoning, web_search_supported=web, task_post_supported=post
    )


# The models endpoint as a test fixture: which models reason is the endpoint's word.
MODELS: dict[str, tuple[ModelInfo, ...]] = {
    "chat_gpt": (
        _m("gpt-4.1-2025-04-14", False),
        _m("gpt-4.1-nano-2025-04-14", False, web=False),
        _m("gpt-5-2025-08-07", True),
        _m("o3-2025-04-16", True),
        _m("o1-pro-2025-03-19", True, web=False, post=False),
    ),
    "claude": (
        _m("claude-sonnet-4-20250514", True),
        _m("claude-3-5-haiku-20241022", False),
    ),
    "gemini": (
        _m("gemini-2.5-pro", True),
        _m("gemini-2.5-flash", True),
        _m("gemini-2.0-flash", False),
    ),
}
PLAIN = {"chat_gpt": "gpt-4.1", "claude": "claude-3-5-haiku", "gemini": "gemini-2.0-flash"}
REASONING = {"chat_gpt": "gpt-5", "claude": "claude-sonnet-4", "gemini": "gemini-2.5-flash"}
CLAUDE_CODES = [
    "AR",
    "AT",
    "AU",
    "BE",
    "BR",
    "CA",
    "CH",
    "CL",
    "CN",
    "DE",
    "DK",
    "ES",
    "FI",
    "FR",
    "GB",
    "HK",
    "ID",
    "IN",
    "IT",
    "JP",
    "KR",
    "MX",
    "MY",
    "NL",
    "NO",
    "NZ",
    "PH",
    "PL",
    "PT",
    "RU",
    "SA",
    "SE",
    "TR",
    "TW",
    "US",
    "ZA",
]

OK = "ok"
Expected = str | tuple[str, str]


def rej(field: str) -> tuple[str, str]:
    return ("reject", field)


def warn(key: str) -> tuple[str, str]:
    return ("warn", key)


# (engine, the task's fields besides user_prompt, expected)
CASES: list[tuple[str, dict[str, Any], Expected]] = [
    # --- chat_gpt: max_output_tokens 16..4096; 1024..4096 on reasoning models
    ("chat_gpt", {"model_name": "gpt-4.1", "max_output_tokens": 16}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "max_output_tokens": 15}, rej("max_output_tokens")),
    ("chat_gpt", {"model_name": "gpt-4.1", "max_output_tokens": 2049}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "max_output_tokens": 4096}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "max_output_tokens": 4097}, rej("max_output_tokens")),
    ("chat_gpt", {"model_name": "gpt-5", "max_output_tokens": 1023}, rej("max_output_tokens")),
    ("chat_gpt", {"model_name": "gpt-5", "max_output_tokens": 1024}, OK),
    ("chat_gpt", {"model_name": "gpt-5", "max_output_tokens": 4096}, OK),
    ("chat_gpt", {"model_name": "o3", "max_output_tokens": 500}, rej("max_output_tokens")),
    # temperature 0..2, not on reasoning models (gpt-5 reasons: the flag, not the name)
    ("chat_gpt", {"model_name": "gpt-4.1", "temperature": 0}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "temperature": 2}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "temperature": 2.1}, rej("temperature")),
    ("chat_gpt", {"model_name": "gpt-5", "temperature": 0.5}, rej("temperature")),
    ("chat_gpt", {"model_name": "o3", "temperature": 1}, rej("temperature")),
    # top_p 0..1 (no reasoning rule on chat_gpt)
    ("chat_gpt", {"model_name": "gpt-4.1", "top_p": 1}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "top_p": 1.01}, rej("top_p")),
    ("chat_gpt", {"model_name": "gpt-5", "top_p": 0.5}, OK),
    # temperature with top_p: the docs say no, their examples send both
    (
        "chat_gpt",
        {"model_name": "gpt-4.1", "temperature": 1, "top_p": 0.5},
        warn("temperature+top_p"),
    ),
    # use_reasoning: no such field on chat_gpt (null is "not set")
    ("chat_gpt", {"model_name": "gpt-5", "use_reasoning": True}, rej("use_reasoning")),
    ("chat_gpt", {"model_name": "gpt-4.1", "use_reasoning": False}, rej("use_reasoning")),
    ("chat_gpt", {"model_name": "gpt-4.1", "use_reasoning": None}, OK),
    # force_web_search needs web_search: true; not on reasoning models
    ("chat_gpt", {"model_name": "gpt-4.1", "force_web_search": True}, rej("force_web_search")),
    (
        "chat_gpt",
        {"model_name": "gpt-4.1", "web_search": False, "force_web_search": True},
        rej("force_web_search"),
    ),
    ("chat_gpt", {"model_name": "gpt-4.1", "web_search": True, "force_web_search": True}, OK),
    ("chat_gpt", {"model_name": "gpt-4.1", "force_web_search": False}, OK),
    (
        "chat_gpt",
        {"model_name": "gpt-5", "web_search": True, "force_web_search": True},
        rej("force_web_search"),
    ),
    # web_search_country_iso_code: an ISO code, needs web_search
    (
        "chat_gpt",
        {"model_name": "gpt-4.1", "web_search": True, "web_search_country_iso_code": "IE"},
        OK,
    ),
    (
        "chat_gpt",
        {"model_name": "gpt-4.1", "web_search_country_iso_code": "US"},
        rej("web_search_country_iso_code"),
    ),
    ("chat_gpt", {"model_name": "gpt-4.1", "web_search": True, "web_search_city": "Boston"}, OK),
    # web_search only on models whose web_search_supported is true
    ("chat_gpt", {"model_name": "gpt-4.1-nano", "web_search": True}, rej("web_search")),
    ("chat_gpt", {"model_name": "gpt-4.1-nano", "web_search": False}, OK),
    # the models list: task_post_supported false is refused; an unlisted model is warned about
    ("chat_gpt", {"model_name": "o1-pro"}, rej("model_name")),
    ("chat_gpt", {"model_name": "gpt-4.1-2025-04-14"}, OK),
    ("chat_gpt", {"model_name": "gpt-4.2"}, warn("unknown model gpt-4.2")),
    # --- claude: max_output_tokens 1..4096; 1025..4096 with use_reasoning
    ("claude", {"model_name": "claude-3-5-haiku", "max_output_tokens": 1}, OK),
    ("claude", {"model_name": "claude-3-5-haiku", "max_output_tokens": 15}, OK),
    (
        "claude",
        {"model_name": "claude-3-5-haiku", "max_output_tokens": 0},
        rej("max_output_tokens"),
    ),
    ("claude", {"model_name": "claude-3-5-haiku", "max_output_tokens": 4096}, OK),
    (
        "claude",
        {"model_name": "claude-3-5-haiku", "max_output_tokens": 4097},
        rej("max_output_tokens"),
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "use_reasoning": True, "max_output_tokens": 1024},
        rej("max_output_tokens"),
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "use_reasoning": True, "max_output_tokens": 1025},
        OK,
    ),
    ("claude", {"model_name": "claude-sonnet-4", "max_output_tokens": 100}, OK),
    # temperature 0..1; not with use_reasoning
    ("claude", {"model_name": "claude-sonnet-4", "temperature": 1}, OK),
    ("claude", {"model_name": "claude-sonnet-4", "temperature": 0}, OK),
    ("claude", {"model_name": "claude-sonnet-4", "temperature": 1.01}, rej("temperature")),
    ("claude", {"model_name": "claude-sonnet-4", "temperature": 2}, rej("temperature")),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "use_reasoning": True, "temperature": 0.5},
        rej("temperature"),
    ),
    # top_p 0..1; not with use_reasoning
    ("claude", {"model_name": "claude-sonnet-4", "top_p": 0.9}, OK),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "use_reasoning": True, "top_p": 0.9},
        rej("top_p"),
    ),
    ("claude", {"model_name": "claude-sonnet-4", "use_reasoning": False, "top_p": 0.9}, OK),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "temperature": 0.5, "top_p": 0.5},
        warn("temperature+top_p"),
    ),
    # use_reasoning: bool, only on models flagged reasoning
    ("claude", {"model_name": "claude-sonnet-4", "use_reasoning": True}, OK),
    ("claude", {"model_name": "claude-3-5-haiku", "use_reasoning": True}, rej("use_reasoning")),
    ("claude", {"model_name": "claude-3-5-haiku", "use_reasoning": False}, OK),
    # force_web_search needs web_search: true; not with use_reasoning
    (
        "claude",
        {"model_name": "claude-sonnet-4", "force_web_search": True},
        rej("force_web_search"),
    ),
    ("claude", {"model_name": "claude-sonnet-4", "web_search": True, "force_web_search": True}, OK),
    (
        "claude",
        {
            "model_name": "claude-sonnet-4",
            "web_search": True,
            "force_web_search": True,
            "use_reasoning": True,
        },
        rej("force_web_search"),
    ),
    # web_search_country_iso_code: one of 36 codes, needs web_search
    (
        "claude",
        {"model_name": "claude-sonnet-4", "web_search": True, "web_search_country_iso_code": "GB"},
        OK,
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "web_search": True, "web_search_country_iso_code": "IE"},
        rej("web_search_country_iso_code"),
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "web_search": True, "web_search_country_iso_code": "us"},
        warn("country code case"),
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "web_search_country_iso_code": "US"},
        rej("web_search_country_iso_code"),
    ),
    (
        "claude",
        {"model_name": "claude-sonnet-4", "web_search": True, "web_search_city": "Lyon"},
        OK,
    ),
    ("claude", {"model_name": "claude-opus-9"}, warn("unknown model claude-opus-9")),
    # --- gemini: max_output_tokens 1..4096; 1024..4096 with use_reasoning
    ("gemini", {"model_name": "gemini-2.0-flash", "max_output_tokens": 1}, OK),
    ("gemini", {"model_name": "gemini-2.0-flash", "max_output_tokens": 4096}, OK),
    (
        "gemini",
        {"model_name": "gemini-2.0-flash", "max_output_tokens": 4097},
        rej("max_output_tokens"),
    ),
    (
        "gemini",
        {"model_name": "gemini-2.5-flash", "use_reasoning": True, "max_output_tokens": 1023},
        rej("max_output_tokens"),
    ),
    (
        "gemini",
        {"model_name": "gemini-2.5-flash", "use_reasoning": True, "max_output_tokens": 1024},
        OK,
    ),
    # temperature 0..2 (also with use_reasoning), top_p 0..1, together: no rule
    ("gemini", {"model_name": "gemini-2.0-flash", "temperature": 2}, OK),
    ("gemini", {"model_name": "gemini-2.0-flash", "temperature": 2.5}, rej("temperature")),
    ("gemini", {"model_name": "gemini-2.5-flash", "use_reasoning": True, "temperature": 1.5}, OK),
    ("gemini", {"model_name": "gemini-2.0-flash", "top_p": 1.5}, rej("top_p")),
    ("gemini", {"model_name": "gemini-2.0-flash", "temperature": 1, "top_p": 0.5}, OK),
    # use_reasoning: only on models flagged reasoning
    ("gemini", {"model_name": "gemini-2.5-pro", "use_reasoning": True}, OK),
    ("gemini", {"model_name": "gemini-2.0-flash", "use_reasoning": True}, rej("use_reasoning")),
    ("gemini", {"model_name": "gemini-2.0-flash", "use_reasoning": False}, OK),
    # no such fields on gemini, unsettled what the service does: warn and send
    ("gemini", {"model_name": "gemini-2.5-pro", "web_search": True}, OK),
    (
        "gemini",
        {"model_name": "gemini-2.5-pro", "web_search": True, "force_web_search": True},
        warn("gemini force_web_search"),
    ),
    (
        "gemini",
        {"model_name": "gemini-2.5-pro", "web_search": True, "web_search_country_iso_code": "FR"},
        warn("gemini web_search_country_iso_code"),
    ),
    (
        "gemini",
        {"model_name": "gemini-2.5-pro", "web_search": True, "web_search_city": "Paris"},
        warn("gemini web_search_city"),
    ),
    # every engine: the common fields
    *[
        (engine, {"model_name": PLAIN[engine], "system_message": "s" * 500}, OK)
        for engine in ("chat_gpt", "claude", "gemini")
    ],
    *[
        (engine, {"model_name": PLAIN[engine], "tag": "t" * 256}, rej("tag"))
        for engine in ("chat_gpt", "claude", "gemini")
    ],
    *[
        (engine, {"model_name": REASONING[engine], "bogus": 1}, rej("bogus"))
        for engine in ("chat_gpt", "claude", "gemini")
    ],
    *[
        (
            "claude",
            {"model_name": "claude-sonnet-4", "web_search": True, "web_search_country_iso_code": c},
            OK,
        )
        for c in CLAUDE_CODES
    ],
]


def _rules(engine: str, messages: list[str]) -> TaskRules:
    return TaskRules(engine, ModelList(engine, MODELS[engine], "service"), warn=messages.append)


def _case_id(case: tuple[str, dict[str, Any], Expected]) -> str:
    engine, fields, expected = case
    what = ",".join(f"{k}={v}" for k, v in fields.items() if k != "model_name")
    return f"{engine}:{fields.get('model_name')}:{what}->{expected}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_the_2026_table(case: tuple[str, dict[str, Any], Expected], tmp_path: Path) -> None:
    engine, fields, expected = case
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"user_prompt": "q", **fields}) + b"\n")
    messages: list[str] = []
    rules = _rules(engine, messages)
    (line,) = read_lines(str(path), engine=engine, rules=rules)
    if expected == OK:
        assert line.task is not None, f"{line.field}: {line.reason}"
        assert rules.warned == {} and messages == []
    elif expected[0] == "reject":
        assert line.task is None and line.field == expected[1], (line.field, line.reason)
        assert line.reason
    else:
        assert line.task is not None, f"{line.field}: {line.reason}"
        assert rules.warned == {expected[1]: 1}
        assert len(messages) == 1 and "the service decides" in messages[0]


def test_each_unsettled_rule_warns_once_per_run_and_counts_every_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    task = {"user_prompt": "q", "model_name": "claude-sonnet-4", "temperature": 0.5, "top_p": 0.5}
    path.write_bytes(b"".join(orjson.dumps(task) + b"\n" for _ in range(3)))
    messages: list[str] = []
    rules = _rules("claude", messages)
    lines = list(read_lines(str(path), engine="claude", rules=rules))
    assert all(line.task is not None for line in lines)
    assert rules.warned == {"temperature+top_p": 3}
    assert len(messages) == 1 and "first on line 1" in messages[0]


def test_an_unknown_model_is_warned_about_with_the_closest_names() -> None:
    messages: list[str] = []
    rules = _rules("chat_gpt", messages)
    assert rules.model("gpt-4.1-mini") is None
    assert rules.model("gpt-4.1-mini") is None
    assert len(messages) == 1
    assert "'gpt-4.1-mini' is not in the chat_gpt models list (from the service)" in messages[0]
    assert "closest: gpt-4.1" in messages[0]


def test_a_model_not_for_task_post_is_only_warned_about_by_the_built_in_table() -> None:
    # The built-in table may be stale: it cannot prove the service refuses a model.
    messages: list[str] = []
    offline = TaskRules("chat_gpt", warn=messages.append)
    assert offline.models.source == "built-in"
    info = offline.model("o1-pro")
    assert info is not None and not info.task_post_supported
    assert len(messages) == 1 and "built-in table" in messages[0]


def test_the_built_in_table_knows_the_reasoning_models_of_the_digest() -> None:
    rules = TaskRules("chat_gpt")
    for name in ("gpt-5", "gpt-5-mini", "o3", "o4-mini", "o1"):
        info = rules.model(name)
        assert info is not None and info.reasoning, name
    for name in ("gpt-4.1", "gpt-4o", "gpt-4o-mini"):
        info = rules.model(name)
        assert info is not None and not info.reasoning, name


def test_dry_run_applies_the_engine_rules_and_says_the_table_is_built_in(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"".join(
            orjson.dumps(t) + b"\n"
            for t in (
                {"user_prompt": "a", "model_name": "claude-sonnet-4", "max_output_tokens": 10},
                {"user_prompt": "b", "model_name": "claude-sonnet-4", "temperature": 1.5},
                {"user_prompt": "c", "model_name": "claude-sonnet-4", "use_reasoning": True},
            )
        )
    )
    r = run_cli("submit", str(src), "--dry-run", "--engine", "claude")
    assert r.returncode == 1, r.stderr
    assert f"{src}:2: field temperature: must be 0..1 on claude" in r.stderr
    assert "3 lines, 2 valid, 1 rejected" in r.stderr
    assert "built-in claude table" in r.stderr
    chat = run_cli("submit", str(src), "--dry-run", "--engine", "chat_gpt")
    assert chat.returncode == 1
    assert f"{src}:3: field use_reasoning: unknown field for chat_gpt" in chat.stderr


def test_refused_lines_never_reach_the_service(emulator: Any, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    good = {"user_prompt": "fine", "model_name": "claude-sonnet-4", "max_output_tokens": 8}
    bad = {"user_prompt": "hot", "model_name": "claude-sonnet-4", "temperature": 1.5}
    src.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n")
    r = run_cli("submit", str(src), "--engine", "claude", "--base-url", emu.url)
    assert r.returncode == 1, r.stderr
    assert [t["user_prompt"] for t in emu.created()] == ["fine"]
    (reject,) = read_jsonl(tmp_path / "in.jsonl.rejects.jsonl")
    assert reject["line"] == 2 and reject["field"] == "temperature"
    models_calls = [c for c in emu.calls() if c["path"].endswith("/claude/llm_responses/models")]
    assert len(models_calls) == 1  # the list, fetched once for the run
