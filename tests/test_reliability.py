"""Faults, crashes and funds: the real CLI against the emulator's fault switches.

Each test compares the emulator's own record of created tasks with the ledger and the
receipts: every line has one outcome, nothing is created twice, nothing is lost.
"""

from __future__ import annotations

import array
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmtasks._ledger import Ledger
from tests.conftest import read_jsonl, run_cli, spawn_cli, write_prompts


def _ledger_rows(path: Path) -> dict[int, tuple[str, str | None, str | None]]:
    """line -> (state, tag, task_id); lines of a batch still marked sending (a killed run's
    calls in flight, which the next run marks unknown) read as "sending". A run killed
    before it made its tables has recorded (and sent) nothing yet."""
    with sqlite3.connect(path) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone() is None:
            return {}
        in_flight: set[int] = set()
        for (packed,) in db.execute("SELECT lines FROM batches WHERE state = 'sending'"):
            in_flight.update(array.array("q", packed).tolist())
        rows = {
            line: ("sending" if line in in_flight else state, tag, task_id)
            for line, state, tag, task_id in db.execute(
                "SELECT line, state, tag, task_id FROM lines"
            )
        }
    if in_flight - rows.keys():
        # Since ledger schema 3 a line is written once, at its outcome: until then its tag
        # is in its batch's write-ahead row.
        ledger = Ledger.open_existing(path)
        try:
            for f in ledger.in_flight():
                rows.setdefault(f.line, ("sending", f.tag, None))
        finally:
            ledger.close()
    return rows


def _assert_consistent(emu: Any, ledger: Path, n_lines: int) -> None:
    """Nothing created twice; every created task is in the ledger as created or unknown."""
    created = emu.created()
    tags = Counter(t["tag"] for t in created)
    assert [tag for tag, n in tags.items() if n > 1] == [], "a line was created twice"
    rows = _ledger_rows(ledger)
    assert sorted(rows) == list(range(1, n_lines + 1)), "every line has exactly one row"
    by_tag = {tag: (line, state, task_id) for line, (state, tag, task_id) in rows.items()}
    for task in created:
        line, state, task_id = by_tag[task["tag"]]
        # 'sending' is what a killed run leaves: the next run reads it as unknown.
        assert state in ("created", "unknown", "sending"), (line, state)
        if state == "created":
            assert task_id == task["id"]


def _finish(emu: Any, src: Path, ledger: Path, *submit_args: str, rounds: int = 12) -> None:
    """What a user does after trouble: reconcile, then the same submit again, until done."""
    n_lines = len(src.read_bytes().splitlines())
    for _ in range(rounds):
        states = Counter(s for s, _, _ in _ledger_rows(ledger).values())
        if states == {"created": n_lines}:
            return
        if states.get("unknown"):
            r = run_cli(
                "reconcile", "--ledger", str(ledger), "--base-url", emu.url, "--min-age", "0"
            )
            assert r.returncode == 0, r.stderr
            assert "unknown" not in Counter(s for s, _, _ in _ledger_rows(ledger).values())
        run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger), *submit_args)
        _assert_consistent(emu, ledger, n_lines)
    raise AssertionError(f"not finished after {rounds} rounds: {states}")


def _assert_each_line_created_once(emu: Any, ledger: Path, n_lines: int) -> None:
    created = emu.created()
    rows = _ledger_rows(ledger)
    assert Counter(s for s, _, _ in rows.values()) == {"created": n_lines}
    assert len(created) == n_lines
    assert {t["id"] for t in created} == {task_id for _, _, task_id in rows.values()}


def test_5xx_drops_and_a_lower_server_limit(emulator, tmp_path: Path) -> None:
    emu = emulator(
        "--fail-rate",
        "0.05",
        "--drop-rate",
        "0.02",
        "--rate",
        "40",
        "--period",
        "2",
        "--id-list-rate",
        "600",
        "--seed",
        "11",
    )
    src = tmp_path / "in.jsonl"
    n = 800
    write_prompts(src, n)
    ledger = tmp_path / "run.sqlite"
    args = ("--batch-size", "10", "--rate", "80", "--period", "2", "--ledger", str(ledger))
    first = run_cli("submit", str(src), "--base-url", emu.url, *args)
    assert first.returncode == 1, first.stderr  # some lines are unknown
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in receipts] == list(range(1, n + 1))
    states = Counter(r["state"] for r in receipts)
    assert states["unknown"] > 0 and states["created"] > 0
    assert set(states) <= {"created", "unknown", "pending"}
    codes = Counter(c["status_code"] for c in emu.calls() if c["path"].endswith("task_post"))
    assert codes[40202] > 0, "the server's lower limit was hit"
    _assert_consistent(emu, ledger, n)
    assert "reconcile" in first.stderr
    _finish(emu, src, ledger, *args)
    _assert_each_line_created_once(emu, ledger, n)


