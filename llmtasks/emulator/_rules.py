"""The emulator's task rules, per engine, written from the 2026 docs digest on their own.

The emulator is the judge the client is tested against, so nothing here comes from the
client's validation: a client rule that disagrees with the docs must show up as a failing
test, which it cannot if both sides share one definition. ``judge`` decides one task: the
dated model it runs on, or the refusal the service documents (40501 invalid field, 40503
invalid POST data, 40506 unknown field) with a message naming the field.

Where the docs are unsettled the emulator follows ``Policy`` (lenient by default: accept);
see docs/emulator.md.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from llmtasks.emulator._models import Family

INVALID_FIELD: Final = 40501
INVALID_POST: Final = 40503
UNKNOWN_FIELDS: Final = 40506
MAX_TASKS_PER_POST: Final = 100
TEXT_MAX: Final = 500
TAG_MAX: Final = 255
CHAIN_MAX: Final = 10
TOKENS_MAX: Final = 4096

Refusal = tuple[int, str]
Choice = Literal["accept", "refuse"]

_CLAUDE_CODES: Final = (
    "AR AT AU BE BR CA CH CL CN DE DK ES FI FR GB HK ID IN IT JP KR MX MY NL NO NZ PH PL PT "
    "RU SA SE TR TW US ZA"
)
CLAUDE_COUNTRIES: Final = frozenset(_CLAUDE_CODES.split(" "))


class WireTask(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Every field any engine documents, untyped: ``judge`` checks types so that it can name
    the field. ``None`` is "not set" (JSON null or absent); unset fields are not echoed."""

    user_prompt: Any = None
    model_name: Any = None
    max_output_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    use_reasoning: Any = None
    system_message: Any = None
    message_chain: Any = None
    web_search: Any = None
    force_web_search: Any = None
    web_search_country_iso_code: Any = None
    web_search_city: Any = None
    tag: Any = None
    postback_url: Any = None
    pingback_url: Any = None


FIELDS: Final = frozenset(WireTask.__struct_fields__)


class EngineRules(msgspec.Struct, frozen=True):
    """One column of the digest's table."""

    tokens: tuple[int, int]  # max_output_tokens without reasoning
    reasoning_tokens: tuple[int, int]  # ... when reasoning is in effect
    temperature_max: float
    temperature_when_reasoning: bool
    top_p_when_reasoning: bool
    has_use_reasoning: bool  # claude/gemini: reasoning is asked for; chat_gpt: the model's flag
    # False for gemini: the docs list no force_web_search / country / city there (unsettled).
    has_search_options: bool
    countries: frozenset[str] | None  # None: any two-letter ISO code
    sampling_together_unsettled: bool  # temperature with top_p: docs contradict themselves


RULES: Final[dict[str, EngineRules]] = {
    "chat_gpt": EngineRules(
        tokens=(16, TOKENS_MAX),
        reasoning_tokens=(1024, TOKENS_MAX),
        temperature_max=2.0,
        temperature_when_reasoning=False,
        top_p_when_reasoning=True,
        has_use_reasoning=False,
        has_search_options=True,
        countries=None,
        sampling_together_unsettled=True,
    ),
    "claude": EngineRules(
        tokens=(1, TOKENS_MAX),
        reasoning_tokens=(1025, TOKENS_MAX),
        temperature_max=1.0,
        temperature_when_reasoning=False,
        top_p_when_reasoning=False,
        has_use_reasoning=True,
        has_search_options=True,
        countries=CLAUDE_COUNTRIES,
        sampling_together_unsettled=True,
    ),
    "gemini": EngineRules(
        tokens=(1, TOKENS_MAX),
        reasoning_tokens=(1024, TOKENS_MAX),
        temperature_max=2.0,
        temperature_when_reasoning=True,
        top_p_when_reasoning=True,
        has_use_reasoning=True,
        has_search_options=False,
        countries=None,
        sampling_together_unsettled=False,
    ),
}

SEARCH_OPTIONS: Final = ("force_web_search", "web_search_country_iso_code", "web_search_city")


class Policy(msgspec.Struct, frozen=True):
    """What the emulator does where the docs are unsettled."""

    sampling_together: Choice = "accept"  # chat_gpt/claude: temperature and top_p together
    gemini_search_options: Choice = "accept"  # gemini: force_web_search, country, city


def invalid(field: str, reason: str) -> Refusal:
    return INVALID_FIELD, f"Invalid Field: '{field}'. {reason}"


