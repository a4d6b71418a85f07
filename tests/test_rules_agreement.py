"""The client's validation and the emulator's judgement, fed the same cases, must agree.

Two tables were written from the docs digest on their own: ``tests/rules_2026.py`` (for the
emulator) and ``tests/test_rules.py`` (for the client). Every case of both goes to the
client's ``read_lines`` with that engine's rules and models list (fetched from the running
emulator, as a run does), and to the emulator over HTTP. A disagreement is one of:

- the client refuses a task the service accepts: paid work lost before it was sent;
- the client sends a task the service refuses without a warning: a line that looked valid
  comes back failed.

A warning from the client agrees with either verdict: that is what "unsettled" means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks._input import read_lines
from llmtasks._models import load_models
from llmtasks._rules import TaskRules
from llmtasks._transport import Transport
from llmtasks.emulator import DEFAULT_LOGIN, DEFAULT_PASSWORD, Emulator, EmulatorConfig
from tests import rules_2026, test_rules

ENGINES = ("chat_gpt", "claude", "gemini")


def _all_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [(c.engine, c.task) for c in rules_2026.CASES]
    cases += [(engine, {"user_prompt": "q", **fields}) for engine, fields, _ in test_rules.CASES]
    return cases


async def _client_verdicts(
    emu: Emulator, cases: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> list[str]:
    verdicts: list[str] = []
    async with Transport(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password=DEFAULT_PASSWORD, allow_insecure=True
    ) as transport:
        models = {se: await load_models(transport, se) for se in ENGINES}
    for se in ENGINES:
        assert models[se].source == "service", models[se].note
    for i, (engine, task) in enumerate(cases):
        path = tmp_path / f"case-{i}.jsonl"
        path.write_bytes(orjson.dumps(task) + b"\n")
        rules = TaskRules(engine, models[engine], warn=lambda _message: None)
        (line,) = read_lines(str(path), engine=engine, rules=rules)
        if line.task is None:
            verdicts.append(f"refuse {line.field}: {line.reason}")
        elif rules.warned:
            verdicts.append("warn " + ",".join(rules.warned))
        else:
            verdicts.append("accept")
    return verdicts


async def _service_verdicts(
    emu: Emulator, cases: list[tuple[str, dict[str, Any]]]
) -> list[tuple[int, str]]:
    auth = {"Authorization": aiohttp.encode_basic_auth(DEFAULT_LOGIN, DEFAULT_PASSWORD)}
    verdicts: list[tuple[int, str]] = []
    async with aiohttp.ClientSession(headers=auth) as http:
        for engine, task in cases:
            url = f"{emu.base_url}/v3/ai_optimization/{engine}/llm_responses/task_post"
            async with http.post(url, data=orjson.dumps([task])) as resp:
                assert resp.status == 200
                reply = orjson.loads(await resp.read())
            (answer,) = reply["tasks"]
            verdicts.append((answer["status_code"], answer["status_message"]))
    return verdicts


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=11)) as e:
        yield e


async def test_client_and_emulator_agree_on_every_case(emu: Emulator, tmp_path: Path) -> None:
    cases = _all_cases()
    assert len(cases) > 300  # both tables, every engine
    client = await _client_verdicts(emu, cases, tmp_path)
    service = await _service_verdicts(emu, cases)
    disagreements = []
    for (engine, task), mine, (code, message) in zip(cases, client, service, strict=True):
        if mine.startswith("warn"):
            continue
        if mine == "accept" and code != 20100:
            disagreements.append(f"{engine} {task}: sent, but the service says {code} {message}")
        if mine.startswith("refuse") and code == 20100:
            disagreements.append(f"{engine} {task}: refused locally ({mine}), service accepts")
    assert disagreements == [], "\n".join(disagreements)
    # The test would see a disagreement: both sides refuse something and accept something.
    assert any(v.startswith("refuse") for v in client) and "accept" in client
    assert any(code != 20100 for code, _ in service) and any(c == 20100 for c, _ in service)
