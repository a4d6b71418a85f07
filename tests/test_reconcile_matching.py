"""reconcile in-process: how an id_list item is matched to an ``unknown`` line, how the
windows around the POSTs are merged, and whole reconcile runs against the in-process
emulator.

The rules come from the design (../shared/design.md, "Every input line ends in exactly one
outcome") and the digest (id_list): an unknown line is found by its tag and its prompt among
the tasks of its own engine; one found becomes ``created`` with the service's id and cost,
one not found becomes ``pending`` again, and a task that is there once more than its lines
is a duplicate an earlier resend created, never a second line's task. These tests run in
the test process (unlike the CLI tests), so mutation testing can use them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks import AuthError, Receipt, ServiceError, Submitter
from llmtasks._batching import prompt_digest
from llmtasks._ledger import Ledger
from llmtasks._ratelimit import ConcurrencyGate, RateLimiter
from llmtasks._reconcile import (
    DEFAULT_SKEW_S,
    ID_LIST_PATH,
    METADATA_REACH_S,
    ReconcileReport,
    _blind_reason,
    _fmt,
    _match,
    _windows,
    reconcile,
    service_clock,
)
from llmtasks._throttle import LocalThrottle, RetryPolicy, local_throttle
from llmtasks._transport import Reply, Transport, classify
from llmtasks._wire import id_list_items
from llmtasks.emulator import DEFAULT_LOGIN, DEFAULT_PASSWORD, Emulator, EmulatorConfig

URL = "https://api.dataforseo.com/v3/ai_optimization/{}/llm_responses/task_post"


def _item(
    task_id: str, tag: str | None, prompt: str, *, engine: str = "chat_gpt", cost: Any = 0.0102
) -> dict[str, Any]:
    """An id_list item as the digest documents it (metadata: the POST fields)."""
    return {
        "id": task_id,
        "url": URL.format(engine),
        "datetime_posted": "2026-11-25 10:00:00 +00:00",
        "datetime_done": None,
        "status": "ok",
        "cost": cost,
        "metadata": {"user_prompt": prompt, "model_name": "gpt-4o", "tag": tag},
    }


Unknown = dict[str | None, list[tuple[int, bytes | None]]]


def _unknown(*lines: tuple[int, str | None, str | None]) -> Unknown:
    """Unknown lines by tag, as reconcile groups them: (line, tag, prompt or None)."""
    by_tag: Unknown = {}
    for line, tag, prompt in lines:
        by_tag.setdefault(tag, []).append((line, None if prompt is None else prompt_digest(prompt)))
    return by_tag


def _run(items: list[dict[str, Any]], by_tag: Unknown, engine: str = "chat_gpt") -> Any:
    found: dict[int, Receipt] = {}
    report = ReconcileReport()
    # Decoded as reconcile decodes an id_list answer.
    page = id_list_items(orjson.dumps({"tasks": [{"status_code": 20000, "result": items}]}))
    assert page is not None
    for item in page:
        _match(item, engine, by_tag, found, report)
    return found, report


# --- matching one item -------------------------------------------------------------------


def test_a_task_with_the_lines_tag_and_prompt_is_the_lines_task() -> None:
    found, report = _run([_item("id-1", "t7", "hello")], _unknown((7, "t7", "hello")))
    assert found == {
        7: Receipt(
            line=7,
            state="created",
            task_id="id-1",
            status_code=20100,
            status_message="Task Created.",
            cost=0.0102,
            reason="found on the service by reconcile",
        )
    }
    assert report.duplicates == 0


def test_a_task_of_another_engine_is_not_the_lines_task() -> None:
    # Tags are the client's own and may repeat across engines: the engine is in the url.
    by_tag = _unknown((1, "t", "hello"))
    for engine in ("claude", "gemini"):
        found, _ = _run([_item("x", "t", "hello", engine=engine)], by_tag)
        assert found == {}
    found, _ = _run([_item("x", "t", "hello", engine="claude")], by_tag, engine="claude")
    assert set(found) == {1}
    no_url = _item("x", "t", "hello")
    del no_url["url"]
    assert _run([no_url], by_tag)[0] == {}


def test_the_prompt_must_match_when_the_ledger_knows_it() -> None:
    # A user's own tag may be shared by many lines: the prompt tells them apart.
    found, report = _run([_item("x", "t", "other prompt")], _unknown((1, "t", "hello")))
    assert found == {} and report.duplicates == 0
    by_tag = _unknown((1, "t", "hello"), (2, "t", "bye"))
    found, _ = _run([_item("b", "t", "bye"), _item("a", "t", "hello")], by_tag)
    assert {line: r.task_id for line, r in found.items()} == {1: "a", 2: "b"}


def test_a_line_without_a_prompt_digest_matches_on_the_tag_alone() -> None:
    found, _ = _run([_item("x", "t", "whatever was sent")], _unknown((3, "t", None)))
    assert found[3].task_id == "x"


def test_a_task_without_metadata_or_with_another_tag_matches_nothing() -> None:
    by_tag = _unknown((1, "t", "hello"))
    bare = _item("x", "t", "hello")
    bare["metadata"] = None
    assert _run([bare], by_tag)[0] == {}  # metadata is null past the month: no tag, no match
    assert _run([_item("x", "u", "hello")], by_tag)[0] == {}
    no_prompt = _item("x", "t", "hello")
    del no_prompt["metadata"]["user_prompt"]
    assert _run([no_prompt], _unknown((1, "t", "hello")))[0] == {}


def test_an_empty_prompt_is_compared_as_an_empty_prompt() -> None:
    item = _item("x", "t", "")
    item["metadata"]["user_prompt"] = None
    found, _ = _run([item], _unknown((1, "t", "")))
    assert set(found) == {1}


def test_the_same_task_listed_twice_is_one_task() -> None:
    # Pages of overlapping windows list a task again: not a duplicate, not a second line's.
    by_tag = _unknown((1, "t", "hello"), (2, "t", "hello"))
    found, report = _run([_item("x", "t", "hello"), _item("x", "t", "hello")], by_tag)
    assert {line: r.task_id for line, r in found.items()} == {1: "x"}
    assert report.duplicates == 0


def test_lines_with_the_same_tag_and_prompt_take_one_task_each_then_count_duplicates() -> None:
    by_tag = _unknown((4, "t", "hello"), (9, "t", "hello"))
    items = [_item(f"id-{i}", "t", "hello") for i in range(4)]
    found, report = _run(items, by_tag)
    assert {line: r.task_id for line, r in found.items()} == {4: "id-0", 9: "id-1"}
    # Two tasks more than lines: earlier resends created them, reported, never assigned.
    assert report.duplicates == 2
    # A task whose prompt matches no line is not a duplicate of anything.
    _, report = _run([*items, _item("z", "t", "other")], by_tag)
    assert report.duplicates == 2


def test_the_cost_is_the_services_number_or_nothing() -> None:
    by_tag = _unknown((1, "t", "hello"))
    assert _run([_item("x", "t", "hello", cost=0)], by_tag)[0][1].cost == 0.0
    assert isinstance(_run([_item("x", "t", "hello", cost=1)], by_tag)[0][1].cost, float)
    assert _run([_item("x", "t", "hello", cost="0.01")], by_tag)[0][1].cost is None
    assert _run([_item("x", "t", "hello", cost=None)], by_tag)[0][1].cost is None
    no_cost = _item("x", "t", "hello")
    del no_cost["cost"]
    assert _run([no_cost], by_tag)[0][1].cost is None


# --- windows -----------------------------------------------------------------------------


def test_windows_cover_every_post_and_merge_overlaps() -> None:
    assert _windows([], 300.0) == []
    assert _windows([1000.0], 300.0) == [(700.0, 1300.0)]
    # Unsorted times, two overlapping, one touching the merged window, one apart.
    times = [5000.0, 1000.0, 1500.0, 2100.0]
    assert _windows(times, 300.0) == [(700.0, 2400.0), (4700.0, 5300.0)]
    # A window inside the previous one does not shrink it.
    assert _windows([1000.0, 1000.0, 1001.0], 300.0) == [(700.0, 1301.0)]
    assert _windows([1000.0, 1601.0], 300.0) == [(700.0, 1300.0), (1301.0, 1901.0)]


def test_datetimes_are_in_id_lists_documented_format() -> None:
    # "yyyy-mm-dd hh:mm:ss +00:00", UTC, whole seconds rounded down.
    ts = datetime(2026, 11, 25, 10, 0, 7, 900_000, tzinfo=UTC).timestamp()
    assert _fmt(ts) == "2026-11-25 10:00:07 +00:00"


def test_an_unsearchable_line_says_why_it_stays_unknown() -> None:
    now = 2_000_000_000.0
    reach = now - METADATA_REACH_S
    assert _blind_reason(reach - 10.0, reach) == (
        f"sent {_fmt(reach - 10.0)}: id_list keeps the tags of the last month only, so "
        "reconcile cannot tell whether it was created; still unknown (resend it with "
        "--resend-unknown only if paying twice is acceptable)"
    )
    edge = _blind_reason(reach + DEFAULT_SKEW_S - 1.0, reach)
    assert "last month only" in edge
    future = _blind_reason(now + 60.0, reach)
    assert "has not reached yet" in future and "run reconcile again later" in future
    assert _blind_reason(reach + DEFAULT_SKEW_S, reach) == (
        f"sent {_fmt(reach + DEFAULT_SKEW_S)}, which the service's clock has not reached yet: "
        "id_list cannot search that window; still unknown, run reconcile again later"
    )


# --- whole runs against the in-process emulator ------------------------------------------


def _transport(emu: Emulator, **kw: Any) -> Transport:
    return Transport(
        base_url=emu.base_url,
        login=kw.pop("login", DEFAULT_LOGIN),
        password=kw.pop("password", DEFAULT_PASSWORD),
        allow_insecure=True,
        **kw,
    )


async def _lost_replies(emu: Emulator, path: Path, prompts: list[str], batch: int = 3) -> None:
    """A submit whose every reply is lost after the tasks were created: all lines unknown."""
    emu.reconfigure(drop_rate=1.0)
    async with Submitter(
        login=DEFAULT_LOGIN,
        password=DEFAULT_PASSWORD,
        base_url=emu.base_url,
        ledger=str(path),
        batch_size=batch,
        default_model="gpt-4o",
    ) as sub:
        async for _ in sub.submit({"user_prompt": p} for p in prompts):
            pass
    emu.reconfigure(drop_rate=0.0)


def _states(path: Path) -> dict[int, Receipt]:
    ledger = Ledger.open_existing(path)
    try:
        return {r.line: r for r in ledger.receipts()}
    finally:
        ledger.close()


async def _reconcile(path: Path, emu: Emulator, **kw: Any) -> ReconcileReport:
    ledger = Ledger.open_existing(path)
    try:
        async with _transport(emu) as t:
            return await reconcile(ledger, t, **kw)
    finally:
        ledger.close()


@pytest.fixture
async def emu() -> Any:
    async with Emulator(EmulatorConfig(seed=3, id_list_rate=None, tasks_ready_rate=None)) as e:
        yield e


async def test_lost_replies_are_found_with_their_ids(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, [f"p{i}" for i in range(7)])
    assert {r.state for r in _states(path).values()} == {"unknown"}
    report = await _reconcile(path, emu, min_age_s=0)
    got = _states(path)
    by_tag = {t.tag: t for t in emu.created}
    assert len(got) == 7 and all(r.state == "created" for r in got.values())
    for r in got.values():
        assert r.task_id == by_tag[r.tag].id
        assert r.cost == pytest.approx(emu.config.task_cost_usd)
    assert (report.unknown, report.found, report.not_found, report.duplicates) == (7, 7, 0, 0)
    assert report.too_recent == report.unsearchable == 0
    assert report.clock == "the service's Date header"
    # One user_data for the clock, one id_list for the one merged window.
    assert report.calls == 2
    assert [c.path for c in emu.calls if c.path == ID_LIST_PATH] == [ID_LIST_PATH]


async def test_nothing_unknown_asks_nothing(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    await _reconcile(path, emu, min_age_s=0)
    calls = len(emu.calls)
    report = await _reconcile(path, emu, min_age_s=0)
    assert report == ReconcileReport(unknown=0)
    assert len(emu.calls) == calls


async def test_what_the_service_never_created_goes_back_to_pending(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    async with Emulator(EmulatorConfig(id_list_rate=None)) as empty:  # knows no task
        report = await _reconcile(path, empty, min_age_s=0)
        tasks_ready = [c for c in empty.calls if c.path.endswith("/tasks_ready")]
    got = _states(path)
    assert [r.state for r in got.values()] == ["pending", "pending"]
    for r in got.values():
        assert r.reason == "not found on the service by reconcile: the next submit sends it"
        assert r.task_id is None
    assert (report.found, report.not_found) == (0, 2)
    assert len(tasks_ready) == 1  # the second look, before giving up on them


async def test_lines_sent_moments_ago_wait_for_min_age(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b", "c", "d"], batch=2)
    calls = len(emu.calls)
    report = await _reconcile(path, emu, min_age_s=3600)
    assert (report.unknown, report.too_recent, report.calls) == (4, 4, 0)
    assert len(emu.calls) == calls  # nothing asked
    assert {r.state for r in _states(path).values()} == {"unknown"}
    # One batch old enough, one not: only the old one's lines are looked up.
    with sqlite3.connect(path) as db:
        (first,) = db.execute("SELECT min(batch_id) FROM lines").fetchone()
        db.execute("UPDATE batches SET sent_at = sent_at - 7200 WHERE batch_id = ?", (first,))
    report = await _reconcile(path, emu, min_age_s=3600)
    assert (report.too_recent, report.found) == (2, 2)
    states = Counter(r.state for r in _states(path).values())
    assert states == {"created": 2, "unknown": 2}


async def test_a_task_created_twice_is_a_duplicate_not_another_lines(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    # An earlier resend of line 1 by hand: the same tag and prompt, created again.
    first = emu.created[0]
    async with _transport(emu) as t:
        body = f'[{{"user_prompt": "a", "model_name": "gpt-4o", "tag": "{first.tag}"}}]'
        reply = await t.post("/v3/ai_optimization/chat_gpt/llm_responses/task_post", body.encode())
        assert reply.kind == "ok"
    report = await _reconcile(path, emu, min_age_s=0)
    assert (report.found, report.duplicates) == (2, 1)
    assert _states(path)[1].task_id == first.id  # the first listed (sort asc)


async def test_windows_end_at_the_services_now_not_ours(tmp_path: Path) -> None:
    # The service's clock is 10 minutes behind ours: a window ending at our now would be
    # "in the future" for id_list, which refuses it.
    async with Emulator(EmulatorConfig(clock_offset_s=-600.0, id_list_rate=None)) as emu:
        path = tmp_path / "run.sqlite"
        await _lost_replies(emu, path, ["a", "b"])
        report = await _reconcile(path, emu, min_age_s=0)
    assert report.found == 2 and report.unsearchable == 0


async def test_lines_past_the_metadata_month_stay_unknown_without_asking_id_list(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    emu.reconfigure(completion_delay_s=3600.0)  # still running: not in tasks_ready either
    await _lost_replies(emu, path, ["a", "b"])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE batches SET sent_at = sent_at - ?", (METADATA_REACH_S + 3600,))
    calls = len(emu.calls)
    report = await _reconcile(path, emu, min_age_s=0)
    assert report.unsearchable == 2 and report.found == 0 and report.not_found == 0
    for r in _states(path).values():
        assert r.state == "unknown" and r.reason and "last month only" in r.reason
    assert not [c for c in emu.calls[calls:] if c.path == ID_LIST_PATH]


async def test_a_line_past_the_month_is_still_found_in_tasks_ready(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE batches SET sent_at = sent_at - ?", (METADATA_REACH_S + 3600,))
    emu.complete_all()
    report = await _reconcile(path, emu, min_age_s=0)
    got = _states(path)
    assert [r.state for r in got.values()] == ["created", "created"]
    by_tag = {t.tag: t.id for t in emu.created}
    for r in got.values():
        assert r.task_id == by_tag[r.tag] and r.reason == "found in tasks_ready by reconcile"
        assert (r.status_code, r.status_message) == (20100, "Task Created.")
    assert report.found == 2 and report.unsearchable == 0


class Recording(Transport):
    """The real transport, keeping each id_list query it sent."""

    queries: list[dict[str, Any]]

    async def post(self, path: str, body: bytes) -> Reply:
        if path == ID_LIST_PATH:
            self.queries.append(orjson.loads(body)[0])
        return await super().post(path, body)


async def _queries(
    path: Path, emu: Emulator, **kw: Any
) -> tuple[ReconcileReport, list[dict[str, Any]]]:
    ledger = Ledger.open_existing(path)
    try:
        async with Recording(
            base_url=emu.base_url,
            login=DEFAULT_LOGIN,
            password=DEFAULT_PASSWORD,
            allow_insecure=True,
        ) as t:
            t.queries = []
            report = await reconcile(ledger, t, min_age_s=0, **kw)
    finally:
        ledger.close()
    return report, t.queries


async def test_the_id_list_query_is_the_documented_one(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    ledger = Ledger.open_existing(path)
    try:
        sent = min(ledger.batch_times(b for *_, b in ledger.lines_in_state("unknown")).values())
    finally:
        ledger.close()
    _, (query,) = await _queries(path, emu)
    assert set(query) == {
        "datetime_from",
        "datetime_to",
        "limit",
        "offset",
        "sort",
        "include_metadata",
    }
    # The most id_list gives per call, oldest first, with the POST fields (the tag).
    assert (query["limit"], query["offset"], query["sort"]) == (1000, 0, "asc")
    assert query["include_metadata"] is True
    # From the skew before the POST, to the service's now (not the skew after: the future).
    assert query["datetime_from"] == _fmt(sent - DEFAULT_SKEW_S)
    posted_to = datetime.strptime(query["datetime_to"], "%Y-%m-%d %H:%M:%S %z").timestamp()
    assert sent <= posted_to + 1 < sent + DEFAULT_SKEW_S


@pytest.mark.parametrize(("n", "pages"), [(7, [0, 3, 6]), (6, [0, 3, 6])])
async def test_many_tasks_are_read_page_by_page(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, pages: list[int]
) -> None:
    import llmtasks._reconcile as rec

    # Pages of 3 instead of id_list's 1000: the same loop, without 1000 tasks.
    monkeypatch.setattr(rec, "PAGE", 3)
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, [f"p{i}" for i in range(n)], batch=n)
    report, queries = await _queries(path, emu, id_list_rate=6000)
    # A short page is the last; a full one may have more behind it.
    assert [q["offset"] for q in queries] == pages
    assert {q["limit"] for q in queries} == {3}
    assert report.found == n and report.calls == 1 + len(pages)
    assert Counter(r.state for r in _states(path).values()) == {"created": n}


async def test_refused_credentials_stop_reconcile_and_change_nothing(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    ledger = Ledger.open_existing(path)
    try:
        async with _transport(emu, password="wrong") as t:
            with pytest.raises(AuthError, match="refused the credentials"):
                await reconcile(ledger, t, min_age_s=0)
    finally:
        ledger.close()
    assert _states(path)[1].state == "unknown"


async def test_id_list_is_retried_on_its_rate_limit_then_gives_up(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    emu.reconfigure(id_list_rate=1)
    # The first id_list gets through, the next 40202s: a second window needs another call.
    report = await _reconcile(path, emu, min_age_s=0)
    assert report.found == 1
    ledger = Ledger.open_existing(path)
    try:
        import llmtasks._reconcile as rec
        from llmtasks._throttle import RetryPolicy

        # id_list is free: asked again after a backoff (shortened here), then a clear error.
        monkeypatch.setattr(rec, "_BACKOFF", RetryPolicy(max_attempts=6, backoff_s=0.001))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE lines SET state = 'unknown', task_id = NULL")
        before = len(emu.calls)
        async with _transport(emu) as t:
            with pytest.raises(ServiceError, match=r"id_list kept failing \(Rate-limit"):
                await reconcile(ledger, t, min_age_s=0, id_list_rate=6000)
    finally:
        ledger.close()
    id_lists = [c for c in emu.calls[before:] if c.path == ID_LIST_PATH]
    assert len(id_lists) == 6
    assert _states(path)[1].state == "unknown"  # nothing changed


async def test_without_a_date_header_the_clock_is_ours_less_the_skew(emu: Emulator) -> None:
    class NoDate(Transport):
        async def get(self, path: str) -> Reply:
            reply = await super().get(path)
            return reply._replace(server_time=None)

    calls = len(emu.calls)
    async with NoDate(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password=DEFAULT_PASSWORD, allow_insecure=True
    ) as t:
        before = datetime.now(UTC).timestamp()
        now, source = await service_clock(t, 120.0)
        after = datetime.now(UTC).timestamp()
    assert before - 120.0 <= now <= after - 120.0
    assert source == "the local clock less 120 s"
    assert len(emu.calls) == calls + 1  # an answer without a Date is not asked again
    async with _transport(emu, password="wrong") as t:
        with pytest.raises(AuthError):
            await service_clock(t, 120.0)
    calls = len(emu.calls)
    async with NoDate(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password="wrong", allow_insecure=True
    ) as t:
        with pytest.raises(AuthError):
            await service_clock(t, 120.0)
    assert len(emu.calls) == calls + 1  # refused credentials, Date or not: asked once


# --- when the service fails part of the way ------------------------------------------------


class Hooked(Transport):
    """The real transport; ``after(path, n)`` runs after the n-th call (from 1) to a path, so
    a test can switch the emulator's faults on or off mid-run."""

    after: Any = None
    counts: Counter[str]
    sent: list[tuple[str, bytes | None]]

    async def get(self, path: str) -> Reply:
        reply = await super().get(path)
        self._done(path, None)
        return reply

    async def post(self, path: str, body: bytes) -> Reply:
        reply = await super().post(path, body)
        self._done(path, body)
        return reply

    def _done(self, path: str, body: bytes | None) -> None:
        self.counts[path] += 1
        self.sent.append((path, body))
        if self.after is not None:
            self.after(path, self.counts[path])


