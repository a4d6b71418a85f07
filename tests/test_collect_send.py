"""Collect's calls in-process: a ledger filled by an in-memory submit, then ``Collector``
with its client's transport in memory, so each tasks_ready and task_get reply is given
exactly as written here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks import AuthError, Submitter
from llmtasks._collect import Collector
from llmtasks._ledger import Ledger
from llmtasks._results_file import Result
from llmtasks._transport import MemoryTransport, Reply, classify
from tests.test_submit_send import Borrowed, created

LOST = Reply("unknown", None, None, "connection lost")
REFUSED = Reply("auth", 401, 40100, "Unauthorized.")
BASE = "/v3/ai_optimization/chat_gpt/llm_responses"


async def _ledger(path: Path, n: int) -> list[str]:
    """A ledger of ``n`` created tasks; their ids."""
    ledger = Ledger.open(str(path), input_name="t", engine="chat_gpt")
    sub = Submitter(
        default_model="gpt-4o",
        ledger=ledger,
        rate=6000,
        transport=MemoryTransport(lambda m, p, body: created(body)),
    )
    async with sub:
        await sub.load_models(offline=True)
        got = [r async for r in sub.submit({"user_prompt": f"p{i}"} for i in range(n))]
    ledger.close()
    return sorted(str(r.task_id) for r in got)


def ready(ids: list[str]) -> Reply:
    items = [{"id": i, "tag": None} for i in ids]
    task = {"status_code": 20000, "result": items}
    return classify(200, orjson.dumps({"status_code": 20000, "tasks": [task]}))


def got(task_id: str, code: int = 20000, message: str = "Ok.") -> Reply:
    task = {"id": task_id, "status_code": code, "status_message": message, "result": [{"a": 1}]}
    return classify(200, orjson.dumps({"status_code": 20000, "tasks": [task]}))


class Service:
    """Answers by path: tasks_ready from ``polls``, task_get from ``gets[id]`` (each a list
    used in order), writing down every call."""

    def __init__(self, polls: list[Reply], gets: dict[str, list[Reply]]) -> None:
        self.polls, self.gets = polls, gets
        self.calls: list[str] = []

    def __call__(self, method: str, path: str, body: bytes | None) -> Reply:
        assert method == "GET" and path.startswith(BASE)
        what = path[len(BASE) + 1 :]
        self.calls.append(what)
        if what == "tasks_ready":
            return self.polls.pop(0)
        return self.gets[what.removeprefix("task_get/")].pop(0)


async def collect(
    path: Path, service: Service, **kw: Any
) -> tuple[list[Result], Collector, Exception | None]:
    c = Collector(
        ledger=str(path),
        backoff_s=0.001,
        max_backoff_s=0.001,
        tasks_ready_rate=6000,
        transport=kw.pop("transport", None) or MemoryTransport(service),
        **kw,
    )
    results: list[Result] = []
    error: Exception | None = None
    async with c:
        try:
            async for r in c.collect():
                results.append(r)
        except Exception as exc:
            error = exc
    return results, c, error


@pytest.fixture
def one(tmp_path: Path) -> Callable[[], Any]:
    async def make() -> tuple[Path, str]:
        path = tmp_path / "run.sqlite"
        (task_id,) = await _ledger(path, 1)
        return path, task_id

    return make


async def test_a_ready_task_is_fetched_once(one: Callable[[], Any]) -> None:
    path, tid = await one()
    service = Service([ready([tid])], {tid: [got(tid)]})
    results, c, error = await collect(path, service)
    assert error is None and service.calls == ["tasks_ready", f"task_get/{tid}"]
    assert [(r.task_id, r.ok, r.result) for r in results] == [(tid, True, [{"a": 1}])]
    assert (c.stats.polls, c.stats.calls, c.stats.retries) == (1, 1, 0)


async def test_a_given_transport_carries_every_call_and_stays_the_callers(
    one: Callable[[], Any],
) -> None:
    path, tid = await one()
    service = Service([ready([tid])], {tid: [got(tid)]})
    transport = Borrowed(service)  # fails if the Collector opens or closes it
    results, c, error = await collect(path, service, transport=transport)
    assert error is None and c.transport is transport and [r.task_id for r in results] == [tid]
    assert [p.rsplit("/", 2)[-2:] for _, p, _ in transport.requests] == [
        ["llm_responses", "tasks_ready"],
        ["task_get", tid],
    ]


async def test_lost_replies_of_reads_are_asked_again(one: Callable[[], Any]) -> None:
    path, tid = await one()
    service = Service([LOST, ready([tid])], {tid: [LOST, LOST, got(tid)]})
    results, c, error = await collect(path, service)
    assert error is None and [r.task_id for r in results] == [tid]
    assert (c.stats.polls, c.stats.calls, c.stats.retries) == (2, 3, 3)


@pytest.mark.parametrize("code", [40202, 40209])
async def test_a_task_level_rate_answer_is_asked_again(one: Callable[[], Any], code: int) -> None:
    path, tid = await one()
    service = Service([ready([tid])], {tid: [got(tid, code, "later"), got(tid)]})
    results, c, _ = await collect(path, service)
    assert [r.ok for r in results] == [True] and c.stats.calls == 2


@pytest.mark.parametrize("code", [40401, 40403])
async def test_a_task_that_is_gone_is_recorded_and_not_asked_again(
    one: Callable[[], Any], code: int
) -> None:
    path, tid = await one()
    gone = classify(404, orjson.dumps({"status_code": code, "status_message": "Gone."}))
    service = Service([ready([tid])], {tid: [gone, got(tid)]})
    results, c, _ = await collect(path, service)
    assert [(r.status_code, r.status_message) for r in results] == [(code, "Gone.")]
    assert c.stats.calls == 1


async def test_a_task_still_running_is_left_for_a_later_poll(one: Callable[[], Any]) -> None:
    path, tid = await one()
    service = Service([ready([tid])], {tid: [got(tid, 40602, "Task In Queue."), got(tid)]})
    results, c, _ = await collect(path, service)
    assert results == [] and c.stats.calls == 1 and c.stats.not_ready == 1


async def test_refused_credentials_at_the_first_poll_stop_collect(
    one: Callable[[], Any],
) -> None:
    path, tid = await one()
    service = Service([REFUSED, ready([tid])], {})
    results, c, error = await collect(path, service)
    assert c.stats.polls == 1 and c.stats.retries == 0
    assert isinstance(error, AuthError) and "refused the credentials" in str(error)
    assert results == [] and service.calls == ["tasks_ready"]


async def test_a_401_after_a_success_is_asked_again(one: Callable[[], Any]) -> None:
    path, tid = await one()
    service = Service([ready([tid])], {tid: [REFUSED, got(tid)]})
    results, c, error = await collect(path, service)
    assert error is None and [r.ok for r in results] == [True]
    assert c.stats.retries == 1


async def test_a_read_failing_max_attempts_times_is_asked_first_next_round(
    one: Callable[[], Any],
) -> None:
    path, tid = await one()
    service = Service([ready([tid]), ready([])], {tid: [LOST, LOST, got(tid)]})
    results, c, error = await collect(path, service, max_attempts=2)
    # Given up after two attempts, left marked fetching: fetched by id before the next poll.
    get = f"task_get/{tid}"
    assert service.calls == ["tasks_ready", get, get, get, "tasks_ready"]
    assert error is None and [r.task_id for r in results] == [tid]
    assert (c.stats.calls, c.stats.retries, c.stats.polls) == (3, 1, 2)
