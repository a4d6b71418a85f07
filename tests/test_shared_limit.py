"""The shared limiter against a real redis-server on a loopback port.

Unit tests drive the admission script directly and count exactly; the fleet tests run four
``submit --shard i/4 --limiter`` processes against one emulator with a strict sliding window,
once undisturbed and once with Redis killed in the middle of the run.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmtasks._errors import ConfigError
from llmtasks._shared import RedisThrottle, account_key, make_throttle, redacted
from llmtasks._transport import Reply
from tests.conftest import (
    _OUTPUTS,
    LOGIN,
    PASSWORD,
    RedisServer,
    cli_env,
    free_port,
    read_jsonl,
    require,
    require_module,
    run_cli,
    spawn_cli,
    write_prompts,
)

require_module("redis")  # the redis client, in the test extra
require("redis-server")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def throttle(server: RedisServer, **kw: Any) -> RedisThrottle:
    settings: dict[str, Any] = {
        "rate": 10,
        "burst": 10,  # no pacing unless a test asks for it
        "period_s": 1.0,
        "margin_s": 0.0,
        "max_in_flight": 100,
        "account_key": account_key(LOGIN),
    }
    settings.update(kw)
    return make_throttle(server.url, **settings)


def _peak_window(times: list[float], window_s: float) -> int:
    """Most calls in any window (t - window_s, t]: how the emulator counts."""
    times = sorted(times)
    peak, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


# -- the admission script, exactly -----------------------------------------------------------


async def test_in_flight_cap_counts_leases_and_a_release_frees_one(redis_server) -> None:
    async with throttle(redis_server, max_in_flight=3) as t:
        got = [await t.admit(f"lease-{i}") for i in range(5)]
        assert [a.admitted for a in got] == [True, True, True, False, False]
        assert {a.why for a in got[3:]} == {"in_flight"}
        assert all(0 < a.wait_s <= 0.01 for a in got[3:])
        await t._client.zrem(t.keys[0], "lease-1")
        assert (await t.admit("lease-5")).admitted
        assert not (await t.admit("lease-6")).admitted


async def test_the_log_admits_exactly_rate_per_window_and_says_how_long_to_wait(
    redis_server,
) -> None:
    # burst == rate: the bare log, no pacing.
    async with throttle(redis_server, rate=5, burst=5, period_s=1.0, margin_s=0.2) as t:
        got = [await t.admit("a0")]
        await asyncio.sleep(0.3)  # so that only the first leaves when the wait is over
        got += [await t.admit(f"a{i}") for i in range(1, 7)]
        assert [a.admitted for a in got] == [True] * 5 + [False] * 2
        assert got[5].why == "rate"
        # The oldest admission leaves the window of period + margin = 1.2 s.
        expected = got[0].at_s + 1.2 - got[5].at_s
        assert got[5].wait_s == pytest.approx(expected, abs=2e-6)
        await asyncio.sleep(got[6].wait_s)
        again = [await t.admit(f"b{i}") for i in range(2)]
        # Exactly the first left the window: one more admission.
        assert [a.admitted for a in again] == [True, False]
        assert again[0].at_s - got[0].at_s > 1.2


async def test_pacing_keeps_a_schedule_and_a_late_caller_loses_nothing(redis_server) -> None:
    # 10 per second, 2 of slack: due times t0, t0, t0 + 0.1, t0 + 0.2, ...
    async with throttle(redis_server, rate=10, burst=2, period_s=1.0, margin_s=0.0) as t:
        got = [await t.admit(f"a{i}") for i in range(3)]
        assert [a.admitted for a in got] == [True, True, False]
        assert got[2].why == "pace"
        t0 = got[0].at_s
        assert got[2].wait_s == pytest.approx(t0 + 0.1 - got[2].at_s, abs=2e-6)
        await asyncio.sleep(got[2].wait_s + 0.05)  # late by 50 ms
        late = await t.admit("b")
        assert late.admitted
        # The next is due at t0 + 0.2 as planned, not 0.1 s after the late one.
        refused = await t.admit("c")
        assert not refused.admitted and refused.why == "pace"
        assert refused.wait_s == pytest.approx(t0 + 0.2 - refused.at_s, abs=2e-6)


async def test_many_clients_at_once_never_pass_the_limit(redis_server) -> None:
    """Eight processes' worth of clients race for one window: exactly `rate` get in."""
    rate = 40
    clients = [
        throttle(redis_server, rate=rate, burst=rate, period_s=30.0, max_in_flight=1000)
        for _ in range(8)
    ]
    try:
        for c in clients:
            await c.start()
        got = await asyncio.gather(
            *(c.admit(f"c{i}-{j}") for i, c in enumerate(clients) for j in range(20))
        )
        assert sum(a.admitted for a in got) == rate
        assert await clients[0]._client.zcard(clients[0].keys[1]) == rate
        assert await clients[0]._client.zcard(clients[0].keys[0]) == rate
    finally:
        for c in clients:
            await c.aclose()