def _hooked(emu: Emulator, after: Any = None, **kw: Any) -> Hooked:
    t = Hooked(
        base_url=emu.base_url,
        login=DEFAULT_LOGIN,
        password=DEFAULT_PASSWORD,
        allow_insecure=True,
        **kw,
    )
    t.after, t.counts, t.sent = after, Counter(), []
    return t


class Waits(RetryPolicy):
    """The reconcile backoff, recording each wait asked for instead of sleeping it."""

    def __init__(self) -> None:
        super().__init__(max_attempts=6)
        object.__setattr__(self, "asked", [])

    def delay_s(self, attempt: int) -> float:
        self.asked.append(attempt)  # type: ignore[attr-defined]
        return 0.0


def test_reconcile_waits_one_second_doubling_to_thirty() -> None:
    import llmtasks._reconcile as rec

    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (9, 30.0)]:
        for _ in range(20):
            assert cap / 2 <= rec._BACKOFF.delay_s(attempt) <= cap
    assert rec._BACKOFF.max_attempts == 6


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    import llmtasks._reconcile as rec

    w = Waits()
    monkeypatch.setattr(rec, "_BACKOFF", w)
    return w


TASKS_READY = "/v3/ai_optimization/chat_gpt/llm_responses/tasks_ready"


async def _run_hooked(path: Path, t: Hooked, **kw: Any) -> ReconcileReport:
    ledger = Ledger.open_existing(path)
    try:
        async with t:
            # No local pacing of the retries (10 and 20 a minute would make each wait seconds).
            kw = {"id_list_rate": 6000, "tasks_ready_rate": 6000, **kw}
            return await reconcile(ledger, t, min_age_s=0, **kw)
    finally:
        ledger.close()


