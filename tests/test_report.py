"""The report's figures from a hand-built ledger, and its page (the CLI and Chromium tests are
in test_results_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtasks._ledger import Ledger, NewLine
from llmtasks._report import calls_per_minute, external_references, gather
from tests.test_results_flatten import (
    CHAT_GPT_RESULT,
    GEMINI_RESULT,
    NO_SEARCH_RESULT,
    _ledger_with_results,
)


def test_calls_per_minute_and_the_busiest_window() -> None:
    assert calls_per_minute([]) == ([], 0)
    calls = [0.0, 1.0, 59.0, 59.5, 60.0, 61.0, 130.0]
    bins, peak = calls_per_minute(calls)
    assert bins == [4, 2, 1]  # minutes [0,60), [60,120), [120,180) from the first call
    assert peak == 4  # e.g. 1.0, 59.0, 59.5, 60.0; never 5 within any 60 s
    assert calls_per_minute([5.0] * 3) == ([3], 3)
    assert calls_per_minute([0.0, 59.9, 60.0]) == ([2, 1], 2)  # 0.0 and 60.0: 60 s apart


def test_gather_counts_outcomes_cost_search_and_domains(tmp_path: Path) -> None:
    _src, path = _ledger_with_results(
        tmp_path, [CHAT_GPT_RESULT, NO_SEARCH_RESULT, None, GEMINI_RESULT]
    )
    ledger = Ledger.open_existing(path)
    try:
        ledger.add_lines([NewLine(5, b"x" * 8, "rejected", field="temperature", reason="bad")])
        facts = gather(ledger, limit_per_minute=2000)
    finally:
        ledger.close()
    assert list(facts.engines) == ["gemini"]
    g = facts.engines["gemini"]
    assert dict(g.states) == {"collected": 3, "failed on the service": 1, "rejected": 1}
    assert g.answers == 3 and g.searched == 2 and g.citations == 6
    assert g.domains == {"bbc.co.uk": 2, "brand-b.com": 1, "wikipedia.org": 1, "reuters.com": 1}
    assert len(g.latency_s) == 4 and min(g.latency_s) >= 0
    assert facts.cost == pytest.approx(
        {
            ("gemini", "gpt-4.1-mini-2025-04-14"): 0.01,
            ("gemini", "claude-sonnet-4-20250514"): 0.01,
            ("gemini", "(no result)"): 0.01,
            ("gemini", "gemini-2.5-flash"): 0.01,
        }
    )
    assert facts.money_spent[("gemini", "gpt-4.1-mini-2025-04-14")] == pytest.approx(0.0011)
    assert len(facts.calls) == 1 and facts.retries == 0


def test_the_page_has_every_chart_and_fetches_nothing(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from llmtasks._report import render

    _src, path = _ledger_with_results(tmp_path, [CHAT_GPT_RESULT, GEMINI_RESULT])
    ledger = Ledger.open_existing(path)
    try:
        page = render(gather(ledger, limit_per_minute=600))
    finally:
        ledger.close()
    assert page.count("<svg") == 6 and page.count('<figure class="chart">') == 6
    assert external_references(page) == []
    assert "<script" not in page
    # The summary row: 2 lines, 2 collected, $0.0200, both searched, 3 citations per answer.
    assert "<td>gemini</td><td>2</td><td>2</td><td>$0.0200</td><td>100%</td><td>3.00</td>" in page
    assert "limit 600 per minute" in page
    assert external_references('<img src="https://x.example/a.png">') != []