async def test_a_dead_process_holds_its_lease_only_until_it_expires(redis_server) -> None:
    async with throttle(redis_server, max_in_flight=1, lease_ttl_s=0.3) as t:
        assert (await t.admit("dead")).admitted  # never released
        assert not (await t.admit("x")).admitted
        await asyncio.sleep(0.35)
        assert (await t.admit("y")).admitted


async def test_a_running_call_keeps_its_lease_renewed(redis_server) -> None:
    async with (
        throttle(redis_server, max_in_flight=1, lease_ttl_s=0.3) as t,
        throttle(redis_server, max_in_flight=1, lease_ttl_s=0.3) as other,
    ):
        async with t.slot():
            await asyncio.sleep(0.8)  # well past the ttl: renewed every 0.1 s
            refused = await other.admit("other")
            assert not refused.admitted and refused.why == "in_flight"
        # Released in the finally: free at once, not after the ttl.
        assert await t._client.zcard(t.keys[0]) == 0
        assert (await other.admit("other-2")).admitted


async def test_slot_waits_its_turn_and_yields_the_server_time(redis_server) -> None:
    async with throttle(redis_server, rate=4, burst=4, period_s=0.5, margin_s=0.0) as t:
        times: list[float] = []

        async def call() -> None:
            async with t.slot() as at:
                times.append(at)

        started = time.monotonic()
        await asyncio.gather(*(call() for _ in range(9)))
        assert time.monotonic() - started >= 1.0  # 4 now, 4 after 0.5 s, 1 after 1 s
        assert _peak_window(times, 0.5) == 4
        assert abs(times[0] - time.time()) < 60  # Redis TIME, in seconds


async def test_40202_halves_the_shared_rate_once_per_volley(redis_server) -> None:
    async with (
        throttle(redis_server, rate=10, burst=10, period_s=30.0) as t,
        throttle(redis_server, rate=10, burst=10, period_s=30.0) as other,
    ):
        first = await t.admit("a")
        assert await t.cut("rate", first.at_s)
        # Replies of calls admitted before the cut do not cut again.
        assert not await other.cut("rate", first.at_s)
        # The limit is 5 for everybody now; "a" is already in the log.
        got = [await other.admit(f"b{i}") for i in range(6)]
        assert [a.admitted for a in got] == [True] * 4 + [False] * 2
        assert got[4].why == "rate"
        # A call admitted after the cut that is refused again cuts again: 10 → 5 → 2.
        assert await t.cut("rate", got[0].at_s)
        assert not (await t.admit("c")).admitted


async def test_40202_reaches_redis_through_react(redis_server) -> None:
    async with throttle(redis_server, rate=10, burst=10, period_s=30.0) as t:
        async with t.slot() as at:
            pass
        t.react(Reply("retry", 200, 40202, "Rate limit exceeded."), at)
        await asyncio.wait(t._reports, timeout=5)
        state = await t._client.hgetall(t.keys[2])
        assert float(state[b"cut_to"]) == 0.5


async def test_40209_lowers_the_shared_cap_which_grows_back(redis_server) -> None:
    async with throttle(redis_server, max_in_flight=3, cap_recovery_s=0.5) as t:
        first = await t.admit("a")
        t.react(Reply("retry", 200, 40209, "Too many requests at once."), first.at_s)
        await asyncio.wait(t._reports, timeout=5)
        assert (await t.admit("b")).admitted
        refused = await t.admit("c")  # cap 2 now
        assert not refused.admitted and refused.why == "in_flight"
        assert not await t.cut("cap", first.at_s)  # same volley: no second cut
        await asyncio.sleep(0.55)
        assert (await t.admit("d")).admitted  # one step back: 3


