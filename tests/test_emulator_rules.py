"""The emulator judges tasks by the 2026 table (tests/rules_2026.py), per engine, over HTTP.

Every case of the table is posted to a real emulator on 127.0.0.1. The emulator's rules are
its own (llmtasks/emulator/_rules.py): nothing of the client's validation is imported.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks.emulator import Emulator, EmulatorConfig
from tests.rules_2026 import CASES, ENGINES, MODELS, PLAIN, Case, case_id

AUTH = {"Authorization": aiohttp.encode_basic_auth("login", "password")}
LLM = "/v3/ai_optimization/{se}/llm_responses"
OK_TASK = {se: {"user_prompt": "fine", "model_name": PLAIN[se]} for se in ENGINES}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=3)) as e:
        yield e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


async def post(
    http: aiohttp.ClientSession, emu: Emulator, se: str, body: list[Any]
) -> list[dict[str, Any]]:
    async with http.post(emu.base_url + LLM.format(se=se) + "/task_post", json=body) as resp:
        assert resp.status == 200
        reply = orjson.loads(await resp.read())
    assert reply["status_code"] == 20000
    tasks: list[dict[str, Any]] = reply["tasks"]
    return tasks


def blamed(message: str) -> str:
    """The field a refusal names: the first quoted name."""
    return message.split("'")[1]


def names(field: str, named: str) -> bool:
    return named == field or named.startswith((field + "[", field + "."))


def check(case: Case, task: dict[str, Any]) -> None:
    if case.expected in ("accept", "unsettled"):
        # Unsettled: the emulator's documented default is to accept (docs/emulator.md).
        assert task["status_code"] == 20100, task["status_message"]
        assert task["cost"] > 0
    else:
        assert case.expected == "refuse"
        assert (task["status_code"], task["cost"]) == (case.code, 0.0), task["status_message"]
        assert case.field is not None
        assert names(case.field, blamed(task["status_message"])), task["status_message"]


@pytest.mark.parametrize("case", CASES, ids=[case_id(i, c) for i, c in enumerate(CASES)])
async def test_the_2026_table(emu: Emulator, http: aiohttp.ClientSession, case: Case) -> None:
    first, second = await post(http, emu, case.engine, [case.task, OK_TASK[case.engine]])
    check(case, first)
    assert second["status_code"] == 20100  # a bad neighbour does not spoil a good task
    # The data echo is the task as sent, nulls left out.
    sent = {k: v for k, v in case.task.items() if v is not None}
    assert {k: v for k, v in first["data"].items() if k not in ("api", "function", "se")} == sent


@pytest.mark.parametrize("se", ENGINES)
async def test_a_whole_batch_is_judged_as_each_task_alone(
    emu: Emulator, http: aiohttp.ClientSession, se: str
) -> None:
    """Bodies of plain task objects take a fast decoding path, others a slow one (an unknown
    field, a non-object element): both give every task the same verdict."""
    cases = [c for c in CASES if c.engine == se]
    for start in range(0, len(cases), 99):
        chunk = cases[start : start + 99]
        for tail in ([], ["not an object"]):
            tasks = await post(http, emu, se, [c.task for c in chunk] + tail)
            for case, task in zip(chunk, tasks, strict=False):
                check(case, task)
            if tail:
                assert tasks[-1]["status_code"] == 40503


@pytest.mark.parametrize("se", ENGINES)
async def test_the_models_endpoint_agrees_with_the_table(
    emu: Emulator, http: aiohttp.ClientSession, se: str
) -> None:
    async with http.get(emu.base_url + LLM.format(se=se) + "/models") as resp:
        listed = orjson.loads(await resp.read())["tasks"][0]["result"]
    facts = {
        m["model_name"]: (m["reasoning"], m["web_search_supported"], m["task_post_supported"])
        for m in listed
    }
    for name, fact in MODELS[se].items():
        assert facts.get(name) == fact, name
    assert any(not post for _, _, post in facts.values())
    assert any(reasoning for reasoning, _, _ in facts.values())


async def test_strict_choices_for_what_the_docs_leave_unsettled(
    http: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(sampling_together="refuse", gemini_search_options="refuse")
    both = {"temperature": 0.5, "top_p": 0.5}
    async with Emulator(config) as emu:
        for se in ("chat_gpt", "claude"):
            [task] = await post(http, emu, se, [{**OK_TASK[se], **both}])
            assert task["status_code"] == 40501 and blamed(task["status_message"]) == "top_p"
        [task] = await post(http, emu, "gemini", [{**OK_TASK["gemini"], **both}])
        assert task["status_code"] == 20100  # no such rule on gemini
        extras = {"web_search": True, "force_web_search": True, "web_search_city": "Paris"}
        [task] = await post(http, emu, "gemini", [{**OK_TASK["gemini"], **extras}])
        assert task["status_code"] == 40506
        assert "'force_web_search'" in task["status_message"]
        assert "'web_search_city'" in task["status_message"]
        emu.reconfigure(sampling_together="accept", gemini_search_options="accept")
        [task] = await post(http, emu, "gemini", [{**OK_TASK["gemini"], **extras}])
        assert task["status_code"] == 20100


async def test_a_whole_number_float_is_an_integer(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    task = {**OK_TASK["chat_gpt"], "max_output_tokens": 512.0}
    ok, low = await post(http, emu, "chat_gpt", [task, {**task, "max_output_tokens": 15.0}])
    assert ok["status_code"] == 20100
    assert ok["data"]["max_output_tokens"] == 512.0
    assert low["status_code"] == 40501 and blamed(low["status_message"]) == "max_output_tokens"
    [boolean] = await post(http, emu, "chat_gpt", [{**task, "max_output_tokens": True}])
    assert boolean["status_code"] == 40501


FORBIDDEN = (
    "llmtasks._task",
    "llmtasks._input",
    "llmtasks._decode",
    "llmtasks._explain",
    "llmtasks._rules",
    "llmtasks._models",
)


def test_the_emulator_imports_none_of_the_clients_validation() -> None:
    package = Path(__file__).resolve().parent.parent / "llmtasks" / "emulator"
    imported: set[str] = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert imported  # the walk saw the package
    bad = sorted(m for m in imported if m.startswith(FORBIDDEN) or m in ("llmtasks", "llmtasks.*"))
    assert bad == []


async def test_nesting_too_deep_is_invalid_post_data(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path, body in (
        (
            "/v3/ai_optimization/chat_gpt/llm_responses/task_post",
            b'[{"user_prompt": "x", "model_name": "gpt-4o", "temperature": ' + deep + b"}]",
        ),
        ("/v3/ai_optimization/id_list", b'[{"datetime_from": ' + deep + b"}]"),
    ):
        async with http.post(emu.base_url + path, data=body) as resp:
            assert resp.status == 200
            reply = orjson.loads(await resp.read())
        assert reply["status_code"] == 40503 and reply["tasks"] is None
    [task] = await post(http, emu, "chat_gpt", [OK_TASK["chat_gpt"]])
    assert task["status_code"] == 20100 and len(emu.created) == 1
