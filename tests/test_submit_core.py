"""What ``Submitter`` decides, in this process, through its public API: how lines become
batches, what each reply of task_post means for its lines (created, rejected, failed,
unknown, pending), what is retried, what stops the run, what a resumed run skips, and what
the ledger keeps of all that.

The real emulator serves every call; a small loopback proxy in front of it can, for one
task_post call at a time, drop the reply after the emulator created the tasks, answer in
the emulator's stead (a 40202, a 401...), or edit the emulator's reply (tasks out of order,
one task missing). Everything runs in this process so that mutation testing
(``benchmarks/mutation.py``) sees ``llmtasks/_submit.py``; the CLI tests show the same
through subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmtasks import AuthError, ConfigError, FundsError, InputError, Receipt, Submitter, Task
from llmtasks._batching import prompt_digest
from llmtasks._decode import InputLine
from llmtasks._errors import ServiceError
from llmtasks._ledger import Ledger
from llmtasks._ledger_writer import LedgerWriteError, LedgerWriter
from llmtasks._lines import record_digest
from llmtasks._pace import RunStats
from llmtasks._ratelimit import ConcurrencyGate, RateLimiter
from llmtasks._replies import _field_of
from llmtasks._task import ENGINES
from llmtasks._throttle import LocalThrottle, RetryPolicy, Throttle
from llmtasks._transport import Reply
from llmtasks.emulator import Emulator, EmulatorConfig

TASK_POST = "/v3/ai_optimization/chat_gpt/llm_responses/task_post"
COST = 0.0102  # the emulator's price of a task (the documented example's)

Action = (
    str
    | tuple[int, dict[str, Any]]
    | tuple[str, float, Any]  # ("delay", seconds, action): the action, that much later
    | Callable[[dict[str, Any]], dict[str, Any]]
)


class Proxy:
    """Loopback HTTP in front of an emulator. Each task_post call takes the next action of
    ``script`` ("pass" once the script is used up), or of its batch's script:

    - ``"pass"``: the emulator's reply as it is;
    - ``"drop"``: the emulator handles the call, then the connection is cut before the
      reply (the tasks exist, the client cannot know);
    - ``(http_status, envelope)``: this reply instead, the emulator never sees the call;
    - a function: the emulator's reply envelope, edited by it.
    """

    def __init__(
        self, emu: Emulator, script: Iterable[Action] | dict[str, list[Action]] = ()
    ) -> None:
        self.emu = emu
        # A dict: a script per batch, by the user_prompt of its first task (senders take
        # turns while one waits out a backoff, so calls of two batches interleave).
        self.scripts = script if isinstance(script, dict) else {"": list(script)}
        # Replies in the stead of the emulator's for other paths (user_data...), in turn.
        self.others: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.posts: list[list[dict[str, Any]]] = []  # the body of each task_post call
        self.raw_posts: list[bytes] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def __aenter__(self) -> Proxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        headers["Content-Type"] = "application/json"
        async with self._session.request(
            request.method, self.emu.base_url + request.path_qs, data=body, headers=headers
        ) as resp:
            return resp.status, await resp.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path != TASK_POST:
            other = self.others.get(request.path)
            if other:
                status, env = other.pop(0)
                return web.Response(status=status, body=json.dumps(env).encode())
            status, raw = await self._forward(request, body)
            return web.Response(status=status, body=raw, content_type="application/json")
        self.posts.append(json.loads(body))
        self.raw_posts.append(body)
        script = self.scripts.get("" if "" in self.scripts else self.posts[-1][0]["user_prompt"])
        action = script.pop(0) if script else "pass"
        if isinstance(action, tuple) and action[0] == "delay":
            await asyncio.sleep(action[1])
            action = action[2]
        if isinstance(action, tuple):
            status, envelope = action
            return web.Response(status=status, body=json.dumps(envelope).encode())
        status, raw = await self._forward(request, body)
        if action == "drop":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if callable(action):
            raw = json.dumps(action(json.loads(raw))).encode()
        return web.Response(status=status, body=raw, content_type="application/json")


def envelope(code: int, message: str) -> dict[str, Any]:
    return {"status_code": code, "status_message": message, "tasks": None}


RATE_LIMITED = (200, envelope(40202, "Rate limit exceeded."))
TOO_MANY_AT_ONCE = (200, envelope(40209, "Too many requests at once."))
NOT_AUTHORIZED = (401, envelope(40100, "You are not authorized."))
NO_FUNDS = (402, envelope(40200, "Payment Required."))
NOT_FOUND = (404, envelope(40400, "Not Found."))


def submitter(url: str, **kw: Any) -> Submitter:
    kw.setdefault("backoff_s", 0.001)
    kw.setdefault("max_backoff_s", 0.002)
    return Submitter(login="login", password="password", base_url=url, **kw)


def tasks(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"user_prompt": f"p{i}", "model_name": "gpt-4o"} for i in range(start, start + n)]


async def run(sub: Submitter, items: Iterable[Any]) -> list[Receipt]:
    return [r async for r in sub.submit(items)]


async def run_until(
    sub: Submitter, items: Iterable[Any], error: type[Exception]
) -> tuple[list[Receipt], Exception]:
    got: list[Receipt] = []
    with pytest.raises(error) as caught:
        async for r in sub.submit(items):
            got.append(r)
    return got, caught.value


def assert_own_tags(receipts: Iterable[Receipt]) -> None:
    """Every line that was to be sent names its own generated tag (``...:<line>``)."""
    for r in receipts:
        assert r.tag is not None and r.tag.endswith(f":{r.line}"), r


def by_line(receipts: list[Receipt]) -> dict[int, Receipt]:
    out = {r.line: r for r in receipts}
    assert len(out) == len(receipts), "one receipt per line"
    return out


def ledger_receipts(path: Path) -> dict[int, Receipt]:
    ledger = Ledger.open_existing(path)
    try:
        return {r.line: r for r in ledger.receipts()}
    finally:
        ledger.close()


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "batch size must be 1..100, not 0"),
        ({"batch_size": 101}, "batch size must be 1..100, not 101"),
        ({"concurrency": 0}, "concurrency must be 1..30 (the service allows 30 per account)"),
        ({"concurrency": 31}, "concurrency must be 1..30 (the service allows 30 per account)"),
        ({"max_attempts": 0}, "max attempts must be at least 1"),
        ({"max_cost_usd": -0.01}, "--max-cost-usd must not be negative"),
        ({"shard": (0, 2)}, "shard must be I/N with 1 <= I <= N, not 0/2"),
        ({"shard": (3, 2)}, "shard must be I/N with 1 <= I <= N, not 3/2"),
        ({"postback_url": "ftp://x/$id"}, "--postback-url must be an http(s) URL"),
        ({"pingback_url": "x/$id"}, "--pingback-url must be an http(s) URL"),
        ({"engine": "bing"}, "engine must be one of chat_gpt, claude, gemini, not 'bing'"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Submitter(login="a", password="b", **kw)
    assert str(caught.value).startswith(message)


def test_the_edges_of_each_setting_are_accepted() -> None:
    for kw in (
        {"batch_size": 1},
        {"batch_size": 100},
        {"concurrency": 1},
        {"concurrency": 30},
        {"max_attempts": 1},
        {"max_cost_usd": 0.0},
        {"shard": (1, 1)},
        {"shard": (2, 2)},
        {"postback_url": "http://h/$id", "pingback_url": "https://h/$id"},
    ):
        sub = Submitter(login="a", password="b", **kw)
        for name, value in kw.items():
            if name in ("postback_url", "pingback_url"):
                assert sub.push_fields[name] == value
            elif name not in ("concurrency", "max_attempts"):
                assert getattr(sub, name) == value
    sub = Submitter(login="a", password="b", concurrency=7, max_attempts=3, engine="claude")
    assert sub.concurrency == 7 == sub.gate.limit
    assert sub.retry.max_attempts == 3
    assert sub.path == "/v3/ai_optimization/claude/llm_responses/task_post"
    assert sub.rate_source == "the documented default" and not sub.rate_given
    assert sub.limiter.rate == 2000 and sub.limiter.period_s == 60.0
    given = Submitter(login="a", password="b", rate=120, period_s=30.0)
    assert given.rate_source == "--rate" and given.rate_given
    assert (given.limiter.rate, given.limiter.period_s) == (120, 30.0)
    assert given.push_fields == {}


async def test_submitting_outside_async_with_is_refused() -> None:
    sub = Submitter(login="a", password="b")
    with pytest.raises(RuntimeError) as caught:
        await run(sub, tasks(1))
    assert str(caught.value) == "use 'async with Submitter(...)' before submitting"


# -- batches and what a created task's receipt says ------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [(100, [100, 100, 50]), (40, [40] * 6 + [10])])
async def test_lines_go_in_batches_of_at_most_the_batch_size(
    size: int, expected: list[int], tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=size, concurrency=1, ledger=str(path)) as s,
    ):
        receipts = await run(s, tasks(250))
        assert [len(p) for p in proxy.posts] == expected
        # In input order within and across batches (concurrency 1).
        assert [t["user_prompt"] for p in proxy.posts for t in p] == [f"p{i}" for i in range(250)]
        assert s.stats.calls == len(expected) and s.stats.retries == 0
        assert s.stats.lines_read == 250 and s.stats.already_done == 0
        assert s.stats.by_state == {"created": 250}
        assert s.stats.cost_usd == pytest.approx(250 * COST)
        got = by_line(receipts)
        assert sorted(got) == list(range(1, 251))
        created = {t.id: t for t in emu.created}
        for line, r in got.items():
            t = created[r.task_id or ""]
            assert (r.state, r.status_code, r.status_message) == ("created", 20100, "Task Created.")
            assert r.cost == pytest.approx(COST)
            assert r.tag == t.tag and t.user_prompt == f"p{line - 1}"
            assert r.tag is not None and r.tag.endswith(f":{line}")
        assert ledger_receipts(path) == got


async def test_a_users_tag_and_push_urls_are_sent_and_the_rest_generated() -> None:
    async with Emulator() as emu, Proxy(emu) as proxy:
        items: list[Any] = [
            {"user_prompt": "mine", "model_name": "gpt-4o", "tag": "my-tag"},
            {"user_prompt": "generated", "model_name": "gpt-4o"},
            Task(user_prompt="own url", model_name="gpt-4o", pingback_url="http://own/$id"),
        ]
        push = f"{proxy.base_url}/push?id=$id"
        async with submitter(proxy.base_url, pingback_url=push) as s:
            got = by_line(await run(s, items))
        sent = proxy.posts[0]
        assert sent[0]["tag"] == "my-tag" == got[1].tag
        assert sent[1]["tag"] == got[2].tag and got[2].tag is not None
        assert got[2].tag.endswith(":2") and got[3].tag is not None and got[3].tag.endswith(":3")
        assert [t.get("pingback_url") for t in sent] == [push, push, "http://own/$id"]
        assert all("postback_url" not in t for t in sent)
        assert [t.tag for t in emu.created] == [got[1].tag, got[2].tag, got[3].tag]


async def test_lines_refused_before_sending_get_their_receipt_and_are_not_sent() -> None:
    async with Emulator() as emu, Proxy(emu) as proxy:
        lines = [
            InputLine(line=1, digest=b"1" * 8, task=Task(user_prompt="a", model_name="gpt-4o")),
            InputLine(line=2, digest=b"2" * 8, task=None, skipped=True, reason="blank line"),
            InputLine(line=3, digest=b"3" * 8, task=None, field="top_p", reason="too big"),
            InputLine(line=4, digest=b"4" * 8, task=Task(user_prompt="b", model_name="gpt-4o")),
        ]
        async with submitter(proxy.base_url) as s:
            got = by_line([r async for r in s.submit_lines(lines)])
        assert (got[2].state, got[2].field, got[2].reason) == ("skipped", None, "blank line")
        assert (got[3].state, got[3].field, got[3].reason) == ("rejected", "top_p", "too big")
        assert got[1].state == got[4].state == "created"
        assert [t["user_prompt"] for t in proxy.posts[0]] == ["a", "b"]
        assert len(emu.created) == 2
        assert s.stats.by_state == {"created": 2, "skipped": 1, "rejected": 1}


async def test_each_task_gets_the_outcome_of_its_own_status_code(tmp_path: Path) -> None:
    """Tasks the service refuses as invalid are rejected (never resent, blame on the field
    it names); any other code of a task is a failure; the others of the call are created."""
    path = tmp_path / "run.sqlite"

    def fail_third(env: dict[str, Any]) -> dict[str, Any]:
        env["tasks"][2].update(status_code=40006, status_message="Something else.", cost=0.5)
        return env

    lines = [
        InputLine(line=1, digest=b"1" * 8, task=Task(user_prompt="ok", model_name="gpt-4o")),
        # Not checked here (a Task built in Python is checked when decoded): the emulator's
        # own rules refuse it.
        InputLine(line=2, digest=b"2" * 8, task=Task(user_prompt="x" * 600, model_name="gpt-4o")),
        InputLine(line=3, digest=b"3" * 8, task=Task(user_prompt="fails", model_name="gpt-4o")),
    ]
    async with (
        Emulator() as emu,
        Proxy(emu, [fail_third]) as proxy,
        submitter(proxy.base_url, ledger=str(path)) as s,
    ):
        got = by_line([r async for r in s.submit_lines(lines)])
    assert got[1].state == "created"
    bad = got[2]
    assert (bad.state, bad.status_code, bad.field) == ("rejected", 40501, "user_prompt")
    assert bad.status_message is not None and bad.status_message.startswith(
        "Invalid Field: 'user_prompt'."
    )
    assert bad.reason == bad.status_message and bad.task_id is not None and bad.cost == 0
    failed = got[3]
    assert (failed.state, failed.status_code, failed.status_message) == (
        "failed",
        40006,
        "Something else.",
    )
    assert failed.task_id is not None and failed.field is None and failed.reason is None
    assert failed.cost == 0.5
    assert_own_tags(got.values())
    assert s.stats.by_state == {"created": 1, "rejected": 1, "failed": 1}
    assert s.stats.cost_usd == pytest.approx(2 * COST)  # the envelope's cost
    assert ledger_receipts(path) == got


async def test_without_an_envelope_cost_the_tasks_costs_are_summed() -> None:
    def no_total(env: dict[str, Any]) -> dict[str, Any]:
        env["cost"] = None
        env["tasks"][1]["cost"] = None
        return env

    async with (
        Emulator() as emu,
        Proxy(emu, [no_total]) as proxy,
        submitter(proxy.base_url) as s,
    ):
        await run(s, tasks(3))
    assert s.stats.cost_usd == pytest.approx(2 * COST)


async def test_a_reply_out_of_order_or_short_leaves_those_lines_unknown(tmp_path: Path) -> None:
    """A task reply whose tag is another line's cannot be trusted for either line; a line
    the reply does not mention may have been created: neither is created nor resent."""
    path = tmp_path / "run.sqlite"

    def swap(env: dict[str, Any]) -> dict[str, Any]:
        t = env["tasks"]
        t[0], t[1] = t[1], t[0]
        return env

    def short(env: dict[str, Any]) -> dict[str, Any]:
        env["tasks"] = env["tasks"][:-1]
        return env

    async with (
        Emulator() as emu,
        Proxy(emu, [swap, short]) as proxy,
        submitter(proxy.base_url, batch_size=3, concurrency=1, ledger=str(path)) as s,
    ):
        got = by_line(await run(s, tasks(6)))
    tag1, tag2 = got[1].tag, got[2].tag
    assert got[1].state == got[2].state == "unknown"
    assert got[1].reason == f"reply out of order (tag {tag2!r} for line 1)"
    assert got[2].reason == f"reply out of order (tag {tag1!r} for line 2)"
    assert got[1].task_id is None and got[1].status_code == 20100
    assert got[1].status_message == "Task Created."
    assert_own_tags(got.values())
    assert got[3].state == "created"
    assert [got[i].state for i in (4, 5, 6)] == ["created", "created", "unknown"]
    assert got[6].reason == "the service answered fewer tasks than were sent"
    assert got[6].status_code is None
    assert s.stats.by_state == {"created": 3, "unknown": 3}
    assert len(emu.created) == 6 and len(proxy.posts) == 2
    assert ledger_receipts(path) == got


async def test_a_call_refused_as_a_whole_fails_each_of_its_lines() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [(200, envelope(40006, "Odd refusal."))]) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1) as s,
    ):
        got = by_line(await run(s, tasks(4)))
    assert [(got[i].state, got[i].status_code) for i in (1, 2)] == [("failed", 40006)] * 2
    assert got[1].status_message == "Odd refusal." and got[1].reason is None
    assert_own_tags(got.values())
    assert got[3].state == got[4].state == "created"
    assert len(proxy.posts) == 2 and len(emu.created) == 2


# -- lost replies --------------------------------------------------------------------------


async def test_a_lost_reply_leaves_its_lines_unknown_and_no_run_resends_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu, ["pass", "drop"]) as proxy,
    ):
        async with submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s:
            got = by_line(await run(s, tasks(6)))
        assert [got[i].state for i in range(1, 7)] == ["created", "created"] + ["unknown"] * 2 + [
            "created",
            "created",
        ]
        lost = got[3]
        assert lost.reason is not None and lost.reason.startswith("reply lost: connection lost")
        assert lost.task_id is None and lost.status_code is None
        assert len(proxy.posts) == 3  # never asked again: the emulator did create them
        assert len(emu.created) == 6
        assert s.stats.by_state == {"created": 4, "unknown": 2}
        ledger = Ledger.open_existing(path)
        try:
            assert ledger.counts() == {"created": 4, "unknown": 2}
            assert ledger.batches_sending() == 0
        finally:
            ledger.close()

        # The next run with the same ledger: every line done (unknown included).
        async with submitter(proxy.base_url, batch_size=2, ledger=str(path)) as again:
            assert await run(again, tasks(6)) == []
        assert again.stats.already_done == 6 and again.stats.lines_read == 6
        assert len(proxy.posts) == 3

        # Only when asked: the unknown lines go again (the service now has them twice).
        async with submitter(
            proxy.base_url, batch_size=2, ledger=str(path), resend_unknown=True
        ) as resend:
            again_got = by_line(await run(resend, tasks(6)))
        assert sorted(again_got) == [3, 4] and again_got[3].state == "created"
        assert [t["user_prompt"] for t in proxy.posts[3]] == ["p2", "p3"]
        assert len(emu.created) == 8


async def test_a_run_killed_while_sending_leaves_unknown_lines_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A POST written ahead and never answered (the process died): the next run marks its
    lines unknown, warns, and does not send them."""
    path = tmp_path / "run.sqlite"
    items = tasks(3)
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
    ):
        async with submitter(proxy.base_url, ledger=str(path)) as first:
            await run(first, items)
        ledger = Ledger.open_existing(path)
        try:
            ledger.lock()
            ledger.begin_session()
            # What a write-ahead leaves: the batch marked sending, its reply never recorded.
            # (A line's row is written at its outcome; the batch row holds its digests.)
            with ledger._db:
                ledger._db.execute("UPDATE batches SET state = 'sending'")
                ledger._db.execute("DELETE FROM lines")
        except Exception:
            ledger.close()
            raise
        ledger.close()
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            async with submitter(proxy.base_url, ledger=str(path)) as again:
                assert await run(again, items) == []
        assert len(proxy.posts) == 1
    assert (
        "3 lines being sent when an earlier run stopped: marked unknown, not resent (run "
        "'llmtasks reconcile' to look them up)" in caplog.text
    )
    assert {r.state for r in ledger_receipts(path).values()} == {"unknown"}


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [RATE_LIMITED, TOO_MANY_AT_ONCE, (429, {"x": 1})])
async def test_a_call_refused_for_the_rate_is_sent_again_the_same(
    refusal: Action, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu, [refusal, refusal]) as proxy,
        submitter(proxy.base_url, concurrency=1, ledger=str(path)) as s,
    ):
        got = by_line(await run(s, tasks(5)))
    assert {r.state for r in got.values()} == {"created"}
    assert len(proxy.raw_posts) == 3 and len(set(proxy.raw_posts)) == 1  # the very same body
    assert len(emu.created) == 5
    assert s.stats.retries == 2 and s.stats.calls == 3
    assert s.stats.by_state == {"created": 5}
    ledger = Ledger.open_existing(path)
    try:
        assert ledger.counts() == {"created": 5}
        assert ledger.batch_summary().calls == 3
    finally:
        ledger.close()