async def test_after_redis_lost_its_keys_everybody_waits_one_window(redis_server) -> None:
    async with throttle(redis_server, rate=10, burst=10, period_s=0.5, margin_s=0.1) as t:
        assert (await t.admit("a")).admitted
        await t._client.flushall()  # what a restart without persistence leaves
        held = await t.admit("b")
        assert not held.admitted and held.why == "hold"
        assert held.wait_s == pytest.approx(0.6, abs=0.01)
        async with throttle(redis_server, rate=10, burst=10, period_s=0.5, margin_s=0.1) as new:
            assert not (await new.admit("c")).admitted  # a newcomer is held as well
        await asyncio.sleep(held.wait_s)
        assert (await t.admit("d")).admitted


async def test_slot_pauses_while_redis_is_down_and_resumes(redis_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="llmtasks")
    async with throttle(redis_server, rate=10, burst=10, period_s=0.3, margin_s=0.0) as t:
        async with t.slot():
            pass
        redis_server.kill()
        waiting = asyncio.create_task(_enter(t))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # never admitted without Redis
        assert "limiter unreachable, pausing" in caplog.text
        redis_server.start()  # same port, every key lost
        at = await asyncio.wait_for(waiting, 15)
        assert at > 0
        assert "limiter reachable again" in caplog.text
        assert t.outages == 1


async def _enter(t: RedisThrottle) -> float:
    async with t.slot() as at:
        return at


async def test_keys_name_a_hash_of_the_account_never_the_login(redis_server) -> None:
    async with throttle(redis_server) as t:
        async with t.slot():
            pass
        keys = [k.decode() for k in await t._client.keys("*")]
    assert keys and all(k.startswith(f"llmtasks:{{{account_key(LOGIN)}}}:") for k in keys)
    assert not any(LOGIN in k or PASSWORD in k for k in keys)
    assert account_key(LOGIN) != account_key(LOGIN + "x")
    assert redacted("redis://user:secret@host:6379/0") == "redis://host:6379/0"


async def test_a_wrong_limiter_url_fails_fast(tmp_path) -> None:
    t = make_throttle(
        f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
        rate=10,
        period_s=1.0,
        margin_s=None,
        max_in_flight=5,
        account_key="k",
    )
    with pytest.raises(ConfigError, match="cannot reach the limiter") as info:
        await t.start()
    await t.aclose()
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError):
        make_throttle(
            "http://x", rate=10, period_s=1.0, margin_s=None, max_in_flight=5, account_key="k"
        )


# -- a fleet of real submit processes --------------------------------------------------------


