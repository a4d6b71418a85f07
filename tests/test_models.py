"""models: the CLI table and JSON, every engine, and the per-run catalogue behind warnings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llmtasks._models import ModelCatalog, ModelInfo, base_name, model_warning
from llmtasks._transport import Transport
from llmtasks.emulator import CATALOGUE, Emulator
from tests.conftest import run_cli


@pytest.mark.parametrize("engine", ["chat_gpt", "claude", "gemini"])
def test_models_json_is_the_endpoint_list(emulator: Any, engine: str) -> None:
    emu = emulator()
    result = run_cli("models", "--engine", engine, "--json", "--base-url", emu.url)
    assert result.returncode == 0, result.stderr
    models = orjson.loads(result.stdout)
    assert models == [
        {
            "model_name": m.model_name,
            "web_search_supported": m.web_search_supported,
            "task_post_supported": m.task_post_supported,
        }
        for m in CATALOGUE[engine]
    ]
    assert any(not m["task_post_supported"] for m in models)


def test_models_table(emulator: Any) -> None:
    emu = emulator()
    result = run_cli("models", "--engine", "claude", "--base-url", emu.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"claude: {len(CATALOGUE['claude'])} models"
    assert lines[1].split() == ["model_name", "web_search", "task_post"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["claude-sonnet-4-20250514"] == ["yes", "yes"]
    assert rows["claude-3-haiku-20240307"] == ["no", "no"]
    default = run_cli("models", "--base-url", emu.url)
    assert default.stdout.startswith(f"chat_gpt: {len(CATALOGUE['chat_gpt'])} models")


def test_models_errors(emulator: Any) -> None:
    emu = emulator()
    bad = run_cli("models", "--engine", "perplexity", "--base-url", emu.url)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    from tests.conftest import cli_env

    wrong = cli_env(DATAFORSEO_PASSWORD="wrong")
    refused = run_cli("models", "--base-url", emu.url, env=wrong)
    assert refused.returncode == 2 and "refused the credentials" in refused.stderr


def test_model_warnings_know_base_names_aliases_and_task_post_support() -> None:
    models = [
        ModelInfo(
            model_name=m.model_name,
            web_search_supported=m.web_search_supported,
            task_post_supported=m.task_post_supported,
        )
        for m in CATALOGUE["chat_gpt"]
    ]
    assert model_warning(models, "chat_gpt", "gpt-4.1") is None
    assert model_warning(models, "chat_gpt", "gpt-4.1-mini-2025-04-14") is None
    assert model_warning(models, "chat_gpt", "o3") is None
    assert "not in the chat_gpt models list" in (model_warning(models, "chat_gpt", "gpt-9") or "")
    assert "does not support task_post" in (model_warning(models, "chat_gpt", "o1-pro") or "")
    assert base_name("claude-sonnet-4-0") == base_name("claude-sonnet-4-20250514")
    assert base_name("gpt-4.1-2025-04-14") == "gpt-4.1"


async def test_catalogue_fetches_each_engine_once_per_run() -> None:
    async with Emulator() as emu:
        async with Transport(base_url=emu.base_url, login="login", password="password") as t:
            catalog = ModelCatalog(t)
            assert await catalog.check("claude", "claude-sonnet-4-0") is None
            assert await catalog.check("claude", "claude-3-haiku") is not None
            assert await catalog.check("gemini", "gemini-2.5-flash") is None
        paths = [c.path for c in emu.calls]
        assert paths == [
            "/v3/ai_optimization/claude/llm_responses/models",
            "/v3/ai_optimization/gemini/llm_responses/models",
        ]
