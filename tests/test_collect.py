"""collect: the real CLI and the library against real emulators."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks import Submitter
from llmtasks._collect import Collector, collect
from llmtasks._ledger import Ledger, ResultRow, TaskRef
from llmtasks._results_file import REFUND_NOTE, ResultWriter, result_row
from llmtasks._wire import GotTask
from llmtasks.emulator import Emulator, EmulatorConfig
from tests.conftest import read_jsonl, run_cli, write_prompts

FAST = ("--rate", "20000", "--poll-interval", "0.3", "--max-poll-interval", "1")


def _submit(emu: Any, src: Path, *extra: str) -> Path:
    result = run_cli("submit", str(src), "--base-url", emu.url, "-q", *extra)
    assert result.returncode == 0, result.stderr
    return Path(f"{src}.ledger.sqlite")


def _check_matched(results: list[dict[str, Any]], created: list[dict[str, Any]]) -> None:
    """Exactly one result per created task, each on the line that asked for it."""
    assert len(results) == len(created)
    by_id = {r["task_id"]: r for r in results}
    assert len(by_id) == len(results)
    assert set(by_id) == {t["id"] for t in created}
    for task in created:
        r = by_id[task["id"]]
        assert r["tag"] == task["tag"]
        assert r["status_code"] == 20000 and r["status_message"] == "Ok."
        prompt = task["user_prompt"]
        assert prompt == f"prompt number {r['line'] - 1}: which brands lead?"
        text = r["result"][0]["items"][0]["sections"][0]["text"]
        assert prompt in text


def test_submit_then_collect_wait_gives_one_result_per_task_on_its_line(
    emulator: Any, tmp_path: Path
) -> None:
    emu = emulator("--completion-delay", "1")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 300)
    ledger = _submit(emu, src)
    result = run_cli("collect", "--ledger", str(ledger), "--base-url", emu.url, "--wait", *FAST)
    assert result.returncode == 0, result.stderr
    assert "300 of 300 created tasks collected, 0 failed, 0 waiting" in result.stderr
    out = tmp_path / "in.jsonl.results.jsonl"
    results = read_jsonl(out)
    assert list(results[0]) == ["line", "tag", "task_id", "status_code", "status_message", "result"]
    _check_matched(results, emu.created())
    gets = [c for c in emu.calls() if "/task_get/" in c["path"]]
    assert len(gets) == 300  # every task fetched once, none before it was ready

    # A re-run has nothing left to do: no call at all, the file is unchanged.
    before = out.read_bytes()
    n_calls = len(emu.calls())
    again = run_cli("collect", "--ledger", str(ledger), "--base-url", emu.url, *FAST)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == before
    assert len(emu.calls()) == n_calls


def test_collect_without_wait_takes_what_is_ready_and_a_rerun_continues(
    emulator: Any, tmp_path: Path
) -> None:
    emu = emulator("--completion-delay", "3600")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 150)
    ledger = _submit(emu, src)
    out = tmp_path / "answers.jsonl"
    first = run_cli("collect", "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url)
    assert first.returncode == 1, first.stderr  # nothing ready yet: incomplete
    assert "0 of 150 created tasks collected, 0 failed, 150 waiting" in first.stderr
    assert not out.exists()  # no empty results file: it is created with its first result
    assert f"no results yet (none written to {out})" in first.stderr
    import urllib.request

    urllib.request.urlopen(  # loopback only
        urllib.request.Request(emu.url + "/_emulator/complete", method="POST"), timeout=30
    ).close()
    second = run_cli("collect", "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url)
    assert second.returncode == 0, second.stderr
    _check_matched(read_jsonl(out), emu.created())


def test_collect_only_fetches_the_tasks_of_its_own_ledger(emulator: Any, tmp_path: Path) -> None:
    emu = emulator()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_prompts(a, 120)
    write_prompts(b, 80, start=1000)
    ledger_a = _submit(emu, a)
    ledger_b = _submit(emu, b)
    created = emu.created()
    ids_a = {t["id"] for t in created[:120]}
    ids_b = {t["id"] for t in created[120:]}
    result = run_cli("collect", "--ledger", str(ledger_a), "--base-url", emu.url, *FAST)
    assert result.returncode == 0, result.stderr
    got = {r["task_id"] for r in read_jsonl(tmp_path / "a.jsonl.results.jsonl")}
    assert got == ids_a
    fetched = {c["path"].rsplit("/", 1)[1] for c in emu.calls() if "/task_get/" in c["path"]}
    assert fetched == ids_a  # b's tasks were left in tasks_ready for b's own collect
    result = run_cli("collect", "--ledger", str(ledger_b), "--base-url", emu.url, *FAST)
    assert result.returncode == 0, result.stderr
    assert {r["task_id"] for r in read_jsonl(tmp_path / "b.jsonl.results.jsonl")} == ids_b


@pytest.mark.parametrize(
    ("engine", "model"), [("claude", "claude-sonnet-4-0"), ("gemini", "gemini-2.5-flash")]
)
def test_collect_other_engines(emulator: Any, tmp_path: Path, engine: str, model: str) -> None:
    emu = emulator("--completion-delay", "0.5")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 40, model=None)
    ledger = _submit(emu, src, "--engine", engine, "--model", model)
    wrong = run_cli(
        "collect", "--ledger", str(ledger), "--base-url", emu.url, "--engine", "chat_gpt"
    )
    assert wrong.returncode == 2 and f"holds {engine} tasks" in wrong.stderr
    result = run_cli(
        "collect",
        "--ledger",
        str(ledger),
        "--base-url",
        emu.url,
        "--engine",
        engine,
        "--wait",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    results = read_jsonl(tmp_path / "in.jsonl.results.jsonl")
    _check_matched(results, emu.created())
    api = [c["path"] for c in emu.calls() if c["path"].startswith("/v3/ai_optimization/")]
    assert api and all(f"/{engine}/llm_responses/" in p for p in api)
    assert all(r["result"][0]["model_name"].startswith(model.removesuffix("-0")) for r in results)


def test_tasks_unknown_to_the_service_are_reported_failed(emulator: Any, tmp_path: Path) -> None:
    first = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 30)
    ledger = _submit(first, src)
    other = emulator()  # a service that never saw these tasks
    result = run_cli("collect", "--ledger", str(ledger), "--base-url", other.url, "--direct", *FAST)
    assert result.returncode == 1, result.stderr
    assert "0 of 30 created tasks collected, 30 failed, 0 waiting" in result.stderr
    assert "failed on the service side" in result.stderr
    results = read_jsonl(tmp_path / "in.jsonl.results.jsonl")
    assert sorted(r["line"] for r in results) == list(range(1, 31))
    assert all(r["status_code"] == 40401 and r["result"] is None for r in results)
    # Failed is final: a --wait run does not wait for them.
    again = run_cli("collect", "--ledger", str(ledger), "--base-url", other.url, "--wait", *FAST)
    assert again.returncode == 1 and "0 waiting" in again.stderr
    assert len(read_jsonl(tmp_path / "in.jsonl.results.jsonl")) == 30


def test_no_credentials_and_missing_ledger_are_usage_errors(tmp_path: Path) -> None:
    from tests.conftest import cli_env

    env = {k: v for k, v in cli_env().items() if not k.startswith("DATAFORSEO_")}
    result = run_cli("collect", "--ledger", str(tmp_path / "x.sqlite"), env=env)
    assert result.returncode == 2 and "DATAFORSEO_LOGIN" in result.stderr
    result = run_cli(
        "collect", "--ledger", str(tmp_path / "x.sqlite"), "--base-url", "http://127.0.0.1:9"
    )
    assert result.returncode == 2 and "no such ledger" in result.stderr


# -- library ----------------------------------------------------------------------------------


async def _submitted(emu: Emulator, path: Path, n: int) -> None:
    async with Submitter(
        login="login",
        password="password",
        base_url=emu.base_url,
        default_model="gpt-4.1-mini",
        ledger=str(path),
        rate=20000,
    ) as s:
        async for r in s.submit([{"user_prompt": f"question {i}"} for i in range(n)]):
            assert r.state == "created"


async def test_library_collect_iterator_and_write_ahead_recovery(tmp_path: Path) -> None:
    ledger_path = tmp_path / "run.sqlite"
    async with Emulator(EmulatorConfig(completion_delay_s=0.3)) as emu:
        await _submitted(emu, ledger_path, 50)
        # A run that died between task_get and recording: the task is gone from tasks_ready
        # but marked ``fetching`` in the ledger, so the next run asks for it by id.
        ledger = Ledger.open_existing(ledger_path)
        ledger.ensure_results()
        lost = ledger.uncollected(limit=5)
        ledger.mark_fetching(lost)
        ledger.close()
        emu.complete_all()
        for ref in lost:
            emu._store.collect(emu._store.lookup(ref.task_id)[0], 1e18)  # type: ignore[index]
        results = [
            r
            async for r in collect(
                str(ledger_path),
                login="login",
                password="password",
                base_url=emu.base_url,
                wait=True,
                rate=20000,
                poll_interval_s=0.2,
                max_poll_interval_s=0.5,
            )
        ]
        assert sorted(r.line for r in results) == list(range(1, 51))
        assert all(r.ok and r.result[0]["items"] for r in results)
        by_id = {t.id: t for t in emu.created}
        for r in results:
            assert by_id[r.task_id].user_prompt == f"question {r.line - 1}"
            assert r.tag == by_id[r.task_id].tag
        assert {r.task_id for r in results} >= {ref.task_id for ref in lost}


async def test_collector_stop_leaves_the_rest_for_a_rerun(tmp_path: Path) -> None:
    ledger_path = tmp_path / "run.sqlite"
    out = tmp_path / "out.jsonl"
    async with Emulator() as emu:
        await _submitted(emu, ledger_path, 300)
        async with Collector(
            login="login",
            password="password",
            ledger=str(ledger_path),
            base_url=emu.base_url,
            out=str(out),
            rate=20000,
            concurrency=2,
        ) as c:
            seen = 0
            async for _ in c.collect():
                seen += 1
                if seen == 1:
                    c.stop()
        first = read_jsonl(out)
        assert 0 < len(first) < 300
        async with Collector(
            login="login",
            password="password",
            ledger=str(ledger_path),
            base_url=emu.base_url,
            out=str(out),
            rate=20000,
        ) as c:
            async for _ in c.collect(direct=True):
                pass
        results = read_jsonl(out)
        assert Counter(r["line"] for r in results) == Counter(range(1, 301))


def test_results_file_holds_each_result_once_after_a_crash(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.sqlite", engine="chat_gpt")
    ledger.ensure_results()
    out = tmp_path / "r.jsonl"
    rows = [
        ResultRow(
            f"id{i}", i, f"tag{i}", True, 20000, "Ok.", orjson.dumps([{"n": i}]).decode(), "direct"
        )
        for i in range(1, 6)
    ]
    writer = ResultWriter(ledger, str(out))
    ledger.store_results(rows[:3])
    writer.catch_up()
    # A run that died after writing a line but before recording the file's new length:
    with out.open("ab") as f:
        f.write(b'{"line": 4, "half-written')
    ledger.store_results(rows[3:])
    writer = ResultWriter(ledger, str(out))  # the next run: cut back, then append
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 4, 5]
    assert read_jsonl(out)[1]["result"] == [{"n": 2}]
    out.unlink()  # a lost file is rebuilt from the ledger
    ResultWriter(ledger, str(out))
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 4, 5]
    stranger = tmp_path / "other.jsonl"
    stranger.write_bytes(b"not ours\n")
    with pytest.raises(Exception, match="was not written from ledger"):
        ResultWriter(ledger, str(stranger))
    ledger.close()
    # The results are in the ledger too, as plain SQL.
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM results WHERE ok = 1").fetchone()[0] == 5


def test_tasks_the_service_does_not_know_are_recorded_once_and_never_asked_again(
    emulator: Any, tmp_path: Path
) -> None:
    first = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 5)
    ledger = _submit(first, src)
    other = emulator()  # another service: none of these task ids exists there
    args = ("collect", "--ledger", str(ledger), "--base-url", other.url, "--direct", *FAST)
    r = run_cli(*args)
    assert r.returncode == 1, r.stderr
    assert "0 of 5 created tasks collected, 5 failed, 0 waiting" in r.stderr
    gets = [c for c in other.calls() if "/task_get/" in c["path"]]
    assert len(gets) == 5  # final answers: not retried
    again = run_cli(*args)
    assert [c for c in other.calls() if "/task_get/" in c["path"]] == gets
    assert again.returncode == 1
    led = Ledger.open_existing(ledger)
    try:
        reasons = {x.reason for x in led.receipts()}
    finally:
        led.close()
    assert reasons == {"task_get: not found on the service (40401)"}


@pytest.mark.parametrize(
    ("code", "note"),
    [
        (40401, "task_get: not found on the service (40401)"),
        (40403, "task_get: the result expired (40403: results are kept 30 days)"),
        (50000, REFUND_NOTE),
    ],
)
def test_a_failed_task_is_final_with_what_became_of_it(code: int, note: str) -> None:
    ref = TaskRef(task_id="t1", line=3, tag="x")
    row = result_row(ref, GotTask(status_code=code, id="t1", status_message="m"), "direct")
    assert (row.ok, row.status_code, row.result, row.note) == (False, code, None, note)
    ok = result_row(ref, GotTask(status_code=20000, id="t1"), "direct")
    assert ok.ok and ok.note is None