class Procs:
    """CLI processes run side by side, each with its output in a file."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.outputs = [tempfile.TemporaryFile() for _ in commands]  # noqa: SIM115
        self.procs = [
            spawn_cli(*command, stdout=out, stderr=subprocess.STDOUT, text=False)
            for command, out in zip(commands, self.outputs, strict=True)
        ]

    def wait(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                codes.append(p.wait())
        return codes

    def texts(self) -> list[str]:
        texts = []
        for out in self.outputs:
            out.seek(0)
            texts.append(out.read().decode("utf-8", "replace"))
            out.close()
        _OUTPUTS.extend(texts)
        return texts


class Fleet(Procs):
    """N ``submit --shard i/N --limiter`` processes on one input."""

    def __init__(self, src: Path, emu_url: str, limiter: str, n: int, *extra: str) -> None:
        super().__init__(
            [
                [
                    "submit",
                    str(src),
                    "--base-url",
                    emu_url,
                    "--batch-size",
                    "1",
                    "--shard",
                    f"{i}/{n}",
                    "--limiter",
                    limiter,
                    *extra,
                ]
                for i in range(1, n + 1)
            ]
        )


def _check_every_line_created_once(src: Path, n_lines: int, n: int, emu: Any) -> None:
    lines: list[int] = []
    for i in range(1, n + 1):
        receipts = read_jsonl(Path(f"{src}.shard-{i}-of-{n}.receipts.jsonl"))
        assert {r["state"] for r in receipts} == {"created"}
        assert all((r["line"] - 1) % n == i - 1 for r in receipts)
        lines += [r["line"] for r in receipts]
    assert sorted(lines) == list(range(1, n_lines + 1))
    prompts = sorted(t["user_prompt"] for t in emu.created())
    assert prompts == sorted(f"prompt number {i}: which brands lead?" for i in range(n_lines))


def test_four_processes_share_one_limit_never_over_nearly_all_used(
    emulator, redis_server, tmp_path: Path
) -> None:
    # 50 calls a second at the emulator. The margin must cover the jitter between admission
    # and arrival (the design's m >= J): four processes starting on two cores that other
    # work also loads were seen to exceed the default 1% (50 ms of 5 s) and draw a 40202.
    # The real period of 60 s gives the default 600 ms; here the margin is set to 250 ms,
    # and "nearly all used" is judged against what that margin leaves: rate per period+margin.
    rate, period, margin, n_lines = 250, 5.0, 0.25, 400
    emu = emulator("--rate", str(rate), "--period", str(period))
    src = tmp_path / "in.jsonl"
    write_prompts(src, n_lines)
    limits = ["--rate", str(rate), "--period", str(period), "--margin", str(margin)]
    fleet = Fleet(src, emu.url, redis_server.url, 4, *limits)
    codes = fleet.wait(120)
    texts = fleet.texts()
    assert codes == [0, 0, 0, 0], texts
    posts = [c for c in emu.calls() if c["path"].endswith("/task_post")]
    # Refusals first: an extra call that was a 40202 (load jitter beyond the margin) and an
    # extra call that created a task twice are different failures and must read differently.
    assert [c for c in posts if c["status_code"] != 20000] == []  # zero 40202 (or 40209)
    assert len(posts) == n_lines
    arrivals = [c["at"] for c in posts]
    assert _peak_window(arrivals, period) <= rate
    achieved = (n_lines - 1) / (max(arrivals) - min(arrivals))
    allowed = rate / (period + margin)
    assert achieved >= 0.97 * allowed, f"{achieved:.2f}/s of {allowed:.2f}/s"
    _check_every_line_created_once(src, n_lines, 4, emu)


def test_three_submits_then_three_collects_share_the_task_get_budget(
    emulator, redis_server, tmp_path: Path
) -> None:
    """Issue 14's Done-when: an account whose task_get limit is 40 per 2 s (its own budget,
    beside task_post's); three shard submits, then three collects (one per shard ledger),
    all on one --limiter. No 40202 anywhere, task_get at most 40 in any 2 s window at the
    emulator, and every created task collected exactly once."""
    post_rate, get_rate, period, n_lines, n = 100, 40, 2.0, 240, 3
    emu = emulator(
        "--rate", str(post_rate), "--task-get-rate", str(get_rate), "--period", str(period)
    )
    src = tmp_path / "in.jsonl"
    write_prompts(src, n_lines)
    # A margin of 10% of the window: this test is about sharing, and on a loaded 2-core box
    # the delay between admission and arrival outgrows the default 1% (20 ms of 2 s).
    limits = ["--period", str(period), "--margin", "0.2"]
    common = ["--base-url", emu.url, "--limiter", redis_server.url, *limits]
    submits = Fleet(src, emu.url, redis_server.url, n, "--rate", str(post_rate), *limits)
    codes = submits.wait(120)
    assert codes == [0] * n, submits.texts()
    submits.texts()
    _check_every_line_created_once(src, n_lines, n, emu)
    ledgers = [tmp_path / f"in.jsonl.shard-{i}-of-{n}.ledger.sqlite" for i in range(1, n + 1)]
    # No --rate: each collect reads task_get's own limit from user_data (1200 per minute).
    collects = Procs(
        [
            ["collect", "--ledger", str(ledger), "--wait", "--max-wait", "120", *common]
            for ledger in ledgers
        ]
    )
    codes = collects.wait(180)
    texts = collects.texts()
    assert codes == [0] * n, texts
    calls = emu.calls()
    refused = [(c["path"], c["status_code"]) for c in calls if c["status_code"] != 20000]
    assert refused == []
    gets = [c for c in calls if "/task_get/" in c["path"]]
    assert _peak_window([c["at"] for c in gets], period) <= get_rate
    created = {t["id"] for t in emu.created()}
    assert len(created) == n_lines
    # Exactly once: one task_get per task, one result line per task across the shards.
    assert len(gets) == n_lines
    collected: list[str] = []
    for ledger in ledgers:
        out = Path(str(ledger).removesuffix(".ledger.sqlite") + ".results.jsonl")
        collected += [r["task_id"] for r in read_jsonl(out)]
    assert sorted(collected) == sorted(created)
    # The three processes shared the budget: together they used most of it.
    arrivals = sorted(c["at"] for c in gets)
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert achieved >= 0.5 * get_rate / period, f"{achieved:.1f}/s of {get_rate / period}/s"
    print(f"task_get: {len(gets)} calls, peak {_peak_window(arrivals, period)}, {achieved:.1f}/s")
    import redis

    prefix = f"llmtasks:{{{account_key(LOGIN)}}}:"
    with redis.Redis(port=redis_server.port) as client:
        keys = {k.decode() for k in client.scan_iter("llmtasks:*")}
    # One budget per published limit (a log expires a window after its last call; the state
    # that holds its schedule lasts).
    assert {f"{prefix}{f}:state" for f in ("task_post", "task_get", "tasks_ready")} <= keys


def test_reconcile_takes_its_calls_from_the_fleets_budgets_and_retries_tasks_ready(
    emulator, redis_server, tmp_path: Path
) -> None:
    """reconcile --limiter: id_list and tasks_ready each from its own budget in Redis; its
    tasks_ready call (once a single try with no token) is retried when the service fails."""
    import redis

    from tests.test_reliability import _ledger_rows

    emu = emulator("--drop-rate", "1.0", "--id-list-rate", "600", "--seed", "1")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 6)
    ledger = tmp_path / "run.sqlite"
    args = ("--base-url", emu.url, "--ledger", str(ledger), "--batch-size", "3")
    assert run_cli("submit", str(src), *args).returncode == 1
    with sqlite3.connect(ledger) as db:
        # id_list cannot see a POST this old: only tasks_ready can find these tasks.
        db.execute("UPDATE batches SET sent_at = sent_at - 86400")
    # Seeded anew here, so how many draws submit's calls took does not matter: with seed 3
    # reconcile's first tasks_ready call is one of the failures (asserted below).
    emu.set_config(drop_rate=0.0, fail_rate=0.5, seed=3)
    r = run_cli(
        "reconcile",
        "--ledger",
        str(ledger),
        "--base-url",
        emu.url,
        "--min-age",
        "0",
        "--limiter",
        redis_server.url,
    )
    assert r.returncode == 0, r.stderr
    assert Counter(s for s, _, _ in _ledger_rows(ledger).values()) == {"created": 6}
    ready = [c for c in emu.calls() if c["path"].endswith("/tasks_ready")]
    assert ready[0]["http_status"] == 500 and ready[-1]["status_code"] == 20000, ready
    prefix = f"llmtasks:{{{account_key(LOGIN)}}}:"
    with redis.Redis(port=redis_server.port) as client:
        keys = {k.decode() for k in client.scan_iter("llmtasks:*")}
        admitted = client.zcard(f"{prefix}tasks_ready:log")
    assert {f"{prefix}id_list:state", f"{prefix}tasks_ready:state"} <= keys
    assert admitted == len(ready)  # every try took a token


def test_receive_and_models_take_their_calls_from_the_fleets_budgets(
    emulator, redis_server, tmp_path: Path
) -> None:
    """receive --limiter: each pingback's task_get takes a token from the task_get budget in
    Redis (under the account's task_get limit); models --limiter from the models budget."""
    import redis

    from tests.test_receive import ReceiverProcess, _write

    emu = emulator("--task-get-rate", "20", "--period", "2", "--completion-delay", "0.5")
    ledger, out, n = tmp_path / "run.sqlite", tmp_path / "results.jsonl", 60
    recv = ReceiverProcess(
        "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url, "--until-done",
        "--rate", "20", "--period", "2", "--margin", "0.2", "--limiter", redis_server.url,
    )  # fmt: skip
    src = tmp_path / "in.jsonl"
    _write(src, n, model_name="gpt-4.1-mini", pingback_url=f"{recv.url}/pingback?id=$id&tag=$tag")
    sub = run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger), "-q")
    assert sub.returncode == 0, sub.stderr
    assert recv.finish(120) == 0, recv.stderr
    assert len(read_jsonl(out)) == n
    gets = [c for c in emu.calls() if "/task_get/" in c["path"]]
    assert len(gets) == n and {c["status_code"] for c in gets} == {20000}
    assert _peak_window([c["at"] for c in gets], 2.0) <= 20
    models = run_cli("models", "--base-url", emu.url, "--limiter", redis_server.url, "--json")
    assert models.returncode == 0, models.stderr
    prefix = f"llmtasks:{{{account_key(LOGIN)}}}:"
    with redis.Redis(port=redis_server.port) as client:
        keys = {k.decode() for k in client.scan_iter("llmtasks:*")}
    assert {f"{prefix}task_get:state", f"{prefix}models:state"} <= keys