async def test_the_ledger_counts_the_retries_made(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu, [RATE_LIMITED, RATE_LIMITED]) as proxy,
        submitter(proxy.base_url, ledger=str(path)) as s,
    ):
        await run(s, tasks(1))
    assert s.stats.retries == 2
    ledger = Ledger.open_existing(path)
    try:
        assert ledger.retries() == 2
    finally:
        ledger.close()


async def test_retries_stop_at_max_attempts_leaving_the_lines_pending(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    script = {"p0": [RATE_LIMITED] * 3}
    async with (
        Emulator() as emu,
        Proxy(emu, script) as proxy,
        submitter(
            proxy.base_url, batch_size=2, concurrency=1, max_attempts=3, ledger=str(path)
        ) as s,
    ):
        got = by_line(await run(s, tasks(4)))
    # Given up on the first batch; not a reason to stop the run: the second is sent.
    assert [got[i].state for i in (1, 2, 3, 4)] == ["pending", "pending", "created", "created"]
    assert got[1].reason == "gave up after 3 attempts: Rate limit exceeded."
    assert got[1].status_code == 40202 and got[1].status_message == "Rate limit exceeded."
    assert len(proxy.posts) == 4 and len(emu.created) == 2
    assert s.stats.retries == 2
    assert ledger_receipts(path)[1].state == "pending"


async def test_one_attempt_means_no_retry() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [RATE_LIMITED]) as proxy,
        submitter(proxy.base_url, max_attempts=1) as s,
    ):
        got = by_line(await run(s, tasks(2)))
    assert got[1].state == "pending" and got[1].reason == (
        "gave up after 1 attempts: Rate limit exceeded."
    )
    assert len(proxy.posts) == 1 and s.stats.retries == 0 and emu.created == []


