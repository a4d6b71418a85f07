"""Submit's send step in-process: ``Submitter`` given a transport in memory
(``transport=``), so each reply the service could give is given exactly once, without a
network."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmtasks import AuthError, FundsError, Receipt, Submitter
from llmtasks._ledger import Ledger
from llmtasks._transport import MemoryTransport, Reply, classify

LOST = Reply("unknown", None, None, "connection lost")
LIMITED = Reply("retry", 200, 40202, "Rate-limit exceeded.")
REFUSED = Reply("auth", 401, 40100, "Unauthorized.")


def created(body: bytes | None) -> Reply:
    """The service's answer to a POST of ``body``: every task created, its tag echoed."""
    assert body is not None
    tasks = [
        {
            "id": f"id-{t['tag']}",
            "status_code": 20100,
            "status_message": "Task Created.",
            "cost": 0.01,
            "data": {"tag": t["tag"]},
        }
        for t in orjson.loads(body)
    ]
    env = {"status_code": 20000, "status_message": "Ok.", "cost": 0.01 * len(tasks)}
    return classify(200, orjson.dumps({**env, "tasks": tasks}))


class Script:
    """Answers POSTs from a list: a Reply as it is, None for ``created``."""

    def __init__(self, *answers: Reply | None) -> None:
        self.answers = list(answers)
        self.posts: list[bytes | None] = []

    def __call__(self, method: str, path: str, body: bytes | None) -> Reply:
        assert method == "POST" and path.endswith("/llm_responses/task_post")
        self.posts.append(body)
        answer = self.answers.pop(0)
        return created(body) if answer is None else answer


class Told:
    """A throttle that lets every call through and writes down what it is told."""

    def __init__(self) -> None:
        self.told: list[str] = []

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        yield 0.0

    def react(self, reply: Reply, admitted_at: float) -> None:
        self.told.append(reply.kind)


async def run(
    script: Script, n: int = 3, **kw: Any
) -> tuple[list[Receipt], Submitter, Exception | None]:
    ledger = Ledger.open(":memory:", input_name="t", engine="chat_gpt")
    options: dict[str, Any] = {"backoff_s": 0.001, "max_backoff_s": 0.001, **kw}
    sub = Submitter(
        default_model="gpt-4o",
        ledger=ledger,
        rate=6000,
        transport=MemoryTransport(script),
        **options,
    )
    told = Told()
    sub.throttle = told
    got: list[Receipt] = []
    error: Exception | None = None
    async with sub:
        await sub.load_models(offline=True)
        try:
            async for r in sub.submit({"user_prompt": f"p{i}"} for i in range(n)):
                got.append(r)
        except Exception as exc:
            error = exc
    sub.told = told.told  # type: ignore[attr-defined]
    return sorted(got, key=lambda r: r.line), sub, error


async def test_created_tasks_get_their_ids_from_one_post() -> None:
    script = Script(None)
    got, sub, error = await run(script)
    assert error is None and len(script.posts) == 1
    assert [(r.state, r.task_id) for r in got] == [("created", f"id-{r.tag}") for r in got]
    assert sub.told == ["ok"] and sub.stats.retries == 0  # type: ignore[attr-defined]


async def test_a_lost_reply_is_unknown_and_never_sent_again() -> None:
    script = Script(LOST, None)
    got, sub, error = await run(script)
    assert error is None and len(script.posts) == 1
    assert {r.state for r in got} == {"unknown"}
    assert {r.reason for r in got} == {"reply lost: connection lost"}
    assert sub.told == ["unknown"]  # type: ignore[attr-defined]


async def test_a_rate_limited_post_is_sent_again_the_same() -> None:
    script = Script(LIMITED, LIMITED, None)
    got, sub, error = await run(script)
    assert error is None and len(script.posts) == 3
    assert script.posts[0] == script.posts[1] == script.posts[2]
    assert {r.state for r in got} == {"created"}
    assert sub.stats.retries == 2
    assert sub.told == ["retry", "retry", "ok"]  # type: ignore[attr-defined]


async def test_a_post_limited_every_time_is_given_up_and_left_pending() -> None:
    script = Script(LIMITED, LIMITED, None)
    got, sub, error = await run(script, max_attempts=2)
    assert error is None and len(script.posts) == 2
    assert sub.stats.retries == 1 and sub.told == ["retry", "retry"]  # type: ignore[attr-defined]
    assert {r.state for r in got} == {"pending"}
    assert {r.reason for r in got} == {"gave up after 2 attempts: Rate-limit exceeded."}


async def test_refused_credentials_stop_the_run_and_are_not_asked_again() -> None:
    script = Script(REFUSED, None)
    got, _, error = await run(script)
    assert isinstance(error, AuthError) and len(script.posts) == 1
    assert "refused the credentials" in str(error)
    assert {r.state for r in got} == {"pending"}
    assert {r.reason for r in got} == {"not sent: Unauthorized."}