def test_redis_killed_mid_run_pauses_the_fleet_then_it_resumes(
    emulator, redis_server, tmp_path: Path
) -> None:
    rate, period, n_lines, outage_s = 250, 5.0, 500, 3.0  # the margin: as above
    emu = emulator("--rate", str(rate), "--period", str(period))
    src = tmp_path / "in.jsonl"
    write_prompts(src, n_lines)
    fleet = Fleet(src, emu.url, redis_server.url, 4, "--rate", str(rate), "--period", str(period))
    try:
        deadline = time.monotonic() + 60
        while len(emu.calls()) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        redis_server.kill()
        killed_at = time.monotonic()
        time.sleep(outage_s)
        during = [c for c in emu.calls() if c["path"].endswith("/task_post")]
        redis_server.start()
        restarted_at = time.monotonic()
    finally:
        codes = fleet.wait(120)
    texts = fleet.texts()
    assert codes == [0, 0, 0, 0], texts
    # Nothing was admitted without Redis: calls already on their way arrive within moments.
    assert [c for c in during if c["at"] > killed_at + 0.5] == []
    posts = [c for c in emu.calls() if c["path"].endswith("/task_post")]
    assert not [c for c in posts if killed_at + 0.5 < c["at"] < restarted_at]
    assert len(posts) == n_lines
    assert [c for c in posts if c["status_code"] != 20000] == []
    assert _peak_window([c["at"] for c in posts], period) <= rate
    assert any("limiter unreachable, pausing" in t for t in texts)
    assert any("limiter reachable again" in t for t in texts)
    _check_every_line_created_once(src, n_lines, 4, emu)