def unknown(fields: list[str]) -> Refusal:
    names = ", ".join(f"'{f}'" for f in fields)
    return UNKNOWN_FIELDS, f"Unknown Fields in POST Data: {names}."


def _is_int(value: Any) -> bool:
    # JSON has one number type: 512.0 is the integer 512 to a JSON service.
    cls = type(value)
    return cls is int or (cls is float and value.is_integer())


def _is_number(value: Any) -> bool:
    cls = type(value)
    return cls is int or cls is float


def _text(field: str, value: Any, limit: int) -> Refusal | None:
    if type(value) is not str:
        return invalid(field, "must be a string")
    if len(value) > limit:
        return invalid(field, f"must be at most {limit} characters, got {len(value)}")
    return None


def unknown_fields(engine: str, fields: dict[str, Any], policy: Policy) -> list[str]:
    """Names set (not null) in a task that this engine does not have."""
    rules = RULES[engine]
    out = [k for k, v in fields.items() if v is not None and k not in FIELDS]
    if not rules.has_use_reasoning and fields.get("use_reasoning") is not None:
        out.append("use_reasoning")
    if not rules.has_search_options and policy.gemini_search_options == "refuse":
        out += [k for k in SEARCH_OPTIONS if fields.get(k) is not None]
    return out


def judge(
    engine: str, task: WireTask, models: dict[str, Family], policy: Policy
) -> Family | Refusal:
    """The family ``task`` runs on, or why the service refuses it.

    Assumes ``task`` came through ``WireTask`` (no names outside FIELDS); fields that exist
    on another engine only are checked here.
    """
    rules = RULES[engine]
    if task.use_reasoning is not None and not rules.has_use_reasoning:
        return unknown(["use_reasoning"])
    if not rules.has_search_options and policy.gemini_search_options == "refuse":
        extra = [k for k in SEARCH_OPTIONS if getattr(task, k) is not None]
        if extra:
            return unknown(extra)

    # Checks are written inline and in this order because they run for every task posted.
    prompt = task.user_prompt
    if prompt is None or prompt == "":
        return invalid("user_prompt", "is required")
    if type(prompt) is not str or len(prompt) > TEXT_MAX:
        return _text("user_prompt", prompt, TEXT_MAX) or invalid("user_prompt", "is invalid")
    name = task.model_name
    if name is None or name == "":
        return invalid("model_name", "is required")
    if type(name) is not str:
        return invalid("model_name", "must be a string")
    family = models.get(name)
    if family is None:
        return invalid("model_name", f"unknown model '{name}' for {engine}")
    if not family.task_post:
        return invalid("model_name", f"model '{name}' is not supported by task_post")

    # The fast return: the common task sets nothing else that has rules between fields.
    if (
        task.max_output_tokens is None
        and task.temperature is None
        and task.top_p is None
        and task.use_reasoning is None
        and task.message_chain is None
        and task.web_search is None
        and task.force_web_search is None
        and task.web_search_country_iso_code is None
        and task.web_search_city is None
    ):
        return _plain_fields(task) or family

    use_reasoning = task.use_reasoning
    if use_reasoning is not None:
        if type(use_reasoning) is not bool:
            return invalid("use_reasoning", "must be a boolean")
        if use_reasoning and not family.reasoning:
            return invalid("use_reasoning", f"model '{name}' is not a reasoning model")
    # chat_gpt: the model's flag; claude/gemini: what the task asks for.
    reasoning = bool(use_reasoning) if rules.has_use_reasoning else family.reasoning

    tokens = task.max_output_tokens
    if tokens is not None:
        if not _is_int(tokens):
            return invalid("max_output_tokens", "must be an integer")
        lo, hi = rules.reasoning_tokens if reasoning else rules.tokens
        if not lo <= tokens <= hi:
            where = _why(rules, name) if reasoning else f"for model '{name}'"
            return invalid("max_output_tokens", f"must be {lo}..{hi} {where}")

    temperature = task.temperature
    if temperature is not None:
        if not _is_number(temperature):
            return invalid("temperature", "must be a number")
        if reasoning and not rules.temperature_when_reasoning:
            return invalid("temperature", f"is not supported {_why(rules, name)}")
        if not 0 <= temperature <= rules.temperature_max:
            return invalid("temperature", f"must be 0..{rules.temperature_max:g}")
    top_p = task.top_p
    if top_p is not None:
        if not _is_number(top_p):
            return invalid("top_p", "must be a number")
        if reasoning and not rules.top_p_when_reasoning:
            return invalid("top_p", f"is not supported {_why(rules, name)}")
        if not 0 <= top_p <= 1:
            return invalid("top_p", "must be 0..1")
        if (
            temperature is not None
            and rules.sampling_together_unsettled
            and policy.sampling_together == "refuse"
        ):
            return invalid("top_p", "cannot be used together with temperature")

    bad = _plain_fields(task)
    if bad:
        return bad
    if task.message_chain is not None:
        bad = _chain(task.message_chain)
        if bad:
            return bad
    if (
        task.web_search is None
        and task.force_web_search is None
        and task.web_search_country_iso_code is None
        and task.web_search_city is None
    ):
        return family
    return _search(task, rules, family, reasoning, _why(rules, name)) or family


