"""The emulator over real HTTP on 127.0.0.1: envelope, auth, routes, validation, 40006."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks.emulator import Emulator, EmulatorConfig

AUTH = {"Authorization": aiohttp.encode_basic_auth("login", "password")}
POST = "/v3/ai_optimization/{se}/llm_responses/task_post"
ID_RE = re.compile(r"^\d{8}-\d{4}-\d{4}-0000-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d+\.\d{4} sec\.$")

# The documented example reply (seed-task_post.txt), verbatim.
DOC_EXAMPLE: dict[str, Any] = {
    "version": "0.1.20250526",
    "status_code": 20000,
    "status_message": "Ok.",
    "time": "0.1071 sec.",
    "cost": 0.0102,
    "tasks_count": 1,
    "tasks_error": 0,
    "tasks": [
        {
            "id": "07151610-0696-0613-0000-b2366402ce99",
            "status_code": 20100,
            "status_message": "Task Created.",
            "time": "0.0146 sec.",
            "cost": 0.0102,
            "result_count": 0,
            "path": ["v3", "ai_optimization", "chat_gpt", "llm_responses", "task_post"],
            "data": {
                "api": "ai_optimization",
                "function": "llm_responses",
                "se": "chat_gpt",
                "system_message": "communicate as if we are in a business meeting",
                "message_chain": [
                    {"role": "user", "message": "Hello, what's up?"},
                    {
                        "role": "ai",
                        "message": "Hello! I’m doing well, thank you. How can I assist you today? "
                        "Are there any specific topics or projects you’d like to discuss in our "
                        "meeting?",
                    },
                ],
                "model_name": "gpt-4.1-mini",
                "user_prompt": "provide information on how relevant the amusement park business "
                "is in France now",
            },
            "result": None,
        }
    ],
}
DOC_TASK = {
    k: v for k, v in DOC_EXAMPLE["tasks"][0]["data"].items() if k not in ("api", "function", "se")
}

OK_TASK = {"user_prompt": "hello", "model_name": "gpt-4.1-mini"}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=7)) as e:
        yield e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


async def post(
    http: aiohttp.ClientSession,
    emu: Emulator,
    body: Any,
    *,
    se: str = "chat_gpt",
    raw: bool = False,
) -> tuple[int, Any]:
    data = body if raw else orjson.dumps(body)
    async with http.post(
        emu.base_url + POST.format(se=se), data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


def shape(value: Any) -> Any:
    """Keys (in order) and JSON types, not values."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


# ---- envelope -------------------------------------------------------------------------------