def test_without_limiter_nothing_changes(emulator, tmp_path: Path, monkeypatch) -> None:
    """No --limiter and no LLMTASKS_LIMITER: the in-process throttle, no Redis anywhere."""
    from llmtasks._cli import build_parser

    monkeypatch.delenv("LLMTASKS_LIMITER", raising=False)
    assert build_parser().parse_args(["submit", "x.jsonl"]).limiter is None
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 5)
    r = subprocess.run(
        [sys.executable, "-m", "llmtasks", "submit", str(src), "--base-url", emu.url],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    _OUTPUTS.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr


def test_the_environment_names_the_limiter(emulator, redis_server, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 5)
    r = subprocess.run(
        [sys.executable, "-m", "llmtasks", "submit", str(src), "--base-url", emu.url, "-q"],
        env=cli_env(LLMTASKS_LIMITER=redis_server.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    _OUTPUTS.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr
    import redis

    with redis.Redis(port=redis_server.port) as client:
        keys = {k.decode() for k in client.scan_iter("llmtasks:*")}
        logged = client.zcard(f"llmtasks:{{{account_key(LOGIN)}}}:task_post:log")
    assert f"llmtasks:{{{account_key(LOGIN)}}}:task_post:log" in keys
    assert logged >= 1  # the call was admitted through Redis


def test_fleet_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/bench_fleet.py --quick still works (its figures are not asserted here)."""
    import json

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fleet.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--quick"],
        capture_output=True,
        text=True,
        env={**cli_env(), "LLMTASKS_BENCH_RESULTS": str(tmp_path)},
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(summary["saved"]).parent == tmp_path
    modes = {row["mode"]: row for row in summary["summary"]}
    assert set(modes) == {"shared", "split", "none"}
    assert modes["shared"]["accepted"] == modes["shared"]["lines"]
    assert modes["split"]["accepted"] == modes["split"]["lines"]


def test_one_ctrl_c_stops_a_run_paused_on_an_unreachable_limiter(
    emulator, redis_server, tmp_path: Path
) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 300)
    ledger = tmp_path / "run.sqlite"
    proc = spawn_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--limiter",
        redis_server.url,
        "--rate",
        "40",
        "--period",
        "2",
        "--batch-size",
        "1",
        "--ledger",
        str(ledger),
    )
    deadline = time.monotonic() + 30
    while len(emu.created()) < 5:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    redis_server.kill()
    time.sleep(1.5)  # the senders are now waiting for a limiter that does not answer
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # one Ctrl-C is enough
    assert proc.returncode == 130, err
    with sqlite3.connect(ledger) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM lines GROUP BY state").fetchall())
    assert states.get("created") == len(emu.created())
    assert "unknown" not in states