async def test_the_backoff_between_attempts_is_waited(tmp_path: Path) -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [RATE_LIMITED]) as proxy,
        submitter(proxy.base_url, backoff_s=0.4, max_backoff_s=0.4) as s,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = by_line(await run(s, tasks(1)))
        took = loop.time() - started
    assert got[1].state == "created" and len(emu.created) == 1
    assert took >= 0.2  # the upper half of the 0.4 s cap


# -- what stops a run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refusal", "error", "message"),
    [
        (
            NOT_AUTHORIZED,
            AuthError,
            "the service refused the credentials: You are not authorized. (status 40100, HTTP 401)",
        ),
        (
            NO_FUNDS,
            FundsError,
            "the account cannot pay for more tasks: Payment Required. (status 40200, HTTP 402)",
        ),
        (
            NOT_FOUND,
            ServiceError,
            "the service refused the call: Not Found. (status 40400, HTTP 404)",
        ),
    ],
)
async def test_a_refusal_of_the_account_stops_the_run_leaving_the_rest_pending(
    refusal: Action, error: type[Exception], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu, [refusal]) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s,
    ):
        # The built-in models list: a list read from the service would count as a
        # success, and a 401 after one is a glitch, tried again.
        await s.load_models(offline=True)
        got, exc = await run_until(s, tasks(6), error)
    assert str(exc) == message
    assert len(proxy.posts) == 1 and emu.created == []  # nothing after the refusal
    lines = by_line(got)
    assert {r.state for r in lines.values()} == {"pending"}
    assert lines[1].reason == f"not sent: {refusal[1]['status_message']}"  # type: ignore[index]
    assert lines[1].status_code == refusal[1]["status_code"]  # type: ignore[index]
    recorded = ledger_receipts(path)
    assert sorted(recorded) == [1, 2, 3, 4, 5, 6]
    assert {r.state for r in recorded.values()} == {"pending"}
    assert recorded[5].reason == "not sent: the run stopped"


