"""Local validation (``_task`` and ``_rules``) judged by the documented rules alone.

Every expected value comes from the 2026 digest (../shared/api/README.md, "A task ... the
rules as documented in 2026"): a task the service certainly refuses is refused locally with
the field named; one the docs leave unsettled is sent with one warning per kind and run.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

import llmtasks._task as task_module
from llmtasks._models import ModelInfo, ModelList, builtin_models
from llmtasks._rules import TaskRules
from llmtasks._task import (
    ENGINES,
    MAX_TASKS_PER_POST,
    ChainMessage,
    StrictTask,
    Task,
    TaskRuleError,
    check_rules,
    decode_task,
    explain,
)


def test_user_prompt_is_at_most_500_characters() -> None:
    assert decode_task('{"user_prompt": "%s"}' % ("x" * 500)).user_prompt == "x" * 500
    with pytest.raises(msgspec.ValidationError):
        decode_task('{"user_prompt": "%s"}' % ("x" * 501))


# --- the engine rules: TaskRules.check on its own ----------------------------------------
# Each refusal must name the field and say what the documentation allows (the user fixes the
# line from the message alone); each warning must say the line was sent and where it was.


def _m(name: str, reasoning: bool, web: bool = True, post: bool = True) -> ModelInfo:
    return ModelInfo(
        model_name=name, reasoning=reasoning, web_search_supported=web, task_post_supported=post
    )


SERVICE = {
    "chat_gpt": (_m("gpt-4.1", False), _m("gpt-4.1-nano", False, web=False), _m("gpt-5", True)),
    "claude": (_m("claude-sonnet-4", True), _m("claude-3-5-haiku", False)),
    "gemini": (_m("gemini-2.5-flash", True), _m("gemini-2.0-flash", False)),
}


def _rules(engine: str, source: str = "service") -> tuple[TaskRules, list[str]]:
    messages: list[str] = []
    models = ModelList(engine, SERVICE[engine], source)  # type: ignore[arg-type]
    return TaskRules(engine, models, warn=messages.append), messages


def _refusal(engine: str, line: int = 0, **fields: Any) -> tuple[str, str]:
    rules, _ = _rules(engine)
    with pytest.raises(TaskRuleError) as info:
        rules.check(Task(**{"user_prompt": "q", **fields}), line)
    return info.value.field, info.value.reason


def _warnings(engine: str, line: int = 0, **fields: Any) -> list[str]:
    rules, messages = _rules(engine)
    rules.check(Task(**{"user_prompt": "q", **fields}), line)
    return messages


def test_an_unknown_engine_is_a_programming_error_naming_the_engines() -> None:
    with pytest.raises(
        ValueError, match=r"^engine must be one of chat_gpt, claude, gemini, not 'x'$"
    ):
        TaskRules("x")


def test_without_a_list_the_built_in_table_of_that_engine_is_used() -> None:
    for engine in ("chat_gpt", "claude", "gemini"):
        rules = TaskRules(engine)
        assert rules.models.engine == engine and rules.models.source == "built-in"
        assert rules.models.models == builtin_models(engine)


def test_the_two_required_fields() -> None:
    rules, _ = _rules("chat_gpt")
    for prompt in (None, ""):
        with pytest.raises(TaskRuleError) as info:
            rules.check(Task(user_prompt=prompt, model_name="gpt-4.1"))
        assert (info.value.field, info.value.reason) == ("user_prompt", "is required")
    for model in (None, ""):
        with pytest.raises(TaskRuleError) as info:
            rules.check(Task(user_prompt="q", model_name=model))
        assert (info.value.field, info.value.reason) == ("model_name", "is required")


def test_token_limits_name_the_documented_range() -> None:
    cases = [
        ("chat_gpt", {"model_name": "gpt-4.1"}, 15, "must be 16..4096 for model 'gpt-4.1'"),
        (
            "chat_gpt",
            {"model_name": "gpt-5"},
            1023,
            "must be 1024..4096 for reasoning model 'gpt-5'",
        ),
        ("claude", {"model_name": "claude-3-5-haiku"}, 4097, "must be 1..4096 on claude"),
        (
            "claude",
            {"model_name": "claude-sonnet-4", "use_reasoning": True},
            1024,
            "must be 1025..4096 on claude with use_reasoning",
        ),
        ("gemini", {"model_name": "gemini-2.0-flash"}, 4097, "must be 1..4096 on gemini"),
        (
            "gemini",
            {"model_name": "gemini-2.5-flash", "use_reasoning": True},
            1023,
            "must be 1024..4096 on gemini with use_reasoning",
        ),
    ]
    for engine, fields, tokens, reason in cases:
        got = _refusal(engine, max_output_tokens=tokens, **fields)
        assert got == ("max_output_tokens", reason), (engine, fields, tokens)


def test_sampling_refusals_say_why() -> None:
    assert _refusal("claude", model_name="claude-3-5-haiku", temperature=1.5) == (
        "temperature",
        "must be 0..1 on claude",
    )
    assert _refusal("chat_gpt", model_name="gpt-4.1", temperature=2.5) == (
        "temperature",
        "must be 0..2 on chat_gpt",
    )
    assert _refusal("chat_gpt", model_name="gpt-5", temperature=0.5) == (
        "temperature",
        "is not supported by reasoning model 'gpt-5'",
    )
    reasoning = {"model_name": "claude-sonnet-4", "use_reasoning": True}
    assert _refusal("claude", temperature=0.5, **reasoning) == (
        "temperature",
        "is not supported with use_reasoning on claude",
    )
    assert _refusal("claude", top_p=0.5, **reasoning) == (
        "top_p",
        "is not supported with use_reasoning on claude",
    )
    # gemini has no such rule; chat_gpt's reasoning models take top_p.
    assert (
        _warnings("gemini", model_name="gemini-2.5-flash", use_reasoning=True, temperature=1.5)
        == []
    )
    assert _warnings("chat_gpt", model_name="gpt-5", top_p=0.5) == []


def test_temperature_with_top_p_is_sent_with_a_warning_naming_the_first_line() -> None:
    both = {"temperature": 0.5, "top_p": 0.5}
    (message,) = _warnings("chat_gpt", 12, model_name="gpt-4.1", **both)
    assert message == (
        "temperature and top_p together: the chat_gpt docs say not to, their own examples send "
        "both; sent, the service decides (first on line 12)"
    )
    (message,) = _warnings("claude", 0, model_name="claude-3-5-haiku", **both)
    assert message.endswith("sent, the service decides")  # no line: no "first on line"
    assert _warnings("gemini", 3, model_name="gemini-2.0-flash", **both) == []


def test_reasoning_rules_per_engine() -> None:
    assert _refusal("chat_gpt", model_name="gpt-4.1", use_reasoning=False) == (
        "use_reasoning",
        "unknown field for chat_gpt (claude and gemini only: on chat_gpt reasoning is the "
        "model's own)",
    )
    assert _refusal("claude", model_name="claude-3-5-haiku", use_reasoning=True) == (
        "use_reasoning",
        "model 'claude-3-5-haiku' does not reason on claude (its models entry has "
        "reasoning: false)",
    )
    # Not listed: the service decides (warned about as an unknown model, not refused).
    (message,) = _warnings("claude", model_name="claude-9", use_reasoning=True)
    assert "'claude-9' is not in the claude models list" in message
    assert _warnings("claude", model_name="claude-3-5-haiku", use_reasoning=False) == []


def test_web_search_needs_a_model_that_supports_it() -> None:
    assert _refusal("chat_gpt", model_name="gpt-4.1-nano", web_search=True) == (
        "web_search",
        "is not supported by model 'gpt-4.1-nano' on chat_gpt",
    )
    assert _warnings("chat_gpt", model_name="gpt-4.1-nano", web_search=False) == []


def test_force_web_search_rules() -> None:
    for engine, model in (("chat_gpt", "gpt-4.1"), ("claude", "claude-3-5-haiku")):
        assert _refusal(engine, model_name=model, force_web_search=True) == (
            "force_web_search",
            "needs web_search: true",
        )
        assert _refusal(engine, model_name=model, force_web_search=True, web_search=False) == (
            "force_web_search",
            "needs web_search: true",
        )
        assert _warnings(engine, model_name=model, force_web_search=True, web_search=True) == []
        assert _warnings(engine, model_name=model, force_web_search=False) == []
    assert _refusal("chat_gpt", model_name="gpt-5", force_web_search=True, web_search=True) == (
        "force_web_search",
        "is not supported by reasoning model 'gpt-5'",
    )
    assert _refusal(
        "claude",
        model_name="claude-sonnet-4",
        use_reasoning=True,
        force_web_search=True,
        web_search=True,
    ) == ("force_web_search", "is not supported with use_reasoning on claude")


def test_country_codes() -> None:
    sonnet = {"model_name": "claude-sonnet-4"}
    field, reason = _refusal("claude", web_search=True, web_search_country_iso_code="XX", **sonnet)
    assert field == "web_search_country_iso_code"
    assert reason.startswith("'XX' is not one of claude's 36 codes (AR AT AU ")
    assert _refusal("claude", web_search_country_iso_code="US", **sonnet) == (
        "web_search_country_iso_code",
        "needs web_search: true",
    )
    assert _refusal("chat_gpt", model_name="gpt-4.1", web_search_country_iso_code="DE") == (
        "web_search_country_iso_code",
        "needs web_search: true",
    )
    # The docs list capitals and say nothing of case: a lower-case code is sent, warned about.
    (message,) = _warnings("claude", 4, web_search=True, web_search_country_iso_code="us", **sonnet)
    assert message == (
        "web_search_country_iso_code 'us' is not in capitals as documented; sent as written, "
        "the service decides (first on line 4)"
    )
    (message,) = _warnings("claude", web_search=True, web_search_country_iso_code="us", **sonnet)
    assert message.endswith("the service decides")
    # chat_gpt takes any ISO code.
    assert (
        _warnings(
            "chat_gpt", model_name="gpt-4.1", web_search=True, web_search_country_iso_code="ua"
        )
        == []
    )


def test_gemini_search_options_are_sent_with_one_warning_each() -> None:
    fields = {
        "force_web_search": False,
        "web_search_country_iso_code": "US",
        "web_search_city": "Paris",
    }
    for field, value in fields.items():
        (message,) = _warnings("gemini", 9, model_name="gemini-2.0-flash", **{field: value})
        assert message == (
            f"{field} is not documented for gemini (unsettled whether the service ignores or "
            "refuses it); sent, the service decides (first on line 9)"
        )
        (message,) = _warnings("gemini", 0, model_name="gemini-2.0-flash", **{field: value})
        assert message.endswith("sent, the service decides")
    # force_web_search without web_search is not refused on gemini: no such documented rule.
    assert len(_warnings("gemini", model_name="gemini-2.0-flash", force_web_search=True)) == 1


def test_an_unknown_model_is_sent_with_a_warning_naming_the_list_and_the_line() -> None:
    for source, words in (
        ("service", "from the service"),
        ("cache", "cached from the service"),
        ("built-in", "built-in table"),
    ):
        rules, messages = _rules("chat_gpt", source)
        rules.check(Task(user_prompt="q", model_name="gpt-4.2"), 5)
        rules.check(Task(user_prompt="q", model_name="gpt-4.2"), 6)
        assert messages == [
            f"model 'gpt-4.2' is not in the chat_gpt models list ({words}); closest: gpt-4.1, "
            "gpt-5, gpt-4.1-nano; "
            "sent, the service decides (first on line 5)"
        ]
        assert rules.warned == {"unknown model gpt-4.2": 2}
    rules, messages = _rules("chat_gpt")
    rules.check(Task(user_prompt="q", model_name="zzzzzzzz"))
    assert messages == [
        "model 'zzzzzzzz' is not in the chat_gpt models list (from the service); sent, the "
        "service decides"
    ]


def test_a_model_the_services_list_marks_not_for_task_post_is_refused() -> None:
    listed = (_m("o1-pro", True, post=False),)
    rules = TaskRules("chat_gpt", ModelList("chat_gpt", listed, "service"))
    with pytest.raises(TaskRuleError) as info:
        rules.check(Task(user_prompt="q", model_name="o1-pro"))
    assert (info.value.field, info.value.reason) == (
        "model_name",
        "model 'o1-pro' (o1-pro) does not support task_post on chat_gpt",
    )
    messages: list[str] = []
    table = ModelList("chat_gpt", (*listed, _m("o3-pro", True, post=False)), "built-in")
    offline = TaskRules("chat_gpt", table, warn=messages.append)
    offline.check(Task(user_prompt="q", model_name="o1-pro"), 2)
    offline.check(Task(user_prompt="q", model_name="o1-pro"), 3)
    offline.check(Task(user_prompt="q", model_name="o3-pro"), 4)
    # One warning per model, the first line of each.
    assert messages == [
        "model 'o1-pro' (o1-pro) does not support task_post according to the built-in table; "
        "sent, the service decides (first on line 2)",
        "model 'o3-pro' (o3-pro) does not support task_post according to the built-in table; "
        "sent, the service decides (first on line 4)",
    ]
    assert sum(offline.warned.values()) == 3


def test_a_model_looked_up_outside_a_line_names_no_line() -> None:
    rules, messages = _rules("chat_gpt")
    assert rules.model("gpt-4.2") is None
    assert messages[0].endswith("; sent, the service decides")


def test_warnings_go_to_the_llmtasks_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    rules = TaskRules("gemini")
    with caplog.at_level(logging.WARNING, logger="llmtasks"):
        rules.check(Task(user_prompt="q", model_name="gemini-2.0-flash", web_search_city="Rome"))
    assert [r.name for r in caplog.records] == ["llmtasks"]
    assert "web_search_city is not documented for gemini" in caplog.records[0].getMessage()


# --- what holds on every engine: the Task struct and its errors --------------------------


def _why(raw: str, *, strict: bool = True) -> tuple[str, str]:
    """The (field, reason) a line gets for ``raw``."""
    try:
        decode_task(raw, strict=strict)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        return explain(err)
    raise AssertionError(f"{raw} was accepted")


def _ok(raw: str, *, strict: bool = True) -> Task:
    return decode_task(raw, strict=strict)


@pytest.mark.parametrize(
    ("field", "longest"),
    [("user_prompt", 500), ("system_message", 500), ("tag", 255)],
)
def test_text_fields_have_their_documented_length(field: str, longest: int) -> None:
    assert getattr(_ok(f'{{"{field}": "{"é" * longest}"}}'), field) == "é" * longest
    got = _why(f'{{"{field}": "{"x" * (longest + 1)}"}}')
    assert got == (field, f"Expected `str` of length <= {longest}")


def test_message_chain_is_at_most_10_user_or_ai_messages_of_500() -> None:
    item = '{"role": "user", "message": "m"}'
    chain = _ok('{"message_chain": [' + ", ".join([item] * 10) + "]}").message_chain
    assert chain is not None and len(chain) == 10 and chain[0] == ChainMessage("user", "m")
    assert _ok('{"message_chain": [{"role": "ai", "message": "%s"}]}' % ("m" * 500))
    assert _why('{"message_chain": [' + ", ".join([item] * 11) + "]}") == (
        "message_chain",
        "Expected `array` of length <= 10",
    )
    field, _ = _why('{"message_chain": [{"role": "system", "message": "m"}]}')
    assert field == "message_chain[0].role"
    field, _ = _why('{"message_chain": [{"role": "ai", "message": "%s"}]}' % ("m" * 501))
    assert field == "message_chain[0].message"
    assert _why('{"message_chain": [{"role": "ai", "message": "m", "x": 1}]}') == (
        "x",
        "unknown field",
    )


@pytest.mark.parametrize(
    ("field", "low", "high", "inside"),
    [("max_output_tokens", 1, 4096, 100), ("temperature", 0.0, 2.0, 1.5), ("top_p", 0.0, 1.0, 0.5)],
)
def test_numbers_have_the_widest_documented_range(
    field: str, low: float, high: float, inside: float
) -> None:
    for value in (low, inside, high):
        assert getattr(_ok(f'{{"{field}": {value}}}'), field) == value
    assert _why(f'{{"{field}": {low - 1}}}') == (field, f"Expected `{_kind(field)}` >= {low}")
    assert _why(f'{{"{field}": {high + 1}}}') == (field, f"Expected `{_kind(field)}` <= {high}")


def _kind(field: str) -> str:
    return "int" if field == "max_output_tokens" else "float"


def test_unknown_fields_are_refused_from_input_and_kept_out_otherwise() -> None:
    assert _why('{"user_prompt": "q", "temprature": 1}') == ("temprature", "unknown field")
    loose = _ok('{"user_prompt": "q", "temprature": 1}', strict=False)
    assert loose == Task(user_prompt="q")
    assert type(_ok('{"user_prompt": "q"}')) is StrictTask
    # Both decoders are kept, each for its own kind.
    assert type(_ok('{"user_prompt": "q"}', strict=False)) is Task
    assert type(_ok('{"user_prompt": "q"}')) is StrictTask


def test_errors_name_the_field_and_the_reason() -> None:
    assert _why('{"web_search": "yes"}') == ("web_search", "Expected `bool | null`, got `str`")
    assert _why("[1]") == ("", "Expected `object`, got `array`")
    field, reason = _why('{"user_prompt": ')
    assert field == "" and reason.startswith("Input data was truncated")
    # A rule raised while decoding names its own field.
    try:
        raise msgspec.ValidationError("x") from TaskRuleError("tag", "is bad")
    except msgspec.ValidationError as err:
        assert explain(err) == ("tag", "is bad")
    assert explain(msgspec.ValidationError("Object missing required field `role`")) == (
        "role",
        "is required",
    )
    assert explain(msgspec.ValidationError("temperature: must be small")) == (
        "temperature",
        "must be small",
    )
    assert explain(msgspec.ValidationError("not a field: whatever")) == (
        "",
        "not a field: whatever",
    )
    # Only the first ": " separates the field from the reason.
    assert explain(msgspec.ValidationError("top_p: must be 0..1: see the docs")) == (
        "top_p",
        "must be 0..1: see the docs",
    )


def test_input_is_strict_unless_asked_otherwise_from_the_first_call() -> None:
    # A fresh process has no decoder yet: the first call of each kind builds the right one.
    task_module._decoders.clear()
    assert type(decode_task(b'{"user_prompt": "q"}', strict=False)) is Task
    task_module._decoders.clear()
    assert type(decode_task('{"user_prompt": "q"}')) is StrictTask
    with pytest.raises(msgspec.ValidationError, match="unknown field `x`"):
        decode_task('{"user_prompt": "q", "x": 1}')
    assert type(decode_task(b'{"user_prompt": "q"}', strict=False)) is Task


def test_the_engine_free_check_of_the_required_fields() -> None:
    check_rules(Task(), require_model=False)
    check_rules(Task(user_prompt="q", model_name="m"), require_model=True)
    for task, field in (
        (Task(model_name="m"), "user_prompt"),
        (Task(user_prompt="", model_name="m"), "user_prompt"),
        (Task(user_prompt="q"), "model_name"),
        (Task(user_prompt="q", model_name=""), "model_name"),
    ):
        with pytest.raises(TaskRuleError) as info:
            check_rules(task, require_model=True)
        assert (info.value.field, info.value.reason) == (field, "is required")
    # Without require_model the engine-free check asks nothing (an engine's rules do).
    check_rules(Task())


def test_the_documented_engines_and_batch_size() -> None:
    # The three engines of the task method (perplexity has only live); 100 tasks per POST.
    assert ENGINES == ("chat_gpt", "claude", "gemini")
    assert MAX_TASKS_PER_POST == 100
