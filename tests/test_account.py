"""The account's limits as user_data reports them, and the rate a run takes from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks._account import USER_DATA_PATH, AccountUnavailable, parse_user_data, read_account
from llmtasks._errors import AuthError, ServiceError
from llmtasks._throttle import RetryPolicy
from llmtasks._transport import MemoryTransport, Reply, classify
from tests.conftest import run_cli, write_prompts


def _user_data(minute: dict[str, Any], balance: float = 12.5) -> bytes:
    """A user_data reply in the documented envelope."""
    result = {"money": {"balance": balance}, "rates": {"limits": {"minute": minute}}}
    task = {"id": "x", "status_code": 20000, "status_message": "Ok.", "result": [result]}
    return orjson.dumps({"status_code": 20000, "status_message": "Ok.", "tasks": [task]})


NESTED = {
    "total": 12000,
    "total_ai_optimization": 3000,
    "ai_optimization": {
        "llm_responses": {
            "live": 2000,
            "task_post": 600,
            "tasks_ready": 20,
            "task_get": 1500,
            "models": 100,
        }
    },
}


def test_the_nested_limits_are_read_per_function() -> None:
    account = parse_user_data(_user_data(NESTED))
    assert account.balance_usd == 12.5
    assert account.calls_per_minute("task_post") == 600
    assert account.calls_per_minute("task_get") == 1500
    assert account.calls_per_minute("tasks_ready") == 20
    assert account.source("task_post") == (
        "user_data rates.limits.minute.ai_optimization.llm_responses.task_post"
    )


@pytest.mark.parametrize(
    "minute",
    [
        {"total": 2000},  # an older account: no nested object
        {"total": 2000, "ai_optimization": 2000},  # ai_optimization as a number
        {"total": 2000, "ai_optimization": {}},  # nested, but without llm_responses
        {"total": 2000, "ai_optimization": {"llm_responses": {"live": 5}}},  # not this function
    ],
)
def test_without_the_functions_own_limit_total_is_the_limit(minute: dict[str, Any]) -> None:
    account = parse_user_data(_user_data(minute))
    assert account.calls_per_minute("task_post") == 2000
    assert account.source("task_post") == "user_data rates.limits.minute.total"


def test_no_limit_at_all_and_unreadable_answers() -> None:
    assert parse_user_data(_user_data({})).calls_per_minute("task_post") is None
    with pytest.raises(AccountUnavailable):
        parse_user_data(b"<html>")
    with pytest.raises(AccountUnavailable):
        parse_user_data(orjson.dumps({"status_code": 20000, "tasks": []}))


class _NoWait(RetryPolicy):
    def delay_s(self, attempt: int) -> float:
        return 0.0


LOST = Reply("unknown", None, None, "connection lost")


async def test_user_data_is_asked_three_times_then_unavailable() -> None:
    t = MemoryTransport([LOST, Reply("retry", 429, None, "HTTP 429"), LOST, LOST])
    with pytest.raises(AccountUnavailable, match=r"^cannot read account data: connection lost$"):
        await read_account(t, _NoWait())
    assert t.requests == [("GET", USER_DATA_PATH, None)] * 3


async def test_user_data_after_a_lost_reply_is_read() -> None:
    t = MemoryTransport([LOST, classify(200, _user_data(NESTED))])
    account = await read_account(t, _NoWait())
    assert account.balance_usd == 12.5 and len(t.requests) == 2


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (Reply("auth", 401, 40100, "no"), AuthError, r"refused the credentials \(status 40100"),
        (Reply("fatal", 404, 40400, "gone"), ServiceError, r"^cannot read account data: gone"),
    ],
)
async def test_refused_user_data_is_asked_once(reply: Reply, error: type, words: str) -> None:
    t = MemoryTransport([reply, LOST])
    with pytest.raises(error, match=words):
        await read_account(t, _NoWait())
    assert len(t.requests) == 1


def _posts(emu: Any) -> list[dict[str, Any]]:
    return [c for c in emu.calls() if c["path"].endswith("/task_post")]


def test_without_rate_a_run_paces_itself_to_the_accounts_600(emulator: Any, tmp_path: Path) -> None:
    # The emulator's account allows 600 calls per 60 s and reports it in user_data.
    emu = emulator("--rate", "600", "--period", "60")
    src = tmp_path / "in.jsonl"
    n = 200
    write_prompts(src, n)
    r = run_cli("submit", str(src), "--base-url", emu.url, "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    assert "limit 600 calls per 60 s); cost" in r.stderr
    assert "the limit is the account's limit, user_data" in r.stderr
    assert "llm_responses.task_post" in r.stderr
    posts = _posts(emu)
    assert len(posts) == n
    assert [c for c in posts if c["status_code"] != 20000] == []  # never 40202
    # The steady pace after the limiter's small opening burst; the documented default
    # (2000 per minute) would have sent these 200 in about 6 s.
    steady = sorted(c["at"] for c in posts)[10:]
    pace = (len(steady) - 1) / (steady[-1] - steady[0]) * 60
    assert 540 <= pace <= 600, f"{pace:.0f} calls per minute"


def test_a_rate_above_the_accounts_limit_is_warned_naming_both(
    emulator: Any, tmp_path: Path
) -> None:
    # task_post and task_get are separate budgets on the emulator, as on the service.
    emu = emulator("--rate", "600", "--period", "60", "--task-get-rate", "900")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 3)
    r = run_cli("submit", str(src), "--base-url", emu.url, "--rate", "5000")
    assert r.returncode == 0, r.stderr
    assert "--rate is 5000 calls per minute but the account allows 600" in r.stderr
    ledger = tmp_path / "in.jsonl.ledger.sqlite"
    c = run_cli("collect", "--ledger", str(ledger), "--base-url", emu.url, "--rate", "5000")
    assert "--rate is 5000 calls per minute but the account allows 900 for task_get" in c.stderr
    quiet = run_cli("submit", str(src), "--base-url", emu.url, "--rate", "600")
    assert "account allows" not in quiet.stderr


def test_without_an_account_answer_the_documented_2000(emulator: Any, tmp_path: Path) -> None:
    emu = emulator("--rate", "600", "--period", "60")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 2)
    r = run_cli("submit", str(src), "--base-url", emu.url, "--no-preflight")
    assert r.returncode == 0, r.stderr
    assert "limit 2,000 calls per 60 s); cost" in r.stderr
    assert "the limit is the documented default" in r.stderr


def test_help_says_where_the_limit_comes_from() -> None:
    for command, function in (("submit", "task_post"), ("collect", "task_get")):
        r = run_cli(command, "--help")
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        assert f"the account's {function} limit from user_data" in text
        assert f"rates.limits.minute.ai_optimization.llm_responses.{function}" in text