async def test_a_401_after_a_success_is_a_glitch_tried_again_three_times(tmp_path: Path) -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, ["pass", NOT_AUTHORIZED, NOT_AUTHORIZED]) as proxy,
        submitter(proxy.base_url, batch_size=1, concurrency=1) as s,
    ):
        got = by_line(await run(s, tasks(3)))
    assert {r.state for r in got.values()} == {"created"}
    assert len(proxy.posts) == 5 and s.stats.retries == 2

    script: list[Action] = ["pass", *[NOT_AUTHORIZED] * 4]
    async with (
        Emulator() as emu,
        Proxy(emu, script) as proxy,
        submitter(proxy.base_url, batch_size=1, concurrency=1) as s,
    ):
        await s.load_models(offline=True)
        got_list, exc = await run_until(s, tasks(2), AuthError)
    assert str(exc) == (
        "the service stopped accepting the credentials: You are not authorized. "
        "(status 40100, HTTP 401)"
    )
    assert len(proxy.posts) == 5  # the success, then 1 + 3 glitches tried
    assert len(emu.created) == 1
    assert [(r.line, r.state) for r in sorted(got_list, key=lambda r: r.line)] == [
        (1, "created"),
        (2, "pending"),
    ]


async def test_a_glitch_count_is_per_call_not_per_run() -> None:
    script = {"p1": [NOT_AUTHORIZED] * 3, "p2": [NOT_AUTHORIZED] * 3}
    async with (
        Emulator() as emu,
        Proxy(emu, script) as proxy,
        submitter(proxy.base_url, batch_size=1, concurrency=1) as s,
    ):
        await s.load_models(offline=True)
        got = by_line(await run(s, tasks(3)))
    assert {r.state for r in got.values()} == {"created"}
    assert len(proxy.posts) == 9 and len(emu.created) == 3


async def test_a_401_before_any_success_is_not_retried() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [NOT_AUTHORIZED]) as proxy,
        submitter(proxy.base_url, batch_size=1, concurrency=1) as s,
    ):
        await s.load_models(offline=True)
        await run_until(s, tasks(2), AuthError)
    assert len(proxy.posts) == 1 and emu.created == []


async def test_a_user_data_success_makes_a_later_401_a_glitch() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [NOT_AUTHORIZED]) as proxy,
        submitter(proxy.base_url) as s,
    ):
        await s.load_models(offline=True)
        await s.preflight()
        got = by_line(await run(s, tasks(2)))
    assert {r.state for r in got.values()} == {"created"} and len(proxy.posts) == 2


async def test_a_models_list_read_from_the_service_makes_a_later_401_a_glitch() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [NOT_AUTHORIZED]) as proxy,
        submitter(proxy.base_url) as s,
    ):
        models = await s.load_models()
        assert models.source == "service"
        got = by_line(await run(s, tasks(2)))
    assert {r.state for r in got.values()} == {"created"} and len(proxy.posts) == 2


async def test_the_cost_cap_stops_before_the_call_that_could_pass_it(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    # Exactly two batches' worst case: the second is allowed, the third is not.
    cap = 20 * COST
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(
            proxy.base_url,
            batch_size=10,
            concurrency=1,
            max_cost_usd=cap,
            max_task_cost_usd=COST,
            ledger=str(path),
        ) as s,
    ):
        got, exc = await run_until(s, tasks(45), FundsError)
    assert str(exc) == (
        f"--max-cost-usd {cap} reached: the next call could cost up to $0.1020 more; "
        "unsent lines stay pending"
    )
    assert len(proxy.posts) == 2 and len(emu.created) == 20
    lines = by_line(got)
    assert Counter(r.state for r in lines.values()) == {"created": 20, "pending": 25}
    assert lines[21].reason == "not sent: --max-cost-usd reached"
    assert s.stats.reserved_usd == 0
    assert Counter(r.state for r in ledger_receipts(path).values()) == {
        "created": 20,
        "pending": 25,
    }


async def test_a_zero_cost_cap_sends_nothing() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, max_cost_usd=0.0) as s,
    ):
        got, _ = await run_until(s, tasks(3), FundsError)
    assert proxy.posts == [] and {r.state for r in got} == {"pending"}


async def test_stop_sends_nothing_new_and_records_the_rest_pending(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s,
    ):
        got: list[Receipt] = []
        async for r in s.submit(tasks(20)):
            got.append(r)
            if len(got) == 2:
                s.stop()
        assert s.interrupted
    lines = by_line(got)
    assert sorted(lines) == list(range(1, 21))
    sent = [t["user_prompt"] for p in proxy.posts for t in p]
    assert len(emu.created) == len(sent) < 20
    assert Counter(r.state for r in lines.values()) == {
        "created": len(sent),
        "pending": 20 - len(sent),
    }
    pending = [r for r in lines.values() if r.state == "pending"]
    assert {r.reason for r in pending} == {"not sent: the run stopped"}
    assert_own_tags(got)
    assert s.stats.by_state == {"created": len(sent), "pending": 20 - len(sent)}
    assert Counter(r.state for r in ledger_receipts(path).values())["pending"] == len(pending)


# -- resume --------------------------------------------------------------------------------


def _lines(prompts: list[str]) -> list[InputLine]:
    out = []
    for i, p in enumerate(prompts, 1):
        raw = json.dumps({"user_prompt": p, "model_name": "gpt-4o"}).encode()
        out.append(
            InputLine(
                line=i, digest=record_digest(raw), task=Task(user_prompt=p, model_name="gpt-4o")
            )
        )
    return out