def _past_the_month(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE batches SET sent_at = sent_at - ?", (METADATA_REACH_S + 3600,))


async def test_a_failed_id_list_is_asked_again(
    emu: Emulator, tmp_path: Path, waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmtasks")
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])

    def heal(call: str, n: int) -> None:
        if call == "/v3/appendix/user_data":
            emu.reconfigure(fail_rate=1.0)  # id_list's first answer: HTTP 500
        elif call == ID_LIST_PATH:
            emu.reconfigure(fail_rate=0.0)

    t = _hooked(emu, heal)
    report = await _run_hooked(path, t)
    assert report.found == 2 and t.counts[ID_LIST_PATH] == 2
    assert report.calls == 3  # the clock, then id_list twice
    assert waits.asked == [1]  # the backoff after a first attempt
    (failed,) = [m for m in caplog.messages if "id_list failed" in m]
    assert re.fullmatch(r"id_list failed \(HTTP 500[^)]*\), attempt 1", failed), failed


async def test_an_id_list_the_service_refuses_as_a_task_is_asked_again_then_given_up(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])

    class Future(Hooked):
        async def post(self, path: str, body: bytes) -> Reply:
            # A window ending in the service's future: id_list refuses it (task level).
            query = orjson.loads(body)
            query[0]["datetime_to"] = "2099-01-01 00:00:00 +00:00"
            return await super().post(path, orjson.dumps(query))

    t = Future(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password=DEFAULT_PASSWORD, allow_insecure=True
    )
    t.after, t.counts, t.sent = None, Counter(), []
    with pytest.raises(ServiceError) as info:
        await _run_hooked(path, t)
    message = str(info.value)
    assert message.startswith("id_list kept failing (40")
    assert message.endswith("); nothing was changed, try again later")
    # No wait after the last attempt: the error comes at once.
    assert t.counts[ID_LIST_PATH] == 6 and waits.asked == [1, 2, 3, 4, 5]
    assert _states(path)[1].state == "unknown"