def _why(rules: EngineRules, name: str) -> str:
    return "with use_reasoning" if rules.has_use_reasoning else f"on reasoning model '{name}'"


def _plain_fields(task: WireTask) -> Refusal | None:
    """system_message, tag and the push URLs: types and lengths, no rules between fields."""
    system, tag, postback, pingback = (
        task.system_message,
        task.tag,
        task.postback_url,
        task.pingback_url,
    )
    if system is not None and (type(system) is not str or len(system) > TEXT_MAX):
        return _text("system_message", system, TEXT_MAX)
    if tag is not None and (type(tag) is not str or len(tag) > TAG_MAX):
        return _text("tag", tag, TAG_MAX)
    if postback is not None and type(postback) is not str:
        return invalid("postback_url", "must be a string")
    if pingback is not None and type(pingback) is not str:
        return invalid("pingback_url", "must be a string")
    return None


def _chain(chain: Any) -> Refusal | None:
    if chain is None:
        return None
    if type(chain) is not list:
        return invalid("message_chain", "must be an array")
    if len(chain) > CHAIN_MAX:
        return invalid("message_chain", f"must have at most {CHAIN_MAX} items, got {len(chain)}")
    for i, item in enumerate(chain):
        at = f"message_chain[{i}]"
        if type(item) is not dict:
            return invalid(at, "must be an object")
        extra = sorted(set(item) - {"role", "message"})
        if extra:
            return invalid(f"{at}.{extra[0]}", "unknown field")
        role = item.get("role")
        if role is None:
            return invalid(f"{at}.role", "is required")
        if role not in ("user", "ai") or type(role) is not str:
            return invalid(f"{at}.role", "must be 'user' or 'ai'")
        message = item.get("message")
        if message is None:
            return invalid(f"{at}.message", "is required")
        bad = _text(f"{at}.message", message, TEXT_MAX)
        if bad:
            return bad
    return None


def _search(
    task: WireTask, rules: EngineRules, family: Family, reasoning: bool, why: str
) -> Refusal | None:
    web = task.web_search
    if web is not None:
        if type(web) is not bool:
            return invalid("web_search", "must be a boolean")
        if web and not family.web_search:
            return invalid("web_search", f"is not supported by model '{family.dated}'")
    force = task.force_web_search
    country = task.web_search_country_iso_code
    city = task.web_search_city
    if force is not None and type(force) is not bool:
        return invalid("force_web_search", "must be a boolean")
    if country is not None and type(country) is not str:
        return invalid("web_search_country_iso_code", "must be a string")
    if city is not None and type(city) is not str:
        return invalid("web_search_city", "must be a string")
    if not rules.has_search_options:
        return None  # gemini: not documented there; accepted as sent (Policy decides)
    if force:
        if not web:
            return invalid("force_web_search", "needs web_search: true")
        if reasoning:
            return invalid("force_web_search", f"is not supported {why}")
    if country is not None:
        if not web:
            return invalid("web_search_country_iso_code", "needs web_search: true")
        allowed = rules.countries
        code = country.upper()
        if allowed is not None and code not in allowed:
            return invalid(
                "web_search_country_iso_code", f"'{country}' is not one of the supported codes"
            )
        if allowed is None and not (len(code) == 2 and code.isascii() and code.isalpha()):
            return invalid("web_search_country_iso_code", "must be a two-letter ISO code")
    return None


def reasons(engine: str, family: Family, data: dict[str, Any]) -> bool:
    """Whether a created task used reasoning (so its result has reasoning items)."""
    if not RULES[engine].has_use_reasoning:
        return family.reasoning
    return data.get("use_reasoning") is True or family.always_reasons