async def test_a_resumed_run_sends_only_the_lines_not_done(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    prompts = [f"p{i}" for i in range(8)]
    lines = _lines(prompts)
    lines[5] = InputLine(line=6, digest=lines[5].digest, task=None, field="x", reason="bad")
    async with (
        Emulator() as emu,
        Proxy(emu, ["pass", NO_FUNDS]) as proxy,
    ):
        async with submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s:
            with pytest.raises(FundsError):
                async for _ in s.submit_lines(lines):
                    pass
        assert len(emu.created) == 2
        async with submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s:
            await s.verify(lines)
            got = by_line([r async for r in s.submit_lines(lines)])
        # Lines 1-2 created, 6 rejected: done. The rest were pending: sent now.
        assert sorted(got) == [3, 4, 5, 7, 8]
        assert {r.state for r in got.values()} == {"created"}
        assert s.stats.already_done == 3 and s.stats.lines_read == 8
        assert [t["user_prompt"] for p in proxy.posts[2:] for t in p] == [
            "p2",
            "p3",
            "p4",
            "p6",
            "p7",
        ]
        assert len(emu.created) == 7
        states = Counter(r.state for r in ledger_receipts(path).values())
        assert states == {"created": 7, "rejected": 1}


async def test_a_changed_input_is_refused_before_and_while_sending(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    prompts = [f"p{i}" for i in range(5)]
    async with (
        Emulator() as emu,
        Proxy(emu, ["pass", NO_FUNDS]) as proxy,
    ):
        async with submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s:
            with pytest.raises(FundsError):
                async for _ in s.submit_lines(_lines(prompts)):
                    pass
        changed = _lines([*prompts[:3], "other", prompts[4]])
        async with submitter(proxy.base_url, ledger=str(path), input_name="in.jsonl") as s:
            with pytest.raises(InputError) as caught:
                await s.verify(changed)
            assert str(caught.value) == (
                f"in.jsonl: line 4 is not the line recorded in ledger {path}: the input "
                "changed since that run. Use a new --ledger for a new input."
            )
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            with pytest.raises(InputError, match=r"^input: line 4 is not the line recorded"):
                async for _ in s.submit_lines(changed):
                    pass
            with pytest.raises(InputError) as short:
                await s.verify(_lines(prompts[:3]))
            assert "it has 3 lines, the ledger recorded 5 in ledger" in str(short.value)
            await s.verify(_lines(prompts))  # the same input: fine
            await s.verify(_lines([*prompts, "more"]))  # longer: the new lines are new
        assert len(proxy.posts) == 2


async def test_a_line_done_in_one_run_is_not_resent_when_the_input_grows(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
    ):
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            await run(s, tasks(3))
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            got = by_line(await run(s, tasks(5)))
        assert sorted(got) == [4, 5] and s.stats.already_done == 3
        assert [len(p) for p in proxy.posts] == [3, 2]
        assert len(emu.created) == 5


# -- shards --------------------------------------------------------------------------------


async def test_a_shard_takes_every_nth_line_from_its_own() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, shard=(2, 3)) as s,
    ):
        got = by_line(await run(s, tasks(10)))
        assert sorted(got) == [2, 5, 8]
        assert [t["user_prompt"] for t in proxy.posts[0]] == ["p1", "p4", "p7"]
        assert s.stats.lines_read == 3
        async with submitter(proxy.base_url, shard=(3, 3)) as s:
            assert sorted(by_line(await run(s, tasks(2)))) == []
        assert len(proxy.posts) == 1 and len(emu.created) == 3


# -- the account ---------------------------------------------------------------------------


async def test_the_accounts_limit_becomes_the_rate_unless_one_was_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Emulator(EmulatorConfig(rate=600, funds_usd=1.0)) as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, period_s=30.0) as s,
    ):
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            info = await s.preflight(tasks_hint=1000)
        assert info is not None and info.balance_usd == pytest.approx(1.0)
        assert s.limiter.rate == 300 and s.limiter.period_s == 30.0
        assert s.stats.window.limit == 300
        assert s.rate_source.startswith("the account's limit, ")
        assert (
            "the balance ($1.00) cannot cover the worst case of this input "
            "(1,000 tasks × $0.0102 = $10.20): the run will stop when it runs out"
        ) in caplog.text
        caplog.clear()
        async with submitter(proxy.base_url, rate=900) as given:
            with caplog.at_level(logging.WARNING, logger="llmtasks"):
                await given.preflight(tasks_hint=98)
            assert given.limiter.rate == 900 and given.rate_source == "--rate"
        assert "--rate is 900 calls per minute but the account allows 600" in caplog.text
        assert "cannot cover" not in caplog.text
        caplog.clear()
        async with submitter(proxy.base_url, rate=600) as same:
            with caplog.at_level(logging.WARNING, logger="llmtasks"):
                await same.preflight()
        assert caplog.text == ""


async def test_the_account_limit_is_not_taken_once_calls_were_made() -> None:
    async with (
        Emulator(EmulatorConfig(rate=600)) as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url) as s,
    ):
        await run(s, tasks(1))
        await s.check_account()
        assert s.limiter.rate == 2000 and s.rate_source == "the documented default"


async def test_wrong_credentials_stop_at_the_account_check() -> None:
    async with (
        Emulator(EmulatorConfig(password="other")) as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url) as s,
    ):
        with pytest.raises(AuthError):
            await s.preflight()
        assert proxy.posts == []


# -- what the ledger keeps of each call ------------------------------------------------------


def _batches(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(
            db.execute(
                "SELECT state, n_tasks, http_status, status_code, attempts, note FROM batches "
                "ORDER BY batch_id"
            )
        )
    finally:
        db.close()


async def test_each_call_is_one_batch_row_with_its_end(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    script = {"p0": [RATE_LIMITED], "p2": ["drop"], "p4": [NO_FUNDS]}
    async with (
        Emulator() as emu,
        Proxy(emu, script) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s,
    ):
        await s.load_models(offline=True)
        await run_until(s, tasks(6), FundsError)
    rows = _batches(path)
    assert sorted(rows, key=repr) == sorted(
        [
            ("not_created", 2, 200, 40202, 1, "Rate limit exceeded."),
            ("done", 2, 200, 20000, 2, None),
            ("unknown", 2, None, None, 1, rows[1][5] if rows[1][0] == "unknown" else ""),
            ("not_created", 2, 402, 40200, 1, "Payment Required."),
        ],
        key=repr,
    )
    lost = next(r for r in rows if r[0] == "unknown")
    assert str(lost[5]).startswith("connection lost")
    sessions = Ledger.open_existing(path)
    try:
        (session,) = sessions.sessions()
    finally:
        sessions.close()
    assert session.calls == 4 == s.stats.calls
    assert session.cost == pytest.approx(2 * COST) and session.ended_at is not None


async def test_a_lost_user_tagged_line_keeps_its_prompt_for_reconcile(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    items = [
        {"user_prompt": "generated", "model_name": "gpt-4o"},
        {"user_prompt": "mine", "model_name": "gpt-4o", "tag": "t"},
    ]
    async with (
        Emulator() as emu,
        Proxy(emu, ["drop"]) as proxy,
        submitter(proxy.base_url, ledger=str(path)) as s,
    ):
        await run(s, items)
    ledger = Ledger.open_existing(path)
    try:
        refs = ledger.lines_in_state("unknown")
    finally:
        ledger.close()
    assert [(r.line, r.tag, r.prompt_digest) for r in refs] == [
        (1, refs[0].tag, None),
        (2, "t", prompt_digest("mine")),
    ]
    assert prompt_digest("mine") == hashlib.blake2b(b"mine", digest_size=8).digest()


# -- smaller decisions -----------------------------------------------------------------------


def test_the_field_a_service_message_names() -> None:
    assert _field_of("Invalid Field: 'user_prompt'. Too long.") == "user_prompt"
    assert _field_of("Invalid Field: ''.") == ""
    assert _field_of("no field named") is None
    assert _field_of("one 'quote only") is None
    assert _field_of("'a'") == "a"


def test_run_stats_rates_over_the_session() -> None:
    stats = RunStats(started=100.0)
    stats.ended = 130.0
    assert stats.elapsed_s == 30.0
    for at in (101.0, 102.0, 103.0):
        stats.note_call(at)
    assert stats.calls == 3 and stats.calls_per_minute == pytest.approx(6.0)
    assert stats.window.in_last_window(103.0) == 3
    still = RunStats(started=100.0)
    still.ended = 100.0
    assert still.calls_per_minute == 0.0
    stats.count("created")
    stats.count("created", 4)
    assert stats.by_state == {"created": 5}


async def test_a_task_that_cannot_be_encoded_is_rejected_not_raised() -> None:
    async with Emulator() as emu, Proxy(emu) as proxy, submitter(proxy.base_url) as s:
        got = by_line(await run(s, [{"user_prompt": object()}, *tasks(1)]))
    assert got[1].state == "rejected" and got[1].field == ""
    assert got[1].reason is not None and "object" in got[1].reason
    assert got[2].state == "created" and len(proxy.posts) == 1


async def test_a_retry_is_logged_with_its_reason_and_next_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [RATE_LIMITED]) as proxy,
        submitter(proxy.base_url) as s,
    ):
        with caplog.at_level(logging.INFO, logger="llmtasks"):
            await run(s, tasks(1))
    assert "retrying a call (Rate limit exceeded.), attempt 2" in [
        r.getMessage() for r in caplog.records
    ]


async def test_stop_cuts_a_backoff_short() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu, [RATE_LIMITED]) as proxy,
        submitter(proxy.base_url, backoff_s=60.0, max_backoff_s=60.0) as s,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.3, s.stop)
        got = by_line(await run(s, tasks(2)))
        took = loop.time() - started
    assert took < 10
    assert {r.state for r in got.values()} == {"pending"} and emu.created == []
    assert got[1].reason == "not sent: the run stopped"