async def test_credentials_refused_at_id_list_stop_reconcile(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])

    def refuse(call: str, n: int) -> None:
        emu.reconfigure(spurious_401_rate=1.0)  # every call after the clock's

    t = _hooked(emu, refuse)
    with pytest.raises(AuthError, match=r"^the service refused the credentials \(.+\)$"):
        await _run_hooked(path, t)
    # Asked once: id_list asks everything else again, never refused credentials.
    assert t.counts[ID_LIST_PATH] == 1 and waits.asked == []
    assert _states(path)[1].state == "unknown"


async def test_an_id_list_listing_that_came_with_a_refusal_is_not_read(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    """A listing is read only from an answer: the same body with HTTP 429 (a refusal, by
    its status) is asked again, not taken as the list."""
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])

    class Refused(Hooked):
        async def post(self, path: str, body: bytes) -> Reply:
            reply = await super().post(path, body)
            if path == ID_LIST_PATH and self.counts[path] == 1:
                assert reply.kind == "ok"  # the real listing, given a refusal's status
                return reply._replace(kind="retry", http_status=429)
            return reply

    t = Refused(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password=DEFAULT_PASSWORD, allow_insecure=True
    )
    t.after, t.counts, t.sent = None, Counter(), []
    report = await _run_hooked(path, t)
    assert t.counts[ID_LIST_PATH] == 2 and waits.asked == [1]
    assert report.found == 2