async def test_envelope_matches_the_documented_example(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    status, reply = await post(http, emu, [DOC_TASK])
    assert status == 200
    assert list(reply) == list(DOC_EXAMPLE)
    assert shape({k: v for k, v in reply.items() if k != "tasks"}) == shape(
        {k: v for k, v in DOC_EXAMPLE.items() if k != "tasks"}
    )
    task, doc_task = reply["tasks"][0], DOC_EXAMPLE["tasks"][0]
    assert list(task) == list(doc_task)
    assert shape({k: v for k, v in task.items() if k != "data"}) == shape(
        {k: v for k, v in doc_task.items() if k != "data"}
    )
    # data echoes api/function/se first, then exactly the fields sent.
    assert list(task["data"])[:3] == ["api", "function", "se"]
    assert task["data"] == doc_task["data"]
    assert (reply["version"], reply["status_code"], reply["status_message"]) == (
        "0.1.20250526",
        20000,
        "Ok.",
    )
    assert TIME_RE.match(reply["time"]) and TIME_RE.match(task["time"])
    assert (reply["cost"], reply["tasks_count"], reply["tasks_error"]) == (0.0102, 1, 0)
    assert ID_RE.match(task["id"])
    assert task["path"] == doc_task["path"]
    assert task["result"] is None and task["result_count"] == 0
    [created] = emu.created
    assert created.id == task["id"]
    assert created.user_prompt == DOC_TASK["user_prompt"]
    assert created.data == task["data"]


async def test_created_tasks_are_never_walked_by_the_gc(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    # The store keeps every task for the emulator's lifetime: a GC-tracked record (a dict
    # inside) made full collections pause the server for 0.1 s at 250,000 tasks.
    tasks = [{**DOC_TASK, "tag": f"t{i}"} for i in range(3)]
    _, reply = await post(http, emu, tasks)
    assert [t.tag for t in emu.created] == ["t0", "t1", "t2"]
    assert not any(gc.is_tracked(t) for t in emu.created)
    assert not any(gc.is_tracked(c) for c in emu.calls)
    assert [t.data for t in emu.created] == [t["data"] for t in reply["tasks"]]


async def test_ids_have_the_documented_shape_and_are_unique(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    before = time.strftime("%m%d%H%M", time.gmtime())
    ids: list[str] = []
    for _ in range(5):
        _, reply = await post(http, emu, [OK_TASK] * 100)
        ids += [t["id"] for t in reply["tasks"]]
    after = time.strftime("%m%d%H%M", time.gmtime())
    assert len(set(ids)) == 500
    assert all(ID_RE.match(i) for i in ids)
    assert {i[:8] for i in ids} <= {before, after}
    assert [c.id for c in emu.created] == ids


async def test_null_fields_are_unset_and_not_echoed(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    nulls = dict.fromkeys(
        ["max_output_tokens", "temperature", "top_p", "system_message", "message_chain", "tag"]
    )
    _, reply = await post(http, emu, [{**OK_TASK, **nulls}])
    [task] = reply["tasks"]
    assert task["status_code"] == 20100
    assert task["data"] == {
        "api": "ai_optimization",
        "function": "llm_responses",
        "se": "chat_gpt",
        **OK_TASK,
    }


async def test_mixed_batch_keeps_order_and_counts_errors(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    body = [
        {**OK_TASK, "tag": "a"},
        {**OK_TASK, "tag": "b", "max_output_tokens": 1},
        "not an object",
        {**OK_TASK, "tag": "d"},
    ]
    status, reply = await post(http, emu, body)
    assert status == 200 and reply["status_code"] == 20000
    codes = [t["status_code"] for t in reply["tasks"]]
    assert codes == [20100, 40501, 40503, 20100]
    assert reply["tasks"][2]["status_message"] == "Invalid POST data."
    assert [t["data"].get("tag") for t in reply["tasks"]] == ["a", "b", None, "d"]
    # Failed tasks get ids too, and cost nothing.
    assert all(ID_RE.match(t["id"]) for t in reply["tasks"])
    assert [t["cost"] for t in reply["tasks"]] == [0.0102, 0.0, 0.0, 0.0102]
    assert (reply["tasks_count"], reply["tasks_error"], reply["cost"]) == (4, 2, 0.0204)
    assert [c.tag for c in emu.created] == ["a", "d"]


async def test_the_101st_task_gets_40006(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = [{**OK_TASK, "tag": str(i)} for i in range(101)]
    _, reply = await post(http, emu, body)
    codes = [t["status_code"] for t in reply["tasks"]]
    assert codes == [20100] * 100 + [40006]
    assert reply["tasks"][100]["data"]["tag"] == "100"
    assert len(emu.created) == 100
    assert reply["tasks_error"] == 1


async def test_tasks_past_100_get_40006_on_the_slow_path_too(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    body: list[Any] = [OK_TASK] * 99 + [{"user_prompt": 5}, OK_TASK, OK_TASK]
    _, reply = await post(http, emu, body)
    codes = [t["status_code"] for t in reply["tasks"]]
    assert codes == [20100] * 99 + [40501, 40006, 40006]
    assert len(emu.created) == 99


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"user_prompt": "x", "model_name": "gpt-4.1"}', b"[", b"[]", b"", b"null"],
)
async def test_a_body_that_is_not_a_json_array_gets_40503(
    emu: Emulator, http: aiohttp.ClientSession, body: bytes
) -> None:
    status, reply = await post(http, emu, body, raw=True)
    assert status == 200
    assert reply["status_code"] == 40503 and reply["status_message"] == "Invalid POST data."
    assert reply["tasks"] is None and reply["tasks_count"] == 0
    assert emu.created == []


# ---- auth and routes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": aiohttp.encode_basic_auth("login", "wrong")},
        {"Authorization": aiohttp.encode_basic_auth("other", "password")},
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!"},
    ],
)
async def test_wrong_or_missing_credentials_get_401(emu: Emulator, headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(emu.base_url + POST.format(se="chat_gpt"), data=orjson.dumps([OK_TASK])) as resp,
    ):
        reply = orjson.loads(await resp.read())
        assert resp.status == 401
    assert reply["status_code"] == 40100
    assert reply["status_message"] == "You are not authorized to access this resource."
    assert reply["tasks"] is None
    assert emu.created == []
    assert emu.calls[-1].http_status == 401


async def test_configured_credentials_are_the_ones_accepted() -> None:
    config = EmulatorConfig(login="alice", password="s3cret")
    headers = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
    async with Emulator(config) as emu, aiohttp.ClientSession(headers=headers) as s:
        status, reply = await post(s, emu, [OK_TASK])
        assert status == 200 and reply["tasks"][0]["status_code"] == 20100
        async with s.get(emu.base_url + "/v3/appendix/user_data", headers=dict(AUTH)) as resp:
            assert resp.status == 401


async def test_unknown_engine_and_path_get_404_envelope(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    status, reply = await post(http, emu, [OK_TASK], se="perplexity")
    assert status == 404 and reply["status_code"] == 40400 and reply["tasks"] is None
    for path in (
        "/v3/ai_optimization/bing/llm_responses/tasks_ready",
        "/v3/ai_optimization/bing/llm_responses/models",
        "/v3/ai_optimization/bing/llm_responses/task_get/x",
        "/v3/no/such/path",
    ):
        async with http.get(emu.base_url + path) as resp:
            assert resp.status == 404, path
            assert orjson.loads(await resp.read())["status_code"] == 40400
    assert emu.created == []


async def test_models_lists_each_engine_with_one_not_postable(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    for se in ("chat_gpt", "claude", "gemini"):
        async with http.get(emu.base_url + f"/v3/ai_optimization/{se}/llm_responses/models") as r:
            reply = orjson.loads(await r.read())
        models = reply["tasks"][0]["result"]
        assert reply["tasks"][0]["result_count"] == len(models) > 3
        assert all(
            list(m) == ["model_name", "reasoning", "web_search_supported", "task_post_supported"]
            for m in models
        )
        blocked = [m["model_name"] for m in models if not m["task_post_supported"]]
        assert blocked
        _, post_reply = await post(
            http, emu, [{"user_prompt": "x", "model_name": blocked[0]}], se=se
        )
        task = post_reply["tasks"][0]
        assert task["status_code"] == 40501 and "'model_name'" in task["status_message"]
        postable = next(m["model_name"] for m in models if m["task_post_supported"])
        _, post_reply = await post(http, emu, [{"user_prompt": "x", "model_name": postable}], se=se)
        assert post_reply["tasks"][0]["status_code"] == 20100


async def test_user_data_reports_limit_and_balance() -> None:
    config = EmulatorConfig(rate=100, task_get_rate=50, period_s=30.0, funds_usd=5.0)
    async with Emulator(config) as emu, aiohttp.ClientSession(headers=AUTH) as s:
        await post(s, emu, [OK_TASK] * 10)
        async with s.get(emu.base_url + "/v3/appendix/user_data") as resp:
            reply = orjson.loads(await resp.read())
        [user] = reply["tasks"][0]["result"]
        assert user["login"] == "login"
        minute = user["rates"]["limits"]["minute"]
        assert minute["ai_optimization"]["llm_responses"] == {
            "live": 2000,
            "task_post": 200,
            "tasks_ready": 20,
            "task_get": 100,
            "models": 2000,
        }
        assert minute["total"] == minute["total_ai_optimization"] == 2000
        assert user["money"]["total"] == 5.0
        assert user["money"]["balance"] == pytest.approx(5.0 - 10 * 0.0102)
        assert emu.balance_usd == pytest.approx(5.0 - 10 * 0.0102)
    async with Emulator() as emu, aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(emu.base_url + "/v3/appendix/user_data") as resp:
            reply = orjson.loads(await resp.read())
        minute = reply["tasks"][0]["result"][0]["rates"]["limits"]["minute"]
        assert minute["ai_optimization"]["llm_responses"]["task_post"] == 2000
        assert emu.balance_usd is None


# ---- validation: one failing case and one passing boundary per rule -------------------------

LONG = "x" * 500
CHAIN_ITEM = {"role": "user", "message": "hi"}

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # (case id, fields over OK_TASK, field blamed or None if valid)
    ("prompt-500", {"user_prompt": LONG}, None),
    ("prompt-501", {"user_prompt": LONG + "x"}, "user_prompt"),
    ("prompt-missing", {"user_prompt": None}, "user_prompt"),
    ("prompt-empty", {"user_prompt": ""}, "user_prompt"),
    ("prompt-not-string", {"user_prompt": 5}, "user_prompt"),
    ("model-missing", {"model_name": None}, "model_name"),
    ("model-unknown", {"model_name": "gpt-99"}, "model_name"),
    ("model-other-engine", {"model_name": "gemini-2.5-pro"}, "model_name"),
    ("model-base-name", {"model_name": "gpt-4.1"}, None),
    ("model-dated-name", {"model_name": "gpt-4.1-mini-2025-04-14"}, None),
    ("system-500", {"system_message": LONG}, None),
    ("system-501", {"system_message": LONG + "x"}, "system_message"),
    ("chain-10", {"message_chain": [CHAIN_ITEM] * 10}, None),
    ("chain-11", {"message_chain": [CHAIN_ITEM] * 11}, "message_chain"),
    ("chain-role-ai", {"message_chain": [{"role": "ai", "message": "m"}]}, None),
    ("chain-role-bad", {"message_chain": [{"role": "system", "message": "m"}]}, "role"),
    ("chain-message-500", {"message_chain": [{"role": "user", "message": LONG}]}, None),
    ("chain-message-501", {"message_chain": [{"role": "user", "message": LONG + "x"}]}, "message"),
    ("chain-message-missing", {"message_chain": [{"role": "user"}]}, "message"),
    ("tag-255", {"tag": "t" * 255}, None),
    ("tag-256", {"tag": "t" * 256}, "tag"),
    ("o3-tokens-1024", {"model_name": "o3", "max_output_tokens": 1024}, None),
    ("o3-tokens-1023", {"model_name": "o3", "max_output_tokens": 1023}, "max_output_tokens"),
    ("o3-tokens-4096", {"model_name": "o3", "max_output_tokens": 4096}, None),
    ("o3-tokens-4097", {"model_name": "o3", "max_output_tokens": 4097}, "max_output_tokens"),
    ("gpt-tokens-16", {"max_output_tokens": 16}, None),
    ("gpt-tokens-15", {"max_output_tokens": 15}, "max_output_tokens"),
    ("gpt-tokens-2049", {"max_output_tokens": 2049}, None),  # 4096 for every model since 2026
    ("gpt-tokens-4096", {"max_output_tokens": 4096}, None),
    ("gpt-tokens-4097", {"max_output_tokens": 4097}, "max_output_tokens"),
    ("tokens-not-int", {"max_output_tokens": "big"}, "max_output_tokens"),
    ("temperature-0", {"temperature": 0}, None),
    ("temperature-2", {"temperature": 2}, None),
    ("temperature-2.01", {"temperature": 2.01}, "temperature"),
    ("temperature-negative", {"temperature": -0.1}, "temperature"),
    ("top_p-0", {"top_p": 0}, None),
    ("top_p-1", {"top_p": 1}, None),
    ("top_p-1.01", {"top_p": 1.01}, "top_p"),
    ("o1-temperature", {"model_name": "o1", "temperature": 0.5}, "temperature"),
    ("o1-top_p", {"model_name": "o1", "top_p": 0.5}, None),  # 2026: top_p on every model
    ("o1-temperature-null", {"model_name": "o1", "temperature": None, "top_p": None}, None),
    ("o4-mini-temperature", {"model_name": "o4-mini", "temperature": 1}, "temperature"),
    ("web-search-unsupported", {"model_name": "gpt-4.1-nano", "web_search": True}, "web_search"),
    ("web-search-supported", {"model_name": "gpt-4.1", "web_search": True}, None),
]


@pytest.mark.parametrize(("fields", "blamed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_validation_rule(
    emu: Emulator, http: aiohttp.ClientSession, fields: dict[str, Any], blamed: str | None
) -> None:
    task = {**OK_TASK, **fields}
    task = {k: v for k, v in task.items() if not (k in fields and v is None and k in OK_TASK)}
    status, reply = await post(http, emu, [task, OK_TASK])
    assert status == 200 and reply["status_code"] == 20000
    first, second = reply["tasks"]
    assert second["status_code"] == 20100  # a bad neighbour does not spoil a good task
    if blamed is None:
        assert first["status_code"] == 20100, first["status_message"]
        assert len(emu.created) == 2
    else:
        assert first["status_code"] == 40501
        assert first["status_message"].startswith("Invalid Field: '")
        field = first["status_message"].split("'")[1]
        assert field.split(".")[-1].split("[")[0] == blamed, first["status_message"]
        assert reply["tasks_error"] == 1
        assert len(emu.created) == 1
        assert first["cost"] == 0.0


async def test_base_name_resolves_to_the_dated_model(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    _, reply = await post(http, emu, [{"user_prompt": "q", "model_name": "gpt-4.1"}])
    task_id = reply["tasks"][0]["id"]
    async with http.get(
        emu.base_url + f"/v3/ai_optimization/chat_gpt/llm_responses/task_get/{task_id}"
    ) as resp:
        got = orjson.loads(await resp.read())
    assert got["tasks"][0]["result"][0]["model_name"] == "gpt-4.1-2025-04-14"
    assert got["tasks"][0]["data"]["model_name"] == "gpt-4.1"