async def test_calls_in_flight_count_against_the_cost_cap() -> None:
    async with (
        Emulator(EmulatorConfig(latency_ms=300)) as emu,
        Proxy(emu) as proxy,
        submitter(
            proxy.base_url,
            batch_size=10,
            concurrency=2,
            max_cost_usd=15 * COST,
            max_task_cost_usd=COST,
        ) as s,
    ):
        got, _ = await run_until(s, tasks(30), FundsError)
    # The second call would be sent while the first is in flight: its worst case counts.
    assert len(proxy.posts) == 1 and len(emu.created) == 10
    assert Counter(r.state for r in got) == {"created": 10, "pending": 20}
    assert s.stats.reserved_usd == 0


async def test_a_resumed_run_checks_its_first_line_too(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with Emulator() as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            await run(s, tasks(1))
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            got = by_line(await run(s, tasks(3)))
        assert sorted(got) == [2, 3] and s.stats.already_done == 1
        assert len(emu.created) == 3


async def test_the_models_list_is_read_once_and_a_fallback_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, default_model="no-such-model") as s,
    ):
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            first = await s.load_models(offline=True)
            await s.preflight()
        assert first.source == "built-in" and await s.load_models() is first
        assert s.rules.models is first
    assert (
        "the chat_gpt models list could not be read (offline): checking models against the "
        "built-in table" in caplog.text
    )
    assert "no-such-model" in caplog.text


async def test_without_user_data_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    broken = (500, {"status_code": 50000, "status_message": "Internal Error."})
    async with Emulator() as emu, Proxy(emu) as proxy:
        proxy.others["/v3/appendix/user_data"] = [broken] * 3
        async with submitter(proxy.base_url) as s:
            with caplog.at_level(logging.WARNING, logger="llmtasks"):
                assert await s.check_account(tasks_hint=5) is None
            await s.load_models(offline=True)
            # No success counted: a 401 now stops the run.
            proxy.scripts[""] = [NOT_AUTHORIZED]
            await run_until(s, tasks(1), AuthError)
    assert "going on without the account check" in caplog.text


async def test_receipts_can_come_a_call_at_a_time() -> None:
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=3, concurrency=1) as s,
    ):
        groups = [g async for g in s.submit_lines_batched(_lines([f"p{i}" for i in range(7)]))]
    assert sorted(len(g) for g in groups) == [1, 3, 3]
    assert len(emu.created) == 7


async def test_a_ledger_given_open_is_left_open(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "run.sqlite")
    try:
        async with Emulator() as emu, Proxy(emu) as proxy:
            async with submitter(proxy.base_url, ledger=ledger) as s:
                await run(s, tasks(2))
            assert s.ledger is ledger
        assert ledger.counts() == {"created": 2}  # still open
    finally:
        ledger.close()


async def test_resend_unknown_says_how_many_go_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "run.sqlite"
    async with Emulator() as emu, Proxy(emu, ["drop"]) as proxy:
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            await run(s, tasks(2))
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            async with submitter(proxy.base_url, ledger=str(path), resend_unknown=True) as s:
                await run(s, tasks(2))
    assert (
        "--resend-unknown: sending 2 unknown lines again; any that the service did create "
        "will be charged and answered twice" in caplog.text
    )


class CountingThrottle:
    """A process's own throttle, counting the slots taken."""

    def __init__(self, inner: Throttle) -> None:
        self.inner = inner
        self.slots = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        self.slots += 1
        async with self.inner.slot() as admitted_at:
            yield admitted_at

    def react(self, reply: Reply, admitted_at: float) -> None:
        self.inner.react(reply, admitted_at)


async def test_the_models_list_takes_a_rate_slot_and_is_cached_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    own = tmp_path / "own"
    async with Emulator() as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url) as s:
            counting = CountingThrottle(s.throttle)
            s.throttle = counting
            assert (await s.load_models()).source == "service"
            await run(s, tasks(2))
        assert counting.slots == 2  # the models list, then the POST
        assert list((xdg / "llmtasks").iterdir())  # the default cache
        async with submitter(proxy.base_url, models_cache_dir=str(own)) as s:
            assert (await s.load_models()).source == "service"
        assert list(own.iterdir())
        before = sorted(p.name for p in (xdg / "llmtasks").iterdir())
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        async with submitter(proxy.base_url, models_cache_dir="") as s:  # no cache at all
            assert (await s.load_models()).source == "service"
        assert sorted(p.name for p in (xdg / "llmtasks").iterdir()) == before
        assert list(cwd.iterdir()) == []  # "" is no cache, not the working directory


async def test_a_task_without_a_model_is_told_how_to_give_one() -> None:
    async with Emulator() as emu, Proxy(emu) as proxy, submitter(proxy.base_url) as s:
        got = by_line(await run(s, [{"user_prompt": "no model"}]))
    assert got[1].state == "rejected" and got[1].field == "model_name"
    assert got[1].reason is not None and got[1].reason.endswith(
        "is required (set model_name in the task or give default_model)"
    )


async def test_a_task_reply_without_data_is_still_created() -> None:
    def no_data(env: dict[str, Any]) -> dict[str, Any]:
        del env["tasks"][0]["data"]
        return env

    async with (
        Emulator() as emu,
        Proxy(emu, [no_data]) as proxy,
        submitter(proxy.base_url) as s,
    ):
        got = by_line(await run(s, tasks(2)))
    assert [got[1].state, got[2].state] == ["created", "created"]
    assert s.stats.by_state == {"created": 2}


def test_the_field_is_the_first_quoted_word() -> None:
    assert _field_of("Invalid Field: 'a'. Use 'b' instead.") == "a"