def test_kill_9_at_random_moments_then_rerun(emulator, tmp_path: Path) -> None:
    emu = emulator("--latency-ms", "40", "--id-list-rate", "600")
    src = tmp_path / "in.jsonl"
    n = 600
    write_prompts(src, n)
    ledger = tmp_path / "run.sqlite"
    args = ("--batch-size", "5", "--concurrency", "3", "--ledger", str(ledger))
    rng = random.Random(5)
    kills = 0
    for _ in range(4):
        proc = spawn_cli(
            "submit", str(src), "--base-url", emu.url, *args, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.5, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        _assert_consistent(emu, ledger, len(_ledger_rows(ledger)) and max(_ledger_rows(ledger)))
    assert kills >= 2
    _finish(emu, src, ledger, *args)
    _assert_each_line_created_once(emu, ledger, n)


def test_out_of_funds_mid_run_then_rerun_with_more(emulator, tmp_path: Path) -> None:
    emu = emulator("--funds-usd", "1.0")
    src = tmp_path / "in.jsonl"
    n = 300
    write_prompts(src, n)
    ledger = tmp_path / "run.sqlite"
    first = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--batch-size",
        "10",
        "--ledger",
        str(ledger),
        "--concurrency",
        "2",
    )
    assert first.returncode == 3, first.stderr
    assert "cannot pay" in first.stderr
    states = Counter(s for s, _, _ in _ledger_rows(ledger).values())
    assert states["created"] == len(emu.created()) == 90  # $1.00 / $0.0102, in calls of 10
    assert states["pending"] == n - 90
    emu.set_config(funds_usd=100.0)
    second = run_cli(
        "submit", str(src), "--base-url", emu.url, "--batch-size", "10", "--ledger", str(ledger)
    )
    assert second.returncode == 0, second.stderr
    _assert_each_line_created_once(emu, ledger, n)


def test_budget_stops_before_exceeding(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 200)
    r = run_cli(
        "submit", str(src), "--base-url", emu.url, "--batch-size", "10", "--max-cost-usd", "0.5"
    )
    assert r.returncode == 3, r.stderr
    spent = sum(t["cost_usd"] for t in emu.created())
    assert 0 < spent <= 0.5
    assert len(emu.created()) == 40  # 4 calls of 10 at $0.0102 fit in $0.50; a 5th might not


def test_resend_unknown_sends_again_and_says_so(emulator, tmp_path: Path) -> None:
    emu = emulator("--drop-rate", "1.0")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 10)
    ledger = tmp_path / "run.sqlite"
    r = run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger))
    assert r.returncode == 1
    assert Counter(s for s, _, _ in _ledger_rows(ledger).values()) == {"unknown": 10}
    quiet = run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger))
    assert len(emu.created()) == 10, "unknown lines are never resent silently"
    assert "10 unknown" in quiet.stderr
    emu.set_config(drop_rate=0.0)
    loud = run_cli(
        "submit", str(src), "--base-url", emu.url, "--ledger", str(ledger), "--resend-unknown"
    )
    assert loud.returncode == 0, loud.stderr
    assert "charged and answered twice" in loud.stderr
    assert len(emu.created()) == 20


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_and_exits_130(emulator, tmp_path: Path, sig: int) -> None:
    emu = emulator("--latency-ms", "300")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 400)
    ledger = tmp_path / "run.sqlite"
    proc = spawn_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--batch-size",
        "10",
        "--concurrency",
        "4",
        "--ledger",
        str(ledger),
        stdout=subprocess.PIPE,
    )
    # Signal only once calls are going out: a fixed sleep fires before start-up on a busy
    # machine, and then the test checks nothing about draining.
    deadline = time.monotonic() + 60
    while not emu.created() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not Path(f"{ledger}.lock").exists()  # removed on a graceful stop too
    states = Counter(s for s, _, _ in _ledger_rows(ledger).values())
    assert "unknown" not in states and "sending" not in states  # in-flight calls were recorded
    assert states["created"] == len(emu.created()) > 0
    assert states["pending"] > 0
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert len(receipts) == sum(states.values())
    again = run_cli(
        "submit", str(src), "--base-url", emu.url, "--batch-size", "10", "--ledger", str(ledger)
    )
    assert again.returncode == 0, again.stderr
    _assert_each_line_created_once(emu, ledger, 400)


def test_auth_glitch_after_success_is_retried(emulator, tmp_path: Path) -> None:
    emu = emulator("--spurious-401-rate", "0.2", "--seed", "2")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 300)
    r = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--batch-size",
        "5",
        "--no-preflight",
        "--concurrency",
        "1",
    )
    posts = [c["status_code"] for c in emu.calls() if c["path"].endswith("/task_post")]
    # The seed's glitches: some after a success, never three in a row (which would stop the
    # run, rightly). With the retries gone, the first glitch stops the run with exit 2.
    first_ok = posts.index(20000)
    assert 40100 in posts[first_ok:], posts
    assert all(posts[i : i + 3] != [40100] * 3 for i in range(len(posts))), posts
    assert r.returncode == 0, r.stderr
    assert len(emu.created()) == 300
    # Every glitch was followed by a resend of the same batch: 60 calls of 5 that created.
    assert Counter(posts) == {20000: 60, 40100: posts.count(40100)}


def test_reconcile_falls_back_to_tasks_ready(emulator, tmp_path: Path) -> None:
    """A task id_list does not list (here: the ledger's clock says the POST was a day
    earlier) is still found in tasks_ready by its tag, once it is done."""
    emu = emulator("--drop-rate", "1.0", "--id-list-rate", "600")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 6)
    ledger = tmp_path / "run.sqlite"
    args = ("--base-url", emu.url, "--ledger", str(ledger), "--batch-size", "3")
    assert run_cli("submit", str(src), *args).returncode == 1
    assert Counter(s for s, _, _ in _ledger_rows(ledger).values()) == {"unknown": 6}
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE batches SET sent_at = sent_at - 86400")
    emu.set_config(drop_rate=0.0)
    r = run_cli("reconcile", "--ledger", str(ledger), "--base-url", emu.url, "--min-age", "0")
    assert r.returncode == 0, r.stderr
    rows = _ledger_rows(ledger)
    assert Counter(s for s, _, _ in rows.values()) == {"created": 6}
    assert {t["id"] for t in emu.created()} == {task_id for _, _, task_id in rows.values()}
    assert "6 found" in r.stderr
    again = run_cli("submit", str(src), *args)
    assert again.returncode == 0 and len(emu.created()) == 6  # nothing sent twice
