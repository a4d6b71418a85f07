"""models: the CLI table and JSON, every engine, and the per-run catalogue behind warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks._errors import ServiceError
from llmtasks._models import (
    ModelCatalog,
    ModelInfo,
    base_name,
    fetch_models,
    load_models,
    model_warning,
)
from llmtasks._throttle import RetryPolicy
from llmtasks._transport import MemoryTransport, Reply, Transport, classify
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
            # The emulator's catalogue gains its reasoning flags in issue 12's other half.
            "reasoning": getattr(m, "reasoning", None),
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
    assert lines[1].split() == ["model_name", "reasoning", "web_search", "task_post"]
    rows = {line.split()[0]: line.split()[2:] for line in lines[2:]}
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


async def test_models_list_is_cached_a_day_per_service_and_engine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    async with Emulator() as emu:
        async with Transport(base_url=emu.base_url, login="login", password="password") as t:
            first = await load_models(t, "claude", cache_dir=cache)
            again = await load_models(t, "claude", cache_dir=cache)
            other = await load_models(t, "gemini", cache_dir=cache)
            stale = await load_models(t, "claude", cache_dir=cache, max_age_s=0)
        paths = [c.path for c in emu.calls]
    assert (first.source, again.source, other.source, stale.source) == (
        "service",
        "cache",
        "service",
        "service",
    )
    assert again.models == first.models
    assert paths == [
        "/v3/ai_optimization/claude/llm_responses/models",
        "/v3/ai_optimization/gemini/llm_responses/models",
        "/v3/ai_optimization/claude/llm_responses/models",
    ]
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(f.startswith("models-") for f in files)
    for f in cache.iterdir():
        text = f.read_text()
        assert "password" not in text and "login" not in text
    # Another service (another port): its own entry, never the first one's list.
    async with Emulator() as emu2:
        t2 = Transport(base_url=emu2.base_url, login="login", password="password")
        async with t2:
            assert (await load_models(t2, "claude", cache_dir=cache)).source == "service"


async def test_models_list_falls_back_to_the_built_in_table(tmp_path: Path) -> None:
    assert (await load_models(None, "chat_gpt")).source == "built-in"
    async with Emulator() as emu:
        base = emu.base_url
    # The emulator is gone: the call cannot connect.
    async with Transport(base_url=base, login="login", password="password", timeout_s=2) as t:
        got = await load_models(t, "gemini", cache_dir=tmp_path)
    assert got.source == "built-in" and "cannot connect" in got.note
    assert any(m.model_name == "gemini-2.5-pro" and m.reasoning for m in got.models)


def test_a_run_says_when_it_checked_against_the_built_in_table(
    emulator: Any, tmp_path: Path
) -> None:
    emu = emulator("--fail-rate", "1.0")  # every call answers 500: no models list
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"user_prompt": "q", "model_name": "gpt-4.1"}\n')
    r = run_cli("submit", str(src), "--base-url", emu.url, "--no-preflight", "--max-attempts", "1")
    assert "models checked against the built-in chat_gpt table" in r.stderr, r.stderr


async def test_models_call_is_retried_in_a_slot_that_hears_each_reply() -> None:
    """The models GET goes through the one retry loop: a lost reply and a 40202 are asked
    again (at most three attempts in all), each attempt in a throttle slot whose throttle
    is told what came back; then the built-in table stands in."""
    from tests.test_client import Recorder

    emu_list = orjson.dumps(
        {
            "status_code": 20000,
            "tasks": [
                {
                    "status_code": 20000,
                    "status_message": "Ok.",
                    "result": [
                        {
                            "model_name": "claude-x-1",
                            "reasoning": False,
                            "web_search_supported": True,
                            "task_post_supported": True,
                        }
                    ],
                }
            ],
        }
    )
    lost = Reply("unknown", None, None, "connection lost")
    limited = Reply("retry", 200, 40202, "Rate-limit exceeded.")
    quick = RetryPolicy(backoff_s=0.001, max_backoff_s=0.001)
    throttle = Recorder()
    transport = MemoryTransport([lost, limited, classify(200, emu_list)])
    models = await fetch_models(transport, "claude", throttle=throttle, policy=quick)
    assert [m.model_name for m in models] == ["claude-x-1"]
    assert [r.kind for r, _ in throttle.told] == ["unknown", "retry", "ok"]
    assert len(transport.requests) == 3
    assert {(m, p) for m, p, _ in transport.requests} == {
        ("GET", "/v3/ai_optimization/claude/llm_responses/models")
    }
    # Three failures: no fourth call, and the error names the engine and the last reply.
    failing = MemoryTransport([lost, lost, limited, lost])
    with pytest.raises(ServiceError, match="models for gemini: Rate-limit exceeded"):
        await fetch_models(failing, "gemini", policy=quick)
    assert len(failing.requests) == 3