async def test_verify_reads_every_recorded_line_to_the_last(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    prompts = ["p0", "p1", "p2"]
    async with Emulator() as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            async for _ in s.submit_lines(_lines(prompts[:1])):
                pass
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            await s.verify(_lines(prompts[:1]))  # one line, the one recorded
            with pytest.raises(InputError, match="line 1 is not the line recorded"):
                await s.verify(_lines(["other"]))
            with pytest.raises(InputError, match="it has 0 lines, the ledger recorded 1 in"):
                await s.verify([])
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            async for _ in s.submit_lines(_lines(prompts)):
                pass
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            with pytest.raises(InputError, match="line 3 is not the line recorded"):
                await s.verify(_lines([*prompts[:2], "other"]))
        assert len(emu.created) == 3


async def test_user_data_is_asked_again_at_the_submitters_own_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = (500, {"status_code": 50000, "status_message": "Internal Error."})
    async with Emulator() as emu, Proxy(emu) as proxy:
        proxy.others["/v3/appendix/user_data"] = [broken] * 3
        async with submitter(proxy.base_url) as s:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with caplog.at_level(logging.WARNING, logger="llmtasks"):
                assert await s.check_account() is None
            took = loop.time() - started
    # Three tries 1-2 ms apart (backoff_s 0.001): the default policy's waits are 0.75 s+.
    assert took < 0.6
    (record,) = [r for r in caplog.records if "going on without" in r.getMessage()]
    message = record.getMessage()
    assert message.endswith("; going on without the account check")
    assert message.startswith("cannot read account data: Internal Error.")


async def test_a_balance_that_covers_the_worst_case_exactly_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Emulator(EmulatorConfig(funds_usd=100 * COST)) as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, max_task_cost_usd=COST) as s,
    ):
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            await s.check_account(tasks_hint=100)
            assert "cannot cover" not in caplog.text
            await s.check_account(tasks_hint=101)
            assert "cannot cover" in caplog.text


async def test_a_tiny_account_limit_still_gives_a_rate_of_two(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Emulator(EmulatorConfig(rate=1)) as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url) as s:
            await s.check_account()
            assert s.limiter.rate == 2
        async with submitter(proxy.base_url, rate=100) as s:
            with caplog.at_level(logging.WARNING, logger="llmtasks"):
                await s.check_account()
    assert (
        "--rate is 100 calls per minute but the account allows 1 (user_data rates.limits."
        "minute.ai_optimization.llm_responses.task_post): expect 40202 answers and a "
        "slowed-down run; lower --rate or leave it out" in caplog.text
    )


async def test_a_fanout_ledgers_receipts_name_their_engine(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "run.sqlite", engine="chat_gpt", engines=ENGINES)
    try:
        async with (
            Emulator() as emu,
            Proxy(emu) as proxy,
            submitter(proxy.base_url, ledger=ledger) as s,
        ):
            got = await run(s, tasks(2))
        assert [(r.state, r.engine) for r in got] == [("created", "chat_gpt")] * 2
    finally:
        ledger.close()


async def test_a_call_answered_after_the_run_stopped_is_not_tried_again() -> None:
    """A 40202 that arrives once another call has stopped the run (refused credentials):
    its lines stay pending with the reply's reason, and it is never sent again."""
    script = {"p0": [("delay", 0.5, RATE_LIMITED)], "p2": [NOT_AUTHORIZED]}
    async with (
        Emulator() as emu,
        Proxy(emu, script) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=2) as s,
    ):
        await s.load_models(offline=True)
        got_list, _ = await run_until(s, tasks(4), AuthError)
    got = by_line(got_list)
    assert got[1].state == "pending"
    assert got[1].reason == "gave up after 1 attempts: Rate limit exceeded."
    assert got[3].reason == "not sent: You are not authorized."
    assert [p[0]["user_prompt"] for p in proxy.posts].count("p0") == 1
    assert emu.created == []


async def test_lines_are_read_and_filtered_chunk_by_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtasks import _batching

    monkeypatch.setattr(_batching, "READ_CHUNK", 2)

    async def lines() -> AsyncIterator[InputLine]:
        for il in _lines([f"p{i}" for i in range(10)]):
            yield il

    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, shard=(2, 3)) as s,
    ):
        got = by_line([r async for r in s.submit_lines(lines())])
    # Chunks [1, 2] [3, 4] [5, 6] [7, 8] [9, 10]: [3, 4] has no line of shard 2/3.
    assert sorted(got) == [2, 5, 8] and s.stats.lines_read == 3
    assert len(emu.created) == 3


async def test_a_batch_left_open_when_the_run_stops_is_recorded_pending(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmtasks import _batching

    monkeypatch.setattr(_batching, "READ_CHUNK", 3)
    path = tmp_path / "run.sqlite"
    stopped = asyncio.Event()

    async def lines() -> AsyncIterator[InputLine]:
        for il in _lines(["p0", "p1", "p2"]):
            yield il
        await stopped.wait()  # the run stops before the input ends

    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s,
    ):
        got: list[Receipt] = []
        async for r in s.submit_lines(lines()):
            got.append(r)
            if len(got) == 2:
                s.stop()
                stopped.set()
    lines_ = by_line(got)
    assert [lines_[i].state for i in (1, 2, 3)] == ["created", "created", "pending"]
    assert lines_[3].reason == "not sent: the run stopped"
    assert_own_tags(got)
    assert s.stats.by_state == {"created": 2, "pending": 1}
    assert ledger_receipts(path)[3].state == "pending"


# -- the Submitter's own settings and lifecycle --------------------------------------------


def test_the_settings_reach_what_uses_them() -> None:
    sub = Submitter(login="a", password="b", engine="claude", margin_s=0.5, period_s=30.0)
    assert sub.rules.engine == "claude"
    assert sub.limiter.margin_s == 0.5
    assert sub.retry == RetryPolicy(max_attempts=8, backoff_s=0.5, max_backoff_s=30.0)
    assert sub.transport._timeout.total == 60.0
    assert sub.transport._max_connections == 30  # the account's limit may raise the gate
    assert sub.models_cache_dir is None
    custom = Submitter(
        login="a",
        password="b",
        timeout_s=7.0,
        max_attempts=4,
        backoff_s=0.25,
        max_backoff_s=2.0,
        concurrency=5,
        models_cache_dir="/x",
    )
    assert custom.retry == RetryPolicy(max_attempts=4, backoff_s=0.25, max_backoff_s=2.0)
    assert custom.transport._timeout.total == 7.0
    assert custom.transport._max_connections == 5 and custom.models_cache_dir == "/x"
    rated = Submitter(login="a", password="b", rate=120)
    assert rated.transport._max_connections == rated.concurrency
    insecure = Submitter(login="a", password="b", base_url="http://h.test", allow_insecure=True)
    assert insecure.transport.base_url == "http://h.test"
    own = LocalThrottle(RateLimiter(rate=10, period_s=1.0), ConcurrencyGate(limit=2))
    assert Submitter(login="a", password="b", throttle=own).throttle is own
    with pytest.raises(ConfigError) as caught:
        Submitter(login="a", password="b", rate=1)
    assert str(caught.value) == "rate must be an integer of at least 2 calls, not 1"


async def test_the_ledger_records_the_runs_input_engine_and_shard(tmp_path: Path) -> None:
    async with Emulator() as emu, Proxy(emu) as proxy:
        for name, shard, engine in (("a.sqlite", None, "chat_gpt"), ("b.sqlite", (1, 2), "claude")):
            path = tmp_path / name
            async with submitter(
                proxy.base_url, ledger=str(path), input_name="in.jsonl", shard=shard, engine=engine
            ):
                pass
            ledger = Ledger.open_existing(path)
            try:
                meta = ledger.meta()
            finally:
                ledger.close()
            assert meta["input"] == "in.jsonl" and meta["shard"] == ("" if shard is None else "1/2")
            assert engine in meta["engines"]


async def test_a_ledger_in_use_is_refused_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, ledger=str(path)),
    ):
        second = submitter(proxy.base_url, ledger=str(path))
        with pytest.raises(ConfigError, match="in use by another submit"):
            await second.__aenter__()
        assert second.ledger is not None
        with pytest.raises(sqlite3.ProgrammingError):  # closed: not left open
            second.ledger.last_line()


