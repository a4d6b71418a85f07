"""The real CLI under a strict sliding-window limit on the emulator: never over, nearly all used."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, write_prompts


def _peak_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    peak, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


def test_cli_never_trips_the_limit_and_uses_at_least_95_percent(emulator, tmp_path: Path) -> None:
    rate, period = 100, 2.0
    emu = emulator("--rate", str(rate), "--period", str(period))
    src = tmp_path / "in.jsonl"
    n_calls = 320
    write_prompts(src, n_calls)
    r = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--rate",
        str(rate),
        "--period",
        str(period),
        "--batch-size",
        "1",
    )
    assert r.returncode == 0, r.stderr
    posts = [c for c in emu.calls() if c["path"].endswith("/task_post")]
    # Refusals first, so a 40202 (jitter beyond the margin) and a doubled send read differently.
    assert [c for c in posts if c["status_code"] != 20000] == []  # zero 40202
    assert len(posts) == n_calls
    arrivals = [c["at"] for c in posts]
    assert _peak_window(arrivals, period) <= rate
    span = max(arrivals) - min(arrivals)
    achieved = (n_calls - 1) / span  # calls per second between the first and last arrival
    assert achieved >= 0.95 * rate / period, f"{achieved:.2f}/s of {rate / period}/s"
