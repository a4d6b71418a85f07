"""The emulator's 2026 shapes: task_get results, failed and expired tasks, user_data, id_list's
window rules and the ``Date`` header, all over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks.emulator import Emulator, EmulatorConfig

AUTH = {"Authorization": aiohttp.encode_basic_auth("login", "password")}
LLM = "/v3/ai_optimization/{se}/llm_responses"
ID_LIST = "/v3/ai_optimization/id_list"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


async def call(
    http: aiohttp.ClientSession, emu: Emulator, method: str, path: str, body: Any = None
) -> tuple[aiohttp.ClientResponse, Any]:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, emu.base_url + path, data=data) as resp:
        return resp, orjson.loads(await resp.read())


async def created_ids(
    http: aiohttp.ClientSession, emu: Emulator, se: str, tasks: list[dict[str, Any]]
) -> list[str]:
    _, reply = await call(http, emu, "POST", LLM.format(se=se) + "/task_post", tasks)
    assert [t["status_code"] for t in reply["tasks"]] == [20100] * len(tasks), reply
    return [t["id"] for t in reply["tasks"]]


async def get(http: aiohttp.ClientSession, emu: Emulator, se: str, task_id: str) -> Any:
    _, reply = await call(http, emu, "GET", LLM.format(se=se) + f"/task_get/{task_id}")
    assert reply["status_code"] == 20000
    return reply["tasks"][0]


def stamp(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +00:00", time.gmtime(unix_s))


# ---- task_get results ----------------------------------------------------------------------

RESULT_KEYS = [
    "model_name",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "web_search",
    "money_spent",
    "datetime",
    "fan_out_queries",
    "items",
]


async def test_a_plain_result_has_the_documented_fields(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(seed=1)) as emu:
        [task_id] = await created_ids(
            http, emu, "chat_gpt", [{"user_prompt": "amusement parks", "model_name": "gpt-4o"}]
        )
        got = await get(http, emu, "chat_gpt", task_id)
    [result] = got["result"]
    assert list(result) == RESULT_KEYS
    assert result["model_name"] == "gpt-4o-2024-11-20"  # the dated model
    assert result["reasoning_tokens"] == 0 and result["web_search"] is False
    assert result["fan_out_queries"] is None
    [item] = result["items"]
    assert item["type"] == "message"
    [section] = item["sections"]
    assert section["type"] == "text" and section["annotations"] is None
    assert "amusement parks" in section["text"]
    assert 0 < result["money_spent"] <= got["cost"]


@pytest.mark.parametrize(
    ("se", "model"),
    [("chat_gpt", "gpt-4.1"), ("claude", "claude-sonnet-4-0"), ("gemini", "gemini-2.5-flash")],
)
async def test_web_search_brings_citations_and_fan_out_queries(
    http: aiohttp.ClientSession, se: str, model: str
) -> None:
    prompts = [f"best running shoes {i}" for i in range(12)]
    async with Emulator(EmulatorConfig(seed=5)) as emu:
        tasks = [{"user_prompt": p, "model_name": model, "web_search": True} for p in prompts]
        ids = await created_ids(http, emu, se, tasks)
        results = [(await get(http, emu, se, i))["result"][0] for i in ids]
    counts = set()
    for prompt, result in zip(prompts, results, strict=True):
        assert result["web_search"] is True
        assert result["fan_out_queries"] and all(
            isinstance(q, str) for q in result["fan_out_queries"]
        )
        assert prompt in result["fan_out_queries"][0]
        section = result["items"][-1]["sections"][0]
        notes = section["annotations"]
        assert isinstance(notes, list)  # a list with web search, possibly empty
        counts.add(len(notes))
        for note in notes:
            span = section["text"][note["start_index"] : note["end_index"]]
            assert span and span.endswith(".") and note["title"]
            if se == "gemini":
                assert note["url"].startswith("https://vertexaisearch.cloud.google.com/")
                assert note["direct_url"].startswith("https://")
            else:
                assert "direct_url" not in note and note["url"].startswith("https://")
    assert 0 in counts and max(counts) >= 2  # empty lists happen, and several citations too


@pytest.mark.parametrize(
    ("se", "task", "reasons"),
    [
        ("chat_gpt", {"model_name": "o3"}, True),
        ("chat_gpt", {"model_name": "gpt-5-mini"}, True),
        ("chat_gpt", {"model_name": "gpt-4.1"}, False),
        ("claude", {"model_name": "claude-sonnet-4-0", "use_reasoning": True}, True),
        ("claude", {"model_name": "claude-sonnet-4-0"}, False),
        ("gemini", {"model_name": "gemini-2.5-flash", "use_reasoning": True}, True),
        ("gemini", {"model_name": "gemini-2.5-flash", "use_reasoning": False}, False),
        ("gemini", {"model_name": "gemini-2.5-pro"}, True),  # Pro models reason always
    ],
)
async def test_reasoning_items_when_reasoning_was_used(
    http: aiohttp.ClientSession, se: str, task: dict[str, Any], reasons: bool
) -> None:
    async with Emulator() as emu:
        [task_id] = await created_ids(http, emu, se, [{"user_prompt": "why?", **task}])
        [result] = (await get(http, emu, se, task_id))["result"]
    kinds = [item["type"] for item in result["items"]]
    if reasons:
        assert kinds == ["reasoning", "message"]
        [section] = result["items"][0]["sections"]
        assert set(section) == {"type", "text"} and section["text"]
        assert result["reasoning_tokens"] > 0
    else:
        assert kinds == ["message"] and result["reasoning_tokens"] == 0


async def test_results_are_deterministic_given_a_seed(http: aiohttp.ClientSession) -> None:
    def content(result: dict[str, Any]) -> Any:
        return {k: v for k, v in result.items() if k != "datetime"}

    tasks = [
        {"user_prompt": f"q{i}", "model_name": "gemini-2.5-pro", "web_search": True}
        for i in range(5)
    ]
    runs = []
    for seed in (11, 11, 12):
        async with Emulator(EmulatorConfig(seed=seed)) as emu:
            ids = await created_ids(http, emu, "gemini", tasks)
            runs.append([content((await get(http, emu, "gemini", i))["result"][0]) for i in ids])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


# ---- task life cycle: not found, failed, expired -------------------------------------------


async def test_tasks_that_fail_on_the_service_are_refunded(http: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(task_fail_rate=0.5, seed=2, funds_usd=1.0, completion_delay_s=0.5)
    async with Emulator(config) as emu:
        tasks = [{"user_prompt": f"q{i}", "model_name": "gpt-4o"} for i in range(20)]
        ids = await created_ids(http, emu, "chat_gpt", tasks)
        early = [await get(http, emu, "chat_gpt", i) for i in ids]
        assert {t["status_code"] for t in early} <= {40601, 40602}  # failures show when done
        emu.complete_all()
        # Failed tasks are listed by tasks_ready too, so that collectors learn of them.
        _, ready = await call(http, emu, "GET", LLM.format(se="chat_gpt") + "/tasks_ready")
        assert [r["id"] for r in ready["tasks"][0]["result"]] == ids
        got = [await get(http, emu, "chat_gpt", i) for i in ids]
        failed = [t for t in got if t["status_code"] != 20000]
        assert 0 < len(failed) < 20
        for t in failed:
            assert t["status_code"] == 50000 and t["result"] is None and t["cost"] == 0.0
            assert "refunded" in t["status_message"]
        ok = 20 - len(failed)
        assert emu.spent_usd == pytest.approx(ok * 0.0102)
        assert emu.balance_usd == pytest.approx(1.0 - ok * 0.0102)
        _, reply = await call(
            http,
            emu,
            "POST",
            ID_LIST,
            [{"datetime_from": stamp(emu.now_unix - 60), "datetime_to": stamp(emu.now_unix)}],
        )
        items = {item["id"]: item for item in reply["tasks"][0]["result"]}
        for t in got:
            item = items[t["id"]]
            assert item["status"] == ("ok" if t["status_code"] == 20000 else "failed")
            assert item["cost"] == (0.0102 if t["status_code"] == 20000 else 0.0)
        _, ready = await call(http, emu, "GET", LLM.format(se="chat_gpt") + "/tasks_ready")
        assert ready["tasks"][0]["result"] == []  # fetched, failed or not: collected


async def test_unknown_and_expired_tasks(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(results_ttl_s=0.3)) as emu:
        got = await get(http, emu, "claude", "12011200-0000-0000-0000-000000000000")
        assert (got["status_code"], got["result"]) == (40401, None)
        [task_id] = await created_ids(
            http, emu, "claude", [{"user_prompt": "q", "model_name": "claude-3-5-haiku"}]
        )
        assert (await get(http, emu, "claude", task_id))["status_code"] == 20000
        time.sleep(0.4)  # noqa: ASYNC251 (the emulator only compares clocks)
        expired = await get(http, emu, "claude", task_id)
        assert (expired["status_code"], expired["result"]) == (40403, None)


# ---- user_data -----------------------------------------------------------------------------


async def test_user_data_in_the_older_flat_shape(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(rate=600, user_data_shape="flat")) as emu:
        _, reply = await call(http, emu, "GET", "/v3/appendix/user_data")
    minute = reply["tasks"][0]["result"][0]["rates"]["limits"]["minute"]
    assert minute == {"total": 600, "ai_optimization": 600}


async def test_user_data_reports_what_is_enforced(http: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(rate=600, task_get_rate=300, models_rate=30, total_rate=5000)
    async with Emulator(config) as emu:
        _, reply = await call(http, emu, "GET", "/v3/appendix/user_data")
        minute = reply["tasks"][0]["result"][0]["rates"]["limits"]["minute"]
        assert minute["ai_optimization"]["llm_responses"] == {
            "live": 2000,
            "task_post": 600,
            "tasks_ready": 20,
            "task_get": 300,
            "models": 30,
        }
        assert minute["ai_optimization"]["id_list"] == 10
        assert minute["total"] == minute["total_ai_optimization"] == 5000
        emu.reconfigure(rate=10_000)
        _, reply = await call(http, emu, "GET", "/v3/appendix/user_data")
        minute = reply["tasks"][0]["result"][0]["rates"]["limits"]["minute"]
        assert minute["ai_optimization"]["llm_responses"]["task_post"] == 10_000


# ---- id_list and the service's clock -------------------------------------------------------


async def test_id_list_window_rules(http: aiohttp.ClientSession) -> None:
    async with Emulator() as emu:
        await created_ids(http, emu, "chat_gpt", [{"user_prompt": "q", "model_name": "gpt-4o"}])
        now = emu.now_unix
        day = 86400.0
        ok = {"datetime_from": stamp(now - 60), "datetime_to": stamp(now)}
        queries: list[tuple[Any, int, str | None]] = [
            (ok, 20000, None),
            ({**ok, "datetime_to": stamp(now + 2)}, 40501, "datetime_to"),
            ({**ok, "datetime_to": None}, 40501, "datetime_to"),
            ({"datetime_to": stamp(now)}, 40501, "datetime_from"),
            ({**ok, "datetime_from": stamp(now - 60)[:-7]}, 40501, "datetime_from"),
            ({**ok, "datetime_from": "2026-13-01 00:00:00 +00:00"}, 40501, "datetime_from"),
            ({**ok, "datetime_from": stamp(now + 1), "datetime_to": stamp(now)}, 40501, None),
            ({**ok, "datetime_from": stamp(now - 180 * day)}, 20000, None),
            ({**ok, "datetime_from": stamp(now - 190 * day)}, 40501, "datetime_from"),
            ({**ok, "datetime_from": stamp(now - 30 * day), "include_metadata": True}, 20000, None),
            (
                {**ok, "datetime_from": stamp(now - 40 * day), "include_metadata": True},
                40501,
                "datetime_from",
            ),
            ({**ok, "limit": 1000}, 20000, None),
            ({**ok, "limit": 1001}, 40501, "limit"),
            ({**ok, "limit": 0}, 40501, "limit"),
            ({**ok, "offset": -1}, 40501, "offset"),
            ({**ok, "sort": "newest"}, 40501, "sort"),
            ({**ok, "tag": "x"}, 40506, "tag"),
            ("not an object", 40503, None),
        ]
        resp, reply = await call(http, emu, "POST", ID_LIST, [q for q, _, _ in queries])
        assert resp.status == 200 and reply["status_code"] == 20000
        for (query, code, field), task in zip(queries, reply["tasks"], strict=True):
            assert task["status_code"] == code, (query, task["status_message"])
            if field is not None:
                assert f"'{field}'" in task["status_message"]
        assert len(reply["tasks"][0]["result"]) == 1


async def test_the_date_header_is_the_services_clock(http: aiohttp.ClientSession) -> None:
    """A service whose clock is 10 minutes behind this machine: its Date header says so, and
    a datetime_to taken from the local clock is in its future."""
    async with Emulator(EmulatorConfig(clock_offset_s=-600.0)) as emu:
        resp, reply = await call(http, emu, "GET", "/v3/appendix/user_data")
        service_now = parsedate_to_datetime(resp.headers["Date"]).timestamp()
        assert abs(service_now - (time.time() - 600)) < 5
        assert abs(service_now - emu.now_unix) < 1.5
        local = {"datetime_from": stamp(time.time() - 3600), "datetime_to": stamp(time.time())}
        by_date = {"datetime_from": stamp(service_now - 3600), "datetime_to": stamp(service_now)}
        resp, reply = await call(http, emu, "POST", ID_LIST, [local, by_date])
        assert [t["status_code"] for t in reply["tasks"]] == [40501, 20000]
        assert "'datetime_to'" in reply["tasks"][0]["status_message"]
        # Ids and datetimes follow the service's clock as well.
        [task_id] = await created_ids(
            http, emu, "chat_gpt", [{"user_prompt": "q", "model_name": "gpt-4o"}]
        )
        assert task_id[:8] == time.strftime("%m%d%H%M", time.gmtime(emu.now_unix))
        assert abs(emu.created[0].posted_at - emu.now_unix) < 2


async def test_pingback_tasks_are_listed_until_fetched_postback_tasks_are_not(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorConfig(completion_delay_s=0.3)) as emu:
        base = {"user_prompt": "q", "model_name": "gpt-4o"}
        ping, post = await created_ids(
            http,
            emu,
            "chat_gpt",
            [
                {**base, "pingback_url": emu.base_url + "/_emulator/stats?id=$id"},
                {**base, "postback_url": emu.base_url + "/_emulator/complete?id=$id"},
            ],
        )
        for _ in range(100):
            if len(emu.deliveries) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted((d.kind, d.ok) for d in emu.deliveries) == [
            ("pingback", True),
            ("postback", True),
        ]
        _, ready = await call(http, emu, "GET", LLM.format(se="chat_gpt") + "/tasks_ready")
        assert [r["id"] for r in ready["tasks"][0]["result"]] == [ping]
        assert (await get(http, emu, "chat_gpt", ping))["status_code"] == 20000
        assert (await get(http, emu, "chat_gpt", post))["status_code"] == 20000
        _, ready = await call(http, emu, "GET", LLM.format(se="chat_gpt") + "/tasks_ready")
        assert ready["tasks"][0]["result"] == []
