"""The emulator's limits, task life cycle, id_list, faults and inspection endpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks.emulator import CallRecord, Emulator, EmulatorConfig
from llmtasks.emulator._gate import answer_delay_s

AUTH = {"Authorization": aiohttp.encode_basic_auth("login", "password")}
LLM = "/v3/ai_optimization/{se}/llm_responses"
OK_TASK = {"user_prompt": "hello", "model_name": "gpt-4.1-mini"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        yield s


async def call(
    http: aiohttp.ClientSession,
    emu: Emulator,
    method: str,
    path: str,
    body: Any = None,
) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, emu.base_url + path, data=data) as resp:
        raw = await resp.read()
        if resp.content_type != "application/json":
            return resp.status, raw.decode()
        return resp.status, orjson.loads(raw)


async def post_tasks(
    http: aiohttp.ClientSession, emu: Emulator, tasks: list[dict[str, Any]], se: str = "chat_gpt"
) -> tuple[int, Any]:
    return await call(http, emu, "POST", LLM.format(se=se) + "/task_post", tasks)


async def tasks_ready(http: aiohttp.ClientSession, emu: Emulator, se: str = "chat_gpt") -> Any:
    status, reply = await call(http, emu, "GET", LLM.format(se=se) + "/tasks_ready")
    assert status == 200 and reply["status_code"] == 20000, reply
    return reply["tasks"][0]["result"]


async def task_get(
    http: aiohttp.ClientSession, emu: Emulator, task_id: str, se: str = "chat_gpt"
) -> Any:
    status, reply = await call(http, emu, "GET", LLM.format(se=se) + f"/task_get/{task_id}")
    assert status == 200 and reply["status_code"] == 20000, reply
    return reply["tasks"][0]


def peak_in_window(calls: list[CallRecord], period_s: float) -> int:
    """The most admitted limited calls in any window of period_s, as the server counted."""
    times = sorted(c.at for c in calls if c.status_code not in (40202, 40100, 40209))
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - period_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ---- rate limit and in-flight cap -----------------------------------------------------------


async def test_a_burst_over_the_rate_gets_40202_and_creates_nothing(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorConfig(rate=5, period_s=60.0)) as emu:
        replies = await asyncio.gather(
            *(post_tasks(http, emu, [{**OK_TASK, "tag": str(i)}]) for i in range(12))
        )
        assert all(status == 200 for status, _ in replies)
        codes = sorted(r["status_code"] for _, r in replies)
        assert codes == [20000] * 5 + [40202] * 7
        limited = [r for _, r in replies if r["status_code"] == 40202]
        assert all(r["tasks"] is None for r in limited)
        assert len(emu.created) == 5
        # models and task_get are budgets of their own; user_data is free.
        _, reply = await call(http, emu, "GET", LLM.format(se="chat_gpt") + "/models")
        assert reply["status_code"] == 20000
        _, reply = await call(http, emu, "GET", "/v3/appendix/user_data")
        assert reply["status_code"] == 20000
        posts = [c for c in emu.calls if c.path.endswith("/task_post")]
        assert peak_in_window(posts, 60.0) == 5


async def test_each_function_has_its_own_budget(http: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(rate=2, task_get_rate=3, models_rate=1)
    async with Emulator(config) as emu:
        llm = LLM.format(se="chat_gpt")
        posts = [(await post_tasks(http, emu, [OK_TASK]))[1]["status_code"] for _ in range(3)]
        assert posts == [20000, 20000, 40202]
        task_id = emu.created[0].id
        gets = [
            (await call(http, emu, "GET", f"{llm}/task_get/{task_id}"))[1]["status_code"]
            for _ in range(4)
        ]
        assert gets == [20000, 20000, 20000, 40202]
        models = [(await call(http, emu, "GET", f"{llm}/models"))[1]["status_code"] for _ in "ab"]
        assert models == [20000, 40202]


async def test_refused_calls_count_toward_the_window(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(rate=2, period_s=1.0)) as emu:
        codes = [(await post_tasks(http, emu, [OK_TASK]))[1]["status_code"] for _ in range(3)]
        assert codes == [20000, 20000, 40202]
        await asyncio.sleep(0.6)
        # The first two leave the window after 1 s, the refused third only 1 s after it.
        codes = [(await post_tasks(http, emu, [OK_TASK]))[1]["status_code"] for _ in range(2)]
        assert codes == [40202, 40202]
        await asyncio.sleep(0.5)
        # Now only the calls of 0.5 s ago are in the window: two of them, the limit.
        _, reply = await post_tasks(http, emu, [OK_TASK])
        assert reply["status_code"] == 40202
        await asyncio.sleep(1.05)
        _, reply = await post_tasks(http, emu, [OK_TASK])
        assert reply["status_code"] == 20000
        assert len(emu.created) == 3


async def test_total_rate_spans_every_function(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(total_rate=3)) as emu:
        llm = LLM.format(se="chat_gpt")
        codes = [(await post_tasks(http, emu, [OK_TASK]))[1]["status_code"] for _ in "ab"]
        codes.append((await call(http, emu, "GET", f"{llm}/models"))[1]["status_code"])
        codes.append((await call(http, emu, "GET", f"{llm}/tasks_ready"))[1]["status_code"])
        assert codes == [20000, 20000, 20000, 40202]


async def test_the_window_slides(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(rate=2, period_s=1.5)) as emu:
        first = [await post_tasks(http, emu, [OK_TASK]) for _ in range(3)]
        assert [r["status_code"] for _, r in first] == [20000, 20000, 40202]
        await asyncio.sleep(1.6)
        _, reply = await post_tasks(http, emu, [OK_TASK])
        assert reply["status_code"] == 20000
        assert peak_in_window(emu.calls, 1.5) == 2


async def test_tasks_ready_and_id_list_have_their_own_limits(
    http: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(rate=1, tasks_ready_rate=2, id_list_rate=1)
    async with Emulator(config) as emu:
        codes = []
        for _ in range(3):
            _, reply = await call(http, emu, "GET", LLM.format(se="claude") + "/tasks_ready")
            codes.append(reply["status_code"])
        assert codes == [20000, 20000, 40202]
        now = emu.now_unix
        query = [{"datetime_from": stamp(now - 3600), "datetime_to": stamp(now)}]
        codes = [
            (await call(http, emu, "POST", "/v3/ai_optimization/id_list", query))[1]["status_code"]
            for _ in range(2)
        ]
        assert codes == [20000, 40202]
        # Neither used up the main window.
        _, reply = await post_tasks(http, emu, [OK_TASK])
        assert reply["status_code"] == 20000


async def test_over_the_in_flight_cap_gets_40209(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(max_in_flight=3, latency_ms=500)) as emu:
        replies = await asyncio.gather(*(post_tasks(http, emu, [OK_TASK]) for _ in range(8)))
        codes = sorted(r["status_code"] for _, r in replies)
        assert codes == [20000] * 3 + [40209] * 5
        assert all(r["tasks"] is None for _, r in replies if r["status_code"] == 40209)
        assert len(emu.created) == 3
        assert emu.in_flight == 0
        # Once the held calls are answered there is room again.
        _, reply = await post_tasks(http, emu, [OK_TASK])
        assert reply["status_code"] == 20000


# ---- life cycle -----------------------------------------------------------------------------


async def test_task_post_tasks_ready_task_get_life_cycle(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(completion_delay_s=2.0)) as emu:
        tasks = [{**OK_TASK, "user_prompt": f"question {i}", "tag": f"t{i}"} for i in range(3)]
        _, reply = await post_tasks(http, emu, tasks)
        ids = [t["id"] for t in reply["tasks"]]
        _, other = await post_tasks(
            http, emu, [{"user_prompt": "q", "model_name": "gemini-2.5-flash"}], se="gemini"
        )
        # Not done yet: queued, nothing ready.
        early = await task_get(http, emu, ids[0])
        assert early["status_code"] in (40601, 40602)
        assert early["status_message"] in ("Task Handed.", "Task in Queue.")
        assert early["result"] is None and early["id"] == ids[0]
        assert await tasks_ready(http, emu) == []
        await asyncio.sleep(2.1)
        ready = await tasks_ready(http, emu)
        assert [r["id"] for r in ready] == ids  # only this engine's tasks, in creation order
        assert [r["tag"] for r in ready] == ["t0", "t1", "t2"]
        for item in ready:
            assert item["se"] == "chat_gpt"
            assert (
                item["endpoint"]
                == f"/v3/ai_optimization/chat_gpt/llm_responses/task_get/{item['id']}"
            )
            assert len(item["date_posted"]) == len("2026-11-25 10:00:00 +00:00")
        got = await task_get(http, emu, ids[1])
        assert got["status_code"] == 20000 and got["result_count"] == 1
        assert got["data"]["tag"] == "t1" and got["data"]["se"] == "chat_gpt"
        [result] = got["result"]
        assert result["model_name"] == "gpt-4.1-mini-2025-04-14"
        assert result["input_tokens"] > 0 and result["output_tokens"] > 0
        assert result["money_spent"] <= got["cost"]
        text = result["items"][0]["sections"][0]["text"]
        assert "question 1" in text
        # Collected once: gone from tasks_ready, still available from task_get.
        assert [r["id"] for r in await tasks_ready(http, emu)] == [ids[0], ids[2]]
        assert (await task_get(http, emu, ids[1]))["status_code"] == 20000
        gemini = await tasks_ready(http, emu, se="gemini")
        assert [r["id"] for r in gemini] == [other["tasks"][0]["id"]]


async def test_task_get_of_an_unknown_id_is_a_task_error(http: aiohttp.ClientSession) -> None:
    async with Emulator() as emu:
        got = await task_get(http, emu, "01010101-0000-0000-0000-000000000000")
        assert got["status_code"] == 40401 and got["result"] is None
        _, reply = await post_tasks(http, emu, [OK_TASK])
        # A task of another engine is not found under this one.
        got = await task_get(http, emu, reply["tasks"][0]["id"], se="claude")
        assert got["status_code"] == 40401


async def test_tasks_ready_shows_at_most_1000(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(tasks_ready_rate=None)) as emu:
        for _ in range(11):
            await post_tasks(http, emu, [OK_TASK] * 100)
        ready = await tasks_ready(http, emu)
        assert len(ready) == 1000
        assert [r["id"] for r in ready] == [c.id for c in emu.created[:1000]]
        for item in ready[:150]:
            await task_get(http, emu, item["id"])
        assert len(await tasks_ready(http, emu)) == 950


# ---- id_list --------------------------------------------------------------------------------


def stamp(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +00:00", time.gmtime(unix_s))


async def test_id_list_by_time_window_with_metadata(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(completion_delay_s=30.0)) as emu:
        _, reply = await post_tasks(http, emu, [{**OK_TASK, "tag": f"t{i}"} for i in range(5)])
        ids = [t["id"] for t in reply["tasks"]]
        now = emu.now_unix
        window = {"datetime_from": stamp(now - 60), "datetime_to": stamp(now)}
        queries = [
            {**window, "include_metadata": True},
            {**window, "sort": "desc", "limit": 2, "offset": 1},
            {"datetime_from": stamp(now - 3600), "datetime_to": stamp(now - 120)},
            {"datetime_from": stamp(now - 60)},
            {**window, "limit": 1001},
        ]
        for path in ("/v3/ai_optimization/id_list", "/v3/appendix/id_list"):
            status, reply = await call(http, emu, "POST", path, queries)
            assert status == 200 and reply["status_code"] == 20000
            full, page, empty, missing, too_many = reply["tasks"]
            assert [r["id"] for r in full["result"]] == ids
            assert full["result_count"] == 5
            first = full["result"][0]
            assert first["metadata"]["tag"] == "t0"
            assert first["metadata"]["user_prompt"] == "hello"
            assert first["status"] == "in_progress" and first["datetime_done"] is None
            assert first["cost"] == 0.0102
            assert first["url"].endswith("/v3/ai_optimization/chat_gpt/llm_responses/task_post")
            assert first["datetime_posted"] == stamp(emu.created[0].posted_at)
            assert [r["id"] for r in page["result"]] == [ids[3], ids[2]]
            assert all(r["metadata"] is None for r in page["result"])
            assert empty["status_code"] == 20000 and empty["result"] == []
            assert missing["status_code"] == 40501 and "datetime_to" in missing["status_message"]
            assert too_many["status_code"] == 40501 and "limit" in too_many["status_message"]
            assert reply["tasks_error"] == 2
        emu.complete_all()
        _, reply = await call(http, emu, "POST", "/v3/ai_optimization/id_list", [window])
        done = reply["tasks"][0]["result"][0]
        assert done["status"] == "ok" and done["datetime_done"] is not None


async def test_id_list_window_is_inclusive_by_second(http: aiohttp.ClientSession) -> None:
    async with Emulator() as emu:
        await post_tasks(http, emu, [OK_TASK])
        posted = stamp(emu.created[0].posted_at)
        query = [{"datetime_from": posted, "datetime_to": posted}]
        _, reply = await call(http, emu, "POST", "/v3/ai_optimization/id_list", query)
        assert [r["id"] for r in reply["tasks"][0]["result"]] == [emu.created[0].id]


# ---- faults ---------------------------------------------------------------------------------


async def test_fail_rate_answers_500_and_creates_nothing(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(fail_rate=1.0)) as emu:
        status, body = await post_tasks(http, emu, [OK_TASK] * 3)
        assert status == 500
        assert isinstance(body, str) and "status_code" not in body
        assert emu.created == [] and emu.tasks_created == 0
        assert emu.calls[-1].http_status == 500 and emu.calls[-1].status_code is None


async def test_drop_rate_creates_tasks_then_drops_the_reply() -> None:
    async with Emulator(EmulatorConfig(drop_rate=1.0)) as emu:
        async with aiohttp.ClientSession(headers=AUTH) as s:
            with pytest.raises(aiohttp.ClientConnectionError):
                await post_tasks(s, emu, [{**OK_TASK, "tag": "lost-reply"}])
        assert [c.tag for c in emu.created] == ["lost-reply"]
        assert emu.calls[-1].dropped and emu.calls[-1].http_status == 0
        assert emu.calls[-1].tasks_created == 1


async def test_funds_run_out_with_402_40210(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(funds_usd=0.05)) as emu:
        status, reply = await post_tasks(http, emu, [OK_TASK] * 4)
        assert status == 200 and reply["cost"] == pytest.approx(0.0408)
        assert emu.balance_usd == pytest.approx(0.0092)
        # Refused whole: one task more than the balance pays for creates nothing.
        status, reply = await post_tasks(http, emu, [OK_TASK])
        assert status == 402
        assert reply["status_code"] == 40210 and reply["status_message"] == "Balance is too low."
        assert reply["tasks"] is None
        assert len(emu.created) == 4
        # A call whose tasks are all invalid costs nothing and is not refused.
        status, reply = await post_tasks(http, emu, [{"user_prompt": "x"}])
        assert status == 200 and reply["tasks"][0]["status_code"] == 40501
        emu.reconfigure(funds_usd=1.0)
        status, reply = await post_tasks(http, emu, [OK_TASK] * 2)
        assert status == 200 and emu.balance_usd == pytest.approx(1.0 - 0.0204)


async def test_latency_delays_every_answer(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(latency_ms=200)) as emu:
        for method, path in (
            ("GET", "/v3/appendix/user_data"),
            ("POST", LLM.format(se="chat_gpt") + "/task_post"),
        ):
            started = time.monotonic()
            await call(http, emu, method, path, [OK_TASK] if method == "POST" else None)
            assert time.monotonic() - started >= 0.2


def test_latency_counts_from_the_calls_arrival() -> None:
    # The service's latency is the time it takes to answer, its own work included: what the
    # emulator spent on a call (a 100-task body takes a millisecond or more) is not added.
    assert answer_delay_s(arrived_at=10.0, latency_s=0.4, now=10.0) == pytest.approx(0.4)
    assert answer_delay_s(arrived_at=10.0, latency_s=0.4, now=10.3) == pytest.approx(0.1)
    assert answer_delay_s(arrived_at=10.0, latency_s=0.4, now=10.5) == 0.0


async def test_spurious_401_with_right_credentials(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(spurious_401_rate=1.0)) as emu:
        status, reply = await post_tasks(http, emu, [OK_TASK])
        assert status == 401 and reply["status_code"] == 40100
        assert emu.created == []
        emu.reconfigure(spurious_401_rate=0.0)
        status, reply = await post_tasks(http, emu, [OK_TASK])
        assert status == 200


async def test_faults_are_reproducible_with_a_seed(http: aiohttp.ClientSession) -> None:
    patterns = []
    for _ in range(2):
        async with Emulator(EmulatorConfig(fail_rate=0.5, seed=42)) as emu:
            statuses = [(await post_tasks(http, emu, [OK_TASK]))[0] for _ in range(20)]
            patterns.append(statuses)
            assert len(emu.created) == statuses.count(200)
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 500}


# ---- record, inspection, start/close --------------------------------------------------------


async def test_record_false_keeps_counters_only(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorConfig(record=False)) as emu:
        _, reply = await post_tasks(http, emu, [OK_TASK] * 7)
        assert reply["tasks_count"] == 7
        assert emu.created == [] and emu.calls == []
        assert emu.tasks_created == 7 and emu.calls_count == 1


async def test_inspection_endpoints(http: aiohttp.ClientSession) -> None:
    async with Emulator() as emu, aiohttp.ClientSession() as plain:
        await post_tasks(http, emu, [{**OK_TASK, "tag": "x"}, {**OK_TASK, "tag": "y"}])
        async with plain.get(emu.base_url + "/_emulator/created") as resp:
            created = orjson.loads(await resp.read())
        assert [c["tag"] for c in created] == ["x", "y"]
        assert set(created[0]) >= {
            "id",
            "engine",
            "tag",
            "user_prompt",
            "model_name",
            "posted_at",
            "data",
        }
        assert created[0]["id"] == emu.created[0].id
        async with plain.get(emu.base_url + "/_emulator/created?offset=1") as resp:
            assert [c["tag"] for c in orjson.loads(await resp.read())] == ["y"]
        async with plain.get(emu.base_url + "/_emulator/calls") as resp:
            calls = orjson.loads(await resp.read())
        assert len(calls) == 1
        assert calls[0]["tasks_created"] == 2 and calls[0]["http_status"] == 200
        assert {"at", "at_wall", "path", "http_status", "status_code"} <= set(calls[0])
        async with plain.post(emu.base_url + "/_emulator/config", data=b'{"rate": 1}') as resp:
            assert resp.status == 200
            assert orjson.loads(await resp.read())["rate"] == 1
        assert emu.config.rate == 1
        async with plain.post(emu.base_url + "/_emulator/config", data=b'{"rate": 0}') as resp:
            assert resp.status == 400
        async with plain.post(emu.base_url + "/_emulator/config", data=b'{"nope": 1}') as resp:
            assert resp.status == 400
        async with plain.get(emu.base_url + "/_emulator/stats") as resp:
            stats = orjson.loads(await resp.read())
        assert stats["tasks_created"] == 2 and stats["calls"] == 1


async def test_start_and_close_without_context_manager(http: aiohttp.ClientSession) -> None:
    emu = Emulator(EmulatorConfig(), host="127.0.0.1", port=0)
    await emu.start()
    try:
        assert emu.base_url.startswith("http://127.0.0.1:") and emu.port > 0
        status, _ = await post_tasks(http, emu, [OK_TASK])
        assert status == 200
    finally:
        await emu.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_tasks(http, emu, [OK_TASK])
