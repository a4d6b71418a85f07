"""Every benchmark script still runs, with tiny sizes (``--quick``), and says what it measured.

Only that the scripts work is checked here; the figures themselves are never asserted (a
CI machine is too noisy for that): they are published from real runs in docs/benchmarks.md.
The plot and the official-client reference need the ``bench`` extra; without it those parts
are switched off, as CI installs only ``.[test]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_OFFICIAL = importlib.util.find_spec("dataforseo_client") is not None


def run_bench(script: str, *args: str, results: Path) -> dict[str, Any]:
    env = {**os.environ, "LLMTASKS_BENCH_RESULTS": str(results)}
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    saved = Path(summary["saved"])
    assert saved.parent == results and saved.name.endswith("-quick.json")
    assert json.loads(saved.read_text())["quick"] is True
    return summary


def test_emulator_benchmark(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_emulator.py"), "--calls", "100", "--concurrency", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["calls"] == 100 and result["errors"] == 0
    assert result["tasks_created"] == 100 * 100


def test_rate_benchmark(tmp_path: Path) -> None:
    extra = [] if HAVE_MATPLOTLIB else ["--no-plot"]
    summary = run_bench("bench_rate.py", *extra, results=tmp_path)
    by_client = {(r["client"], r["jitter_ms"] > 0): r for r in summary["summary"]}
    assert set(by_client) == {("llmtasks", False), ("llmtasks", True), ("aiolimiter", False)}
    for row in summary["summary"]:
        assert row["calls"] >= row["tasks"] and row["peak_window_all_arrivals"] > 0
    # The aiolimiter loop starts with a full bucket: its first window holds more than the
    # limit, which the server answers with 40202. This is arithmetic, not timing.
    plain = by_client[("aiolimiter", False)]
    assert plain["first_window_arrivals"] > plain["rate"] and plain["status_40202"] > 0
    if HAVE_MATPLOTLIB:
        assert Path(BENCH.parent / summary["plot"]).is_file() or Path(summary["plot"]).is_file()


def test_throughput_benchmark(tmp_path: Path) -> None:
    extra = [] if HAVE_OFFICIAL else ["--no-official"]
    summary = run_bench("bench_throughput.py", "--tasks", "2000", *extra, results=tmp_path)
    clients = summary["clients"]
    assert {"llmtasks", "raw_aiohttp"} <= set(clients)
    assert ("dataforseo_client" in clients) == HAVE_OFFICIAL
    for figures in clients.values():
        assert figures["tasks_per_s"] > 0 and figures["cpu_us_per_task"] > 0
    saved = json.loads(Path(summary["saved"]).read_text())
    assert saved["llmtasks_profile_top_tottime"]


def test_memory_benchmark(tmp_path: Path) -> None:
    summary = run_bench(
        "bench_memory.py", "--sizes", "2000", "5000", "--stdin-sizes", "2000", results=tmp_path
    )
    runs = [(r["source"], r["lines"]) for r in summary["runs"]]
    assert runs == [("file", 2000), ("file", 5000), ("stdin", 2000)]
    assert all(r["max_rss_mb"] > 0 for r in summary["runs"])


def test_export_benchmark(tmp_path: Path) -> None:
    summary = run_bench(
        "bench_export.py", "--sizes", "500", "1500", "--formats", "csv", results=tmp_path
    )
    runs = [(r["table"], r["results"], r["rows"]) for r in summary["runs"]]
    assert runs == [
        ("results", 500, 500),
        ("citations", 500, 1500),
        ("results", 1500, 1500),
        ("citations", 1500, 4500),
    ]
    assert all(r["max_rss_mb"] > 0 and r["out_mb"] >= 0 for r in summary["runs"])


def test_latency_benchmark(tmp_path: Path) -> None:
    summary = run_bench(
        "bench_latency.py", "--latencies", "0.05", "--duration", "1", results=tmp_path
    )
    cases = summary["cases"]
    assert [(x["limit_per_min"], x["latency_s"]) for x in cases] == [(2000, 0.05), (10000, 0.05)]
    for case in cases:
        assert case["exit"] == 0 and case["calls"] > 0 and case["calls_per_min"] > 0


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_script_has_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and "usage" in out.stdout


def test_run_all_quick_runs_the_scripts_and_leaves_the_docs(tmp_path: Path) -> None:
    docs = BENCH.parent / "docs" / "benchmarks.md"
    before = docs.read_text()
    env = {**os.environ, "LLMTASKS_BENCH_RESULTS": str(tmp_path)}
    extra = [] if HAVE_OFFICIAL else ["--no-official"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "throughput", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "throughput-quick.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_throughput.py --quick")
    assert isinstance(saved["dirty"], bool) and saved["commit"]
    assert docs.read_text() == before