async def test_a_failed_tasks_ready_is_asked_again(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    _past_the_month(path)
    emu.complete_all()
    emu.reconfigure(fail_rate=1.0)

    def heal(call: str, n: int) -> None:
        if call == TASKS_READY and n == 2:
            emu.reconfigure(fail_rate=0.0)

    t = _hooked(emu, heal)
    report = await _run_hooked(path, t)
    # The clock's call got a 500 too (with a Date), then tasks_ready: 500, 500, ok.
    assert t.counts[TASKS_READY] == 3 and report.found == 2
    assert waits.asked == [1, 2]
    assert report.calls == 4  # the clock and three tasks_ready


async def test_tasks_ready_refusing_the_credentials_after_a_success_is_not_asked_again(
    emu: Emulator, tmp_path: Path, waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    """After a call the account answered, the retry policy asks a 401 again (a glitch);
    tasks_ready overrides it: refused credentials are never asked again there."""
    caplog.set_level(logging.INFO, logger="llmtasks")
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    async with Emulator(EmulatorConfig(id_list_rate=None, tasks_ready_rate=None)) as empty:

        def refuse(call: str, n: int) -> None:
            if call == ID_LIST_PATH:  # answered (nothing listed) by the same client
                empty.reconfigure(spurious_401_rate=1.0)

        t = _hooked(empty, refuse)
        report = await _run_hooked(path, t)
    assert t.counts[ID_LIST_PATH] == 1 and t.counts[TASKS_READY] == 1
    assert waits.asked == [] and report.calls == 3  # the clock, id_list, tasks_ready once
    (gave_up,) = [m for m in caplog.messages if "tasks_ready" in m]
    assert gave_up.startswith("tasks_ready not available for reconcile (")
    assert (report.found, report.not_found) == (0, 2)


async def test_a_tasks_ready_that_keeps_failing_leaves_the_lines_as_they_were(
    emu: Emulator, tmp_path: Path, waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmtasks")
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    _past_the_month(path)
    emu.complete_all()
    emu.reconfigure(fail_rate=1.0)
    t = _hooked(emu)
    report = await _run_hooked(path, t)
    assert t.counts[TASKS_READY] == 6 and waits.asked == [1, 2, 3, 4, 5]
    assert report.found == 0 and report.unsearchable == 2
    failed = [m for m in caplog.messages if "tasks_ready" in m]
    assert re.fullmatch(r"tasks_ready failed \(HTTP 500[^)]*\), attempt 1", failed[0])
    assert failed[-1].startswith("tasks_ready not available for reconcile (HTTP 500")
    assert failed[-1].endswith(")")
    assert {r.state for r in _states(path).values()} == {"unknown"}


async def test_tasks_ready_identifies_a_line_only_by_a_tag_no_other_line_has(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    emu.reconfigure(drop_rate=1.0)
    async with Submitter(
        login=DEFAULT_LOGIN,
        password=DEFAULT_PASSWORD,
        base_url=emu.base_url,
        ledger=str(path),
        default_model="gpt-4o",
    ) as sub:
        tasks = [{"user_prompt": p, "tag": tag} for p, tag in (("a", "x"), ("b", "x"), ("c", "y"))]
        async for _ in sub.submit(tasks):
            pass
    emu.reconfigure(drop_rate=0.0)
    _past_the_month(path)
    emu.complete_all()
    report = await _reconcile(path, emu, min_age_s=0)
    got = _states(path)
    # tasks_ready has no prompt: "x" names two lines, so neither is known; "y" names one.
    assert [got[n].state for n in (1, 2, 3)] == ["unknown", "unknown", "created"]
    assert got[3].task_id == next(t.id for t in emu.created if t.tag == "y")
    assert report.found == 1


async def test_the_fleets_throttles_are_used_when_given(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    _past_the_month(path)
    emu.reconfigure(completion_delay_s=0.0)
    emu.complete_all()

    class Counting(LocalThrottle):
        def __init__(self) -> None:
            super().__init__(RateLimiter(rate=100, period_s=1.0), ConcurrencyGate(limit=1))
            self.slots = 0

        @contextlib.asynccontextmanager
        async def slot(self) -> Any:
            self.slots += 1
            async with super().slot() as at:
                yield at

    id_list, ready = Counting(), Counting()
    ledger = Ledger.open_existing(path)
    try:
        async with _transport(emu) as t:
            await reconcile(
                ledger, t, min_age_s=0, id_list_throttle=id_list, tasks_ready_throttle=ready
            )
    finally:
        ledger.close()
    assert (id_list.slots, ready.slots) == (0, 1)  # past the month: no id_list window
    assert _states(path)[1].state == "created"


async def test_the_clock_is_asked_again_when_a_reply_has_no_date(
    emu: Emulator, waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    # A lost reply has no Date: ask again, at most three times, then take our clock.
    emu.reconfigure(drop_rate=1.0)
    t = _hooked(emu)
    async with t:
        before = datetime.now(UTC).timestamp()
        now, source = await service_clock(t, 300.0)
        after = datetime.now(UTC).timestamp()
    assert t.counts["/v3/appendix/user_data"] == 3 and waits.asked == [1, 2]
    assert before - 300.0 <= now <= after - 300.0
    assert source == "the local clock less 300 s"
    assert caplog.messages == [
        "the service's reply had no Date header: taking our clock less 300 s as its now"
    ]
    # One lost reply, then an answer: the service's Date.
    waits.asked.clear()
    t = _hooked(emu, lambda call, n: emu.reconfigure(drop_rate=0.0))
    async with t:
        now, source = await service_clock(t, 300.0)
    assert source == "the service's Date header" and waits.asked == [1]
    assert t.counts["/v3/appendix/user_data"] == 2
    assert abs(now - emu.now_unix) < 2


def test_id_list_datetimes_are_utc_whatever_the_machines_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        ts = datetime(2026, 11, 25, 10, 0, 7, tzinfo=UTC).timestamp()
        assert _fmt(ts) == "2026-11-25 10:00:07 +00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_without_a_fleet_id_list_and_tasks_ready_keep_their_documented_limits(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmtasks._reconcile as rec

    built: list[LocalThrottle] = []

    def recording(*args: Any, **kw: Any) -> LocalThrottle:
        built.append(local_throttle(*args, **kw))
        return built[-1]

    monkeypatch.setattr(rec, "local_throttle", recording)
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a", "b"])
    async with Emulator(EmulatorConfig(id_list_rate=None)) as empty:  # so tasks_ready is asked
        await _reconcile(path, empty, min_age_s=0)
    # id_list: 10 calls a minute; tasks_ready: 20; each one at a time, never in a burst.
    assert [(t.limiter.rate, t.limiter.period_s, t.limiter.burst, t.gate.limit) for t in built] == [
        (10, 60.0, 1, 1),
        (20, 60.0, 1, 1),
    ]
    # A limit set below what a bucket can hold is held at 2 a minute.
    built.clear()
    path = tmp_path / "two.sqlite"
    await _lost_replies(emu, path, ["c"])
    async with Emulator(EmulatorConfig(id_list_rate=None)) as empty:
        await _reconcile(path, empty, min_age_s=0, id_list_rate=1, tasks_ready_rate=1)
    assert [t.limiter.rate for t in built] == [2, 2]
    # More than a call a second still goes one call at a time (not the gate of the rate).
    built.clear()
    path = tmp_path / "fast.sqlite"
    await _lost_replies(emu, path, ["d"])
    async with Emulator(EmulatorConfig(id_list_rate=None)) as empty:
        await _reconcile(path, empty, min_age_s=0, id_list_rate=120, tasks_ready_rate=120)
    assert [(t.limiter.rate, t.gate.limit) for t in built] == [(120, 1), (120, 1)]


async def test_throttles_learn_of_each_reply_with_its_admission_time(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])

    class Watching(LocalThrottle):
        def __init__(self) -> None:
            super().__init__(RateLimiter(rate=100, period_s=1.0), ConcurrencyGate(limit=1))
            self.admitted: list[float] = []
            self.told: list[tuple[int | None, float]] = []

        @contextlib.asynccontextmanager
        async def slot(self) -> Any:
            async with super().slot() as at:
                self.admitted.append(at)
                yield at

        def react(self, reply: Reply, admitted_at: float) -> None:
            self.told.append((reply.status_code, admitted_at))
            super().react(reply, admitted_at)

    emu.reconfigure(id_list_rate=1, tasks_ready_rate=1)
    emu.complete_all()
    async with Emulator(EmulatorConfig(id_list_rate=1, tasks_ready_rate=1)) as other:
        id_list, ready = Watching(), Watching()
        ledger = Ledger.open_existing(path)
        try:
            async with _transport(other) as t:
                # Use up both budgets: every call reconcile makes gets a 40202.
                await t.post(ID_LIST_PATH, b"[]")
                await t.get(TASKS_READY)
                with pytest.raises(ServiceError):
                    await reconcile(
                        ledger,
                        t,
                        min_age_s=0,
                        id_list_throttle=id_list,
                        tasks_ready_throttle=ready,
                    )
        finally:
            ledger.close()
    assert id_list.told == [(40202, at) for at in id_list.admitted]
    assert len(id_list.told) == 6
    # Past the month only tasks_ready is asked: its throttle learns of its replies.
    _past_the_month(path)
    async with Emulator(EmulatorConfig(tasks_ready_rate=1)) as other:
        ready = Watching()
        ledger = Ledger.open_existing(path)
        try:
            async with _transport(other) as t:
                await t.get(TASKS_READY)
                await reconcile(ledger, t, min_age_s=0, tasks_ready_throttle=ready)
        finally:
            ledger.close()
    assert ready.told == [(40202, at) for at in ready.admitted]
    assert len(ready.told) == 6


def _crafted(emu: Emulator, answers: dict[str, bytes]) -> Transport:
    """The real transport, except that a call to one of ``answers``' paths gets those bytes
    back (HTTP 200), as if the service had sent them."""

    class Crafted(Transport):
        async def get(self, path: str) -> Reply:
            if path in answers:
                return classify(200, answers[path])
            return await super().get(path)

        async def post(self, path: str, body: bytes) -> Reply:
            if path in answers:
                return classify(200, answers[path])
            return await super().post(path, body)

    return Crafted(
        base_url=emu.base_url, login=DEFAULT_LOGIN, password=DEFAULT_PASSWORD, allow_insecure=True
    )


async def test_an_id_list_answer_without_its_task_is_asked_again_then_given_up(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    empty = b'{"status_code": 20000, "status_message": "Ok.", "tasks": []}'
    ledger = Ledger.open_existing(path)
    try:
        async with _crafted(emu, {ID_LIST_PATH: empty}) as t:
            with pytest.raises(ServiceError) as info:
                await reconcile(ledger, t, min_age_s=0, id_list_rate=6000)
    finally:
        ledger.close()
    assert str(info.value) == (
        "id_list kept failing (no task); nothing was changed, try again later"
    )
    assert len(waits.asked) == 5


async def test_malformed_tasks_ready_items_are_skipped(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    _past_the_month(path)
    (line,) = _states(path).values()
    items = [
        1,
        "x",
        {"id": "no-tag"},
        {"id": "bad", "tag": [line.tag]},
        {"id": "ok", "tag": line.tag},
    ]
    body = orjson.dumps(
        {
            "status_code": 20000,
            "status_message": "Ok.",
            "tasks": [{"id": "t", "status_code": 20000, "status_message": "Ok.", "result": items}],
        }
    )
    ledger = Ledger.open_existing(path)
    try:
        async with _crafted(emu, {TASKS_READY: body}) as t:
            report = await reconcile(ledger, t, min_age_s=0)
    finally:
        ledger.close()
    assert report.found == 1 and _states(path)[1].task_id == "ok"


async def test_a_tasks_ready_answer_that_is_not_its_envelope_is_said_and_not_used(
    emu: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmtasks")
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    _past_the_month(path)
    # An envelope with status 20000 (so an "ok" reply) whose task's result is not a list.
    task = {"id": "t", "status_code": 20000, "status_message": "Ok.", "result": "ready"}
    body = orjson.dumps({"status_code": 20000, "status_message": "Ok.", "tasks": [task]})
    ledger = Ledger.open_existing(path)
    try:
        async with _crafted(emu, {TASKS_READY: body}) as t:
            report = await reconcile(ledger, t, min_age_s=0)
    finally:
        ledger.close()
    assert report.found == 0 and [s.state for s in _states(path).values()] == ["unknown"]
    assert "tasks_ready answered something unreadable; not used by reconcile" in caplog.messages


async def test_a_tasks_ready_refusing_the_credentials_is_not_asked_again(
    emu: Emulator, tmp_path: Path, waits: Waits
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])
    _past_the_month(path)

    def refuse(call: str, n: int) -> None:
        emu.reconfigure(spurious_401_rate=1.0)  # after the clock

    t = _hooked(emu, refuse)
    report = await _run_hooked(path, t)
    assert t.counts[TASKS_READY] == 1 and waits.asked == []
    assert report.found == 0 and _states(path)[1].state == "unknown"


async def test_reconcile_takes_our_clock_less_the_skew_without_a_date(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _lost_replies(emu, path, ["a"])

    class NoDate(Transport):
        async def get(self, path: str) -> Reply:
            return (await super().get(path))._replace(server_time=None)

        async def post(self, path: str, body: bytes) -> Reply:
            return (await super().post(path, body))._replace(server_time=None)

    ledger = Ledger.open_existing(path)
    try:
        async with NoDate(
            base_url=emu.base_url,
            login=DEFAULT_LOGIN,
            password=DEFAULT_PASSWORD,
            allow_insecure=True,
        ) as t:
            report = await reconcile(ledger, t, min_age_s=0, skew_s=600.0)
    finally:
        ledger.close()
    assert report.clock == "the local clock less 600 s"
