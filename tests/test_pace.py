"""Pace figures: calls counted in a sliding window, never a per-minute extrapolation."""

from __future__ import annotations

import re
from pathlib import Path

from llmtasks._pace import CallWindow, progress_pace, summary_pace
from tests.conftest import run_cli, write_prompts


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_window_counts_calls_in_the_last_period_and_the_busiest_one() -> None:
    clock = Clock()
    w = CallWindow(limit=5, period_s=10.0, clock=clock)
    for _ in range(5):
        clock.t += 1
        w.note()
    assert w.in_last_window() == 5 and w.busiest == 5
    clock.t += 6.5  # the first call is now 10.5 s old
    assert w.in_last_window() == 4
    assert w.in_last_window(now=clock.t - 6.5) == 5  # reading never forgets what a past one saw
    clock.t += 20
    assert w.in_last_window() == 0 and w.busiest == 5
    # More than the limit in a window (a bug elsewhere) shows as more, never capped silently.
    for _ in range(7):
        w.note()
    assert w.in_last_window() == 6 and w.busiest == 6
    assert progress_pace(w) == "more than 5 calls in the last 10 s, limit 5"


def test_wording_before_and_after_one_window() -> None:
    clock = Clock()
    w = CallWindow(limit=2000, period_s=60.0, clock=clock)
    for _ in range(51):
        w.note()
    clock.t += 1.3
    # 51 calls in 1.3 s would "extrapolate" to 2354/min; what is said is what happened.
    assert progress_pace(w) == "51 calls so far in 1.3 s, limit 2,000 per 60 s"
    assert summary_pace(w, calls=51, retries=0, elapsed_s=1.3) == (
        "51 calls (0 retried) in 1.3 s: shorter than one 60 s window, which was never full "
        "(limit 2,000 calls per 60 s)"
    )
    clock.t += 60
    w.note()
    assert progress_pace(w) == "1 call in the last 60 s, limit 2,000"
    assert summary_pace(w, calls=52, retries=1, elapsed_s=61.3) == (
        "52 calls (1 retried) in 1m01s; busiest 60 s: 51 calls, last 60 s: 1 call "
        "(limit 2,000 calls per 60 s)"
    )


_FIGURE = re.compile(
    r"(?:more than )?([\d,]+) calls? (?:so far in [\d.]+ s|in the last 2 s)"
    r"|busiest 2 s: (?:more than )?([\d,]+) calls?|last 2 s: (?:more than )?([\d,]+) calls?"
)


def _figures(text: str) -> list[int]:
    return [int((a or b or c).replace(",", "")) for a, b, c in _FIGURE.findall(text)]


def _submit(emu_url: str, src: Path, *extra: str) -> str:
    r = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu_url,
        "--rate",
        "20",
        "--period",
        "2",
        "--batch-size",
        "1",
        "--progress-interval",
        "0.1",
        "--no-preflight",
        *extra,
    )
    assert r.returncode == 0, r.stderr
    assert "calls/min" not in r.stderr
    return r.stderr


def test_printed_figures_never_exceed_the_limit_in_a_short_and_a_long_run(
    emulator, tmp_path: Path
) -> None:
    # The emulator enforces the same 20 calls per 2 s: a 40202 would show as a retry.
    emu = emulator("--rate", "20", "--period", "2", "--latency-ms", "20")
    short = tmp_path / "short.jsonl"
    write_prompts(short, 5)
    out = _submit(emu.url, short)
    assert "5 calls (0 retried) in " in out
    assert "shorter than one 2 s window, which was never full (limit 20 calls per 2 s)" in out
    figures = _figures(out)
    assert figures and max(figures) <= 20, out

    long = tmp_path / "long.jsonl"
    write_prompts(long, 70)  # 70 calls at 20 per 2 s: several windows
    out = _submit(emu.url, long)
    progress = [x for x in out.splitlines() if x.startswith("llmtasks: progress: ")]
    assert any("in the last 2 s, limit 20" in x for x in progress), out
    assert "70 calls (0 retried) in " in out and "busiest 2 s: " in out
    figures = _figures(out)
    assert len(figures) >= len(progress) + 2
    assert max(figures) <= 20, out
    assert max(figures) >= 15  # the window did fill: the figures are not all trivially low
    assert "more than" not in out