async def test_a_401_after_a_success_is_the_services_glitch_asked_again() -> None:
    script = Script(None, REFUSED, REFUSED, None)
    got, sub, error = await run(script, n=2, batch_size=1, concurrency=1)
    assert error is None and len(script.posts) == 4
    assert [r.state for r in got] == ["created", "created"]
    assert sub.stats.retries == 2


async def test_a_budget_that_cannot_cover_a_post_sends_nothing() -> None:
    script = Script(None)
    got, _, error = await run(script, max_cost_usd=0.01, max_task_cost_usd=0.05)
    assert isinstance(error, FundsError) and script.posts == []
    assert {r.reason for r in got} == {"not sent: --max-cost-usd reached"}


def _slow_retrying(posts: list[bytes | None], *, stop_first: bool = False) -> Submitter:
    """Every POST answered 40202, whose backoff is a minute; ``stop_first``: Ctrl-C while
    the call is out (its 40202 would then wait that minute)."""

    def answer(method: str, path: str, body: bytes | None) -> Reply:
        if stop_first:
            sub.stop()
        posts.append(body)
        return LIMITED

    sub = Submitter(
        default_model="gpt-4o",
        ledger=Ledger.open(":memory:", input_name="t", engine="chat_gpt"),
        rate=6000,
        backoff_s=60.0,
        max_backoff_s=60.0,
        transport=MemoryTransport(answer),
    )
    return sub


async def test_a_stop_while_a_call_is_out_records_its_reply_as_it_came() -> None:
    posts: list[bytes | None] = []
    sub = _slow_retrying(posts, stop_first=True)
    async with sub:
        await sub.load_models(offline=True)
        got = [r async for r in sub.submit([{"user_prompt": "a"}])]
    assert len(posts) == 1 and [r.state for r in got] == ["pending"]
    assert got[0].reason == "gave up after 1 attempts: Rate-limit exceeded."


async def test_a_stop_during_a_backoff_cuts_it_short() -> None:
    posts: list[bytes | None] = []
    sub = _slow_retrying(posts)
    async with sub:
        await sub.load_models(offline=True)
        asyncio.get_running_loop().call_later(0.05, sub.stop)
        got = await asyncio.wait_for(_all(sub.submit([{"user_prompt": "a"}])), 5.0)
    assert len(posts) == 1 and [r.state for r in got] == ["pending"]
    assert got[0].reason == "not sent: the run stopped"
    assert sub.interrupted and sub.stats.retries == 1


async def _all(receipts: AsyncIterator[Receipt]) -> list[Receipt]:
    return [r async for r in receipts]


class Borrowed(MemoryTransport):
    """A transport its owner opens and closes: the Submitter must do neither."""

    async def __aenter__(self) -> Borrowed:
        raise AssertionError("the Submitter opened a transport it was given")

    async def __aexit__(self, *exc: object) -> None:
        raise AssertionError("the Submitter closed a transport it was given")


def _service(method: str, path: str, body: bytes | None) -> Reply:
    """user_data (task_post limit 600 a minute), the models list, and task_post."""
    ok = {"status_code": 20000, "status_message": "Ok."}
    if path == "/v3/appendix/user_data":
        minute = {"total": 2000, "ai_optimization": {"llm_responses": {"task_post": 600}}}
        result = {"money": {"balance": 5.0}, "rates": {"limits": {"minute": minute}}}
        return classify(200, orjson.dumps({**ok, "tasks": [{**ok, "result": [result]}]}))
    if path.endswith("/llm_responses/models"):
        model = {"model_name": "gpt-4o", "reasoning": False, "web_search_supported": True}
        result = [{**model, "task_post_supported": True}]
        return classify(200, orjson.dumps({**ok, "tasks": [{**ok, "result": result}]}))
    return created(body)


async def test_a_given_transport_carries_every_call_and_stays_the_callers() -> None:
    transport = Borrowed(_service)
    sub = Submitter(
        ledger=Ledger.open(":memory:", input_name="t", engine="chat_gpt"),
        default_model="gpt-4o",
        batch_size=2,
        models_cache_dir="",
        transport=transport,
    )
    assert sub.transport is transport
    async with sub:
        account = await sub.preflight(tasks_hint=3)
        got = [r async for r in sub.submit({"user_prompt": f"p{i}"} for i in range(3))]
    # The account check, the models list and two POSTs, all through it, in that order.
    assert [(m, p.rsplit("/", 1)[1]) for m, p, _ in transport.requests] == [
        ("GET", "user_data"),
        ("GET", "models"),
        ("POST", "task_post"),
        ("POST", "task_post"),
    ]
    assert account is not None and account.balance_usd == 5.0
    # The account's own limit became the rate; the list it gave checked the tasks.
    assert sub.limiter.rate == 600 and sub.models is not None and sub.models.source == "service"
    assert sorted((r.line, r.state, r.task_id == f"id-{r.tag}") for r in got) == [
        (1, "created", True),
        (2, "created", True),
        (3, "created", True),
    ]