async def test_one_line_killed_in_flight_is_spoken_of_as_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "run.sqlite"
    async with Emulator() as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url, ledger=str(path)) as first:
            await run(first, tasks(1))
        ledger = Ledger.open_existing(path)
        try:
            with ledger._db:
                ledger._db.execute("UPDATE batches SET state = 'sending'")
                ledger._db.execute("DELETE FROM lines")
        finally:
            ledger.close()
        with caplog.at_level(logging.WARNING, logger="llmtasks"):
            async with submitter(proxy.base_url, ledger=str(path)):
                pass
    assert (
        "1 line being sent when an earlier run stopped: marked unknown, not resent (run "
        "'llmtasks reconcile' to look it up)" in [r.getMessage() for r in caplog.records]
    )


async def test_leaving_ends_the_writer_and_the_session(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"

    def cost(env: dict[str, Any]) -> dict[str, Any]:
        env["cost"] = 0.12345678
        return env

    async with Emulator() as emu, Proxy(emu, [cost]) as proxy:
        async with submitter(proxy.base_url, ledger=str(path)) as s:
            await run(s, tasks(1))
            assert s.stats.ended is not None  # the run's end, not the caller's
        idle = submitter(proxy.base_url)
        async with idle:
            pass
        assert idle.stats.ended is not None
    assert not [t for t in threading.enumerate() if t.name == "llmtasks-ledger"]
    ledger = Ledger.open_existing(path)
    try:
        (session,) = ledger.sessions()
    finally:
        ledger.close()
    assert session.cost == 0.123457 and session.calls == 1


async def test_leaving_the_loop_early_stops_the_run(tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(latency_ms=20)) as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url, batch_size=2, concurrency=1) as s:
            async for _ in s.submit(tasks(200)):
                break
        assert 0 < len(emu.created) < 200


async def test_a_ledger_that_cannot_be_written_at_the_end_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: LedgerWriter) -> None:
        raise LedgerWriteError("cannot write the ledger: disk full")

    async with Emulator() as emu, Proxy(emu) as proxy, submitter(proxy.base_url) as s:
        monkeypatch.setattr(LedgerWriter, "flush", broken)
        with pytest.raises(LedgerWriteError, match="disk full"):
            await run(s, tasks(1))
        monkeypatch.undo()


@pytest.mark.parametrize(("concurrency", "ahead"), [(1, 2), (4, 2), (5, 2), (7, 3), (30, 15)])
async def test_half_the_concurrency_is_written_ahead_and_never_fewer_than_two(
    monkeypatch: pytest.MonkeyPatch, concurrency: int, ahead: int
) -> None:
    asked: list[int] = []
    start = LedgerWriter.start

    def recording(self: LedgerWriter, *, ahead: int = 4) -> None:
        asked.append(ahead)
        start(self, ahead=ahead)

    monkeypatch.setattr(LedgerWriter, "start", recording)
    async with Emulator() as emu, submitter(emu.base_url, concurrency=concurrency):
        pass
    assert asked == [ahead]


@pytest.mark.parametrize(("rate", "burst"), [(2000, 10), (500, 5), (150, 2), (3, 2), (2, 1)])
def test_the_bucket_holds_one_percent_of_the_rate_from_two_to_ten_tokens(
    rate: int, burst: int
) -> None:
    assert submitter("http://127.0.0.1:9", rate=rate).limiter.burst == burst


def _batch_rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT session_id, state, http_status, status_code, attempts, note FROM batches "
            "ORDER BY batch_id"
        ).fetchall()


async def test_a_batch_written_ahead_then_stopped_by_the_cost_cap_is_closed_as_nothing_created(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(
            proxy.base_url,
            batch_size=10,
            concurrency=1,
            max_cost_usd=10 * COST,
            max_task_cost_usd=COST,
            ledger=str(path),
        ) as s,
    ):
        await run_until(s, tasks(30), FundsError)
        session = s.ledger.session_id if s.ledger is not None else None
    assert len(proxy.posts) == 1
    rows = _batch_rows(path)
    # The first batch was sent; those written ahead meanwhile (two at most) were refused at
    # their slot and closed; later ones were never written ahead (the run had stopped).
    assert rows[0][1] == "done" and 1 <= len(rows[1:]) <= 2
    assert {r[0] for r in rows} == {session} and session
    assert rows[1][1:] == ("not_created", None, None, 0, "not sent: --max-cost-usd reached")
    for row in rows[2:]:
        assert row[1:] == ("not_created", None, None, 0, "not sent: the run stopped")


def _disk_full_at(
    monkeypatch: pytest.MonkeyPatch, fails: Callable[[Any], bool], *, after_s: float = 0.0
) -> None:
    """``LedgerWriter.prepare`` fails for the batches ``fails`` names: at once (before any
    other sender runs), or ``after_s`` later."""
    prepare = LedgerWriter.prepare

    async def failing(self: LedgerWriter, session_id: int, batch: Any) -> None:
        if fails(batch):
            if after_s:
                await asyncio.sleep(after_s)
            raise LedgerWriteError("cannot write the ledger: disk full")
        await prepare(self, session_id, batch)

    monkeypatch.setattr(LedgerWriter, "prepare", failing)


async def test_a_write_ahead_that_fails_stops_the_run_and_leaves_the_rest_pending(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _disk_full_at(monkeypatch, lambda batch: 5 in batch.lines)  # the third batch
    path = tmp_path / "run.sqlite"
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1, ledger=str(path)) as s,
    ):
        got, exc = await run_until(s, tasks(8), LedgerWriteError)
    assert str(exc) == "cannot write the ledger: disk full"
    lines = by_line(got)
    assert sorted(lines) == list(range(1, 9))
    assert [lines[n].state for n in (1, 2)] == ["created", "created"]
    # The second batch's sender may have posted it before the failure, or not.
    assert len(emu.created) == len(proxy.posts) * 2 in (2, 4)
    for n in (5, 6):
        assert lines[n].state == "pending"
        assert lines[n].reason == "not sent: the ledger cannot be written"
    for n in (7, 8):  # taken after the failure: never written ahead
        assert (lines[n].state, lines[n].reason) == ("pending", "not sent: the run stopped")
    assert Counter(r.state for r in got)["created"] == len(emu.created)


@pytest.mark.timeout(30)  # a run left waiting on its queue fails instead of hanging
async def test_when_every_write_ahead_fails_nothing_is_sent_and_every_line_is_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both senders fail at once: the rest of the queue must still be read (and recorded),
    # or the reader feeding it would wait forever.
    _disk_full_at(monkeypatch, lambda batch: True, after_s=0.01)
    async with (
        Emulator() as emu,
        Proxy(emu) as proxy,
        submitter(proxy.base_url, batch_size=2, concurrency=1) as s,
    ):
        got, exc = await run_until(s, tasks(40), LedgerWriteError)
    assert str(exc) == "cannot write the ledger: disk full"
    assert proxy.posts == [] and emu.created == []
    lines = by_line(got)
    assert sorted(lines) == list(range(1, 41)) and {r.state for r in got} == {"pending"}
    failed = [n for n, r in lines.items() if r.reason == "not sent: the ledger cannot be written"]
    assert failed == [1, 2, 3, 4]  # the two batches the two senders took
    assert all(lines[n].reason == "not sent: the run stopped" for n in range(5, 41))


async def test_leaving_the_loop_while_a_slow_call_is_in_flight_waits_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.sqlite"
    async with Emulator(EmulatorConfig(latency_ms=400)) as emu, Proxy(emu) as proxy:
        async with submitter(proxy.base_url, batch_size=2, concurrency=2, ledger=str(path)) as s:
            async for _ in s.submit(tasks(40)):
                break  # the other call is still in flight, for about 0.4 s
        created = len(emu.created)
    assert 2 < created < 40
    got = ledger_receipts(path)
    assert Counter(r.state for r in got.values())["created"] == created
    assert not [r for r in _batch_rows(path) if r[1] == "sending"]
