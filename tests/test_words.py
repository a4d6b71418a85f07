"""Every summary the tools print, with 0, 1 and 2 of each thing counted: nouns agree."""

from __future__ import annotations

import argparse
import re

import pytest

from llmtasks._cmd_collect import collect_line, collect_notes
from llmtasks._cmd_receive import receive_line
from llmtasks._cmd_reconcile import reconcile_summary
from llmtasks._collect import CollectStats
from llmtasks._dry_run import dry_run_summary
from llmtasks._models import ModelInfo, format_table
from llmtasks._pace import CallWindow, RunStats
from llmtasks._receiver import ReceiveStats
from llmtasks._reconcile import ReconcileReport
from llmtasks._status import format_status
from llmtasks._submit_run import submit_summary
from llmtasks._words import count, verb

NOUNS = (
    "line",
    "call",
    "task",
    "receipt",
    "reject",
    "poll",
    "result",
    "duplicate",
    "postback",
    "pingback",
    "model",
    "id_list call",
    "task_get call",
    "created task",
)
_ONE_PLURAL = re.compile(r"(?<![\d,.])1 (" + "|".join(f"{n}s" for n in NOUNS) + r")\b")
_MANY_SINGULAR = re.compile(r"(?<![\d.])(?:0|2|[\d,]*\d{2}) (" + "|".join(NOUNS) + r")(?!s)\b")


def test_count_and_verb() -> None:
    assert [count(n, "line") for n in (0, 1, 2, 1234)] == [
        "0 lines",
        "1 line",
        "2 lines",
        "1,234 lines",
    ]
    assert count(1, "reply", "replies") == "1 reply" and count(3, "reply", "replies") == "3 replies"
    assert [verb(n, "is", "are") for n in (0, 1, 2)] == ["are", "is", "are"]


def _submit_text(n: int) -> str:
    window = CallWindow(limit=20, period_s=2.0)
    for _ in range(n):
        window.note()
    stats = RunStats(window=window, lines_read=n, already_done=n, calls=n, retries=n)
    stats.ended = stats.started + 0.5
    args = argparse.Namespace(rate=20, period=2.0)
    counts = dict.fromkeys(("created", "rejected", "failed", "unknown", "pending", "skipped"), n)
    long_stats = RunStats(window=window, lines_read=n, calls=n)
    long_stats.ended = long_stats.started + 5
    return "\n".join(
        [
            submit_summary(args, stats, counts, "r.jsonl", "x.jsonl", n, "l.sqlite"),
            submit_summary(args, long_stats, counts, "", "x.jsonl", n, "l.sqlite"),
        ]
    )


def _dry_run_text(n: int) -> str:
    args = argparse.Namespace(input="in.jsonl", rate=20, period=2.0, max_task_cost_usd=0.01)
    return dry_run_summary(args, {"valid": n, "rejected": 0, "skipped": 0}, n)


def _reconcile_text(n: int) -> str:
    return reconcile_summary(ReconcileReport(n, n, n, n, n, n))


def _collect_text(n: int) -> str:
    stats = CollectStats(polls=n, calls=n, next_poll_s=None)
    counts = {"collected": n, "created": n, "failed": n, "waiting": n}
    states = {"pending": n}
    return "\n".join([collect_line(counts, stats, 3.0), *collect_notes(counts, states)])


def _receive_text(n: int) -> str:
    stats = ReceiveStats(
        postbacks=n, pingbacks=n, stored=n, duplicates=n, foreign=n, refused=n, forbidden=n
    )
    return receive_line(stats, "/nonexistent/results.jsonl")


def _status_text(n: int) -> str:
    return format_status(
        {
            "ledger": "l.sqlite",
            "input": "in.jsonl",
            "engine": "chat_gpt",
            "run_id": "abcd",
            "lines": n,
            "states": {"created": n},
            "status_codes": {"20100": n},
            "cost_usd": 0.0,
            "collected": 0,
            "calls": n,
            "calls_sending": n,
            "first_call_at": None,
            "last_call_at": None,
            "sessions": [
                {"session": 1, "started_at": 0.0, "ended_at": 1.0, "calls": n, "cost_usd": 0.0}
            ],
            "next": [],
        }
    )


def _models_text(n: int) -> str:
    models = [ModelInfo(f"m{i}", False, True) for i in range(n)]
    return format_table(models, "chat_gpt")


FORMS = {
    "submit": _submit_text,
    "dry-run": _dry_run_text,
    "reconcile": _reconcile_text,
    "collect": _collect_text,
    "receive": _receive_text,
    "status": _status_text,
    "models": _models_text,
}


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_summary_form_agrees_with_its_counts(form: str, n: int) -> None:
    text = FORMS[form](n)
    assert not _ONE_PLURAL.search(text), text
    assert not _MANY_SINGULAR.search(text), text
    assert "(s)" not in text


def test_some_summaries_word_for_word() -> None:
    assert _submit_text(1).splitlines()[:4] == [
        "llmtasks: 1 line read (1 done by earlier runs); ledger holds 6 lines: 1 created, "
        "1 rejected, 1 failed, 1 unknown, 1 pending, 1 blank",
        "llmtasks: 1 call (1 retried) in 0.5 s: shorter than one 2 s window, which was never "
        "full (limit 20 calls per 2 s); cost reported by the service $0.0000",
        "llmtasks: receipts in r.jsonl, 1 reject in x.jsonl",
        "llmtasks: 1 line unknown (sent, no reply): run 'llmtasks reconcile --ledger l.sqlite' "
        "before sending it again",
    ]
    assert _collect_text(1).splitlines() == [
        "llmtasks: collect: 1 of 1 created task collected, 1 failed, 1 waiting; 1 poll, "
        "1 task_get call in 3 s",
        "llmtasks: 1 task failed on the service side (their lines have a status_code other "
        "than 20000 and no result; 40401 not found and 40403 expired are final; any other "
        "failed task is refunded)",
        "llmtasks: 1 line of the ledger is not a created task yet (pending or unknown): "
        "collect does not wait for it",
    ]
    assert _reconcile_text(2).splitlines()[1] == (
        "llmtasks: warning: 2 tasks exist twice on the service (sent again earlier): each "
        "copy was charged"
    )
    assert _receive_text(1) == (
        "llmtasks: receive: 1 postback, 1 pingback, 1 result stored, 1 duplicate, 1 not in "
        "the ledger, 1 without the secret, 1 refused in all; no results yet (none written to "
        "/nonexistent/results.jsonl)"
    )
