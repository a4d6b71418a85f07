"""export --results / --citations and report, end to end: the real CLI against a real emulator.

One run per engine (submit, then collect --wait) is shared by the tests of this module.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks._flatten import flatten
from llmtasks._llm_result import decode_result
from tests.chromium import find_chromium, open_page
from tests.conftest import EmulatorProcess, read_jsonl, run_cli

MODELS = {"chat_gpt": "gpt-4.1-mini", "claude": "claude-sonnet-4-0", "gemini": "gemini-2.5-flash"}
N = 24
FAST = ("--rate", "20000", "--poll-interval", "0.3", "--max-poll-interval", "1")


class Run:
    def __init__(self, root: Path, emu: EmulatorProcess) -> None:
        self.root = root
        self.emu = emu
        self.ledgers: dict[str, Path] = {}
        self.inputs: dict[str, Path] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}


def _prompts(path: Path, engine: str) -> None:
    with path.open("wb") as f:
        for i in range(N):
            task: dict[str, Any] = {"user_prompt": f"{engine} question {i}: best e-bike brands?"}
            if i % 3 == 0:
                task["web_search"] = True
            if i == 5:
                task["tag"] = "my-own-tag"
            if i == 7 and engine != "chat_gpt":
                # Valid only under this engine's rules: export must read it with them.
                task.update(use_reasoning=True, max_output_tokens=2000)
            f.write(orjson.dumps(task) + b"\n")
        f.write(b'{"user_prompt": "too hot", "temperature": 5}\n')  # rejected


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("results-cli")
    emu = EmulatorProcess("--completion-delay", "0.5")
    try:
        r = Run(root, emu)
        for engine, model in MODELS.items():
            src = root / f"{engine}.jsonl"
            _prompts(src, engine)
            sub = run_cli(
                "submit", str(src), "--engine", engine, "--model", model,
                "--base-url", emu.url, "-q",
            )  # fmt: skip
            assert sub.returncode == 1, sub.stderr  # the one rejected line
            ledger = Path(f"{src}.ledger.sqlite")
            got = run_cli(
                "collect", "--ledger", str(ledger), "--base-url", emu.url, "--wait", *FAST
            )
            assert got.returncode == 0, got.stderr
            r.ledgers[engine] = ledger
            r.inputs[engine] = src
            r.results[engine] = read_jsonl(root / f"{engine}.jsonl.results.jsonl")
        yield r
    finally:
        emu.stop()


def _export(ledger: Path, *args: str) -> str:
    result = run_cli("export", "--ledger", str(ledger), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_results_rows_are_the_collected_answers_with_their_prompts(run: Run) -> None:
    for engine, ledger in run.ledgers.items():
        rows = [orjson.loads(x) for x in _export(ledger, "--results").splitlines()]
        collected = {r["task_id"]: r for r in run.results[engine]}
        assert len(rows) == len(collected) == N  # one row per created task, none for the reject
        assert [r["line"] for r in rows] == list(range(1, N + 1))  # input order
        for row in rows:
            got = collected[row["task_id"]]
            service = got["result"][0]
            assert row["engine"] == engine and row["tag"] == got["tag"]
            assert row["status_code"] == 20000 and row["status_message"] == "Ok."
            i = row["line"] - 1
            assert row["prompt"] == f"{engine} question {i}: best e-bike brands?"
            assert row["web_search_requested"] == (True if i % 3 == 0 else None)
            assert row["answer_text"] == "\n\n".join(
                s["text"] for item in service["items"] if item["type"] == "message"
                for s in item["sections"]
            )  # fmt: skip
            assert row["model_name"] == service["model_name"]
            assert row["model_name"].startswith(MODELS[engine].removesuffix("-0"))
            assert row["web_search"] == service["web_search"]
            assert row["input_tokens"] == service["input_tokens"]
            assert row["money_spent"] == service["money_spent"]
            assert row["datetime"] == service["datetime"]
            assert row["cost"] > 0 and row["submitted_at"] <= row["collected_at"]
        assert rows[5]["tag"] == "my-own-tag"


def test_results_in_csv_and_parquet_hold_the_same_rows(run: Run) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    ledger = run.ledgers["claude"]
    rows = [orjson.loads(x) for x in _export(ledger, "--results").splitlines()]
    table = list(csv.DictReader(io.StringIO(_export(ledger, "--results", "--format", "csv"))))
    assert [r["task_id"] for r in table] == [r["task_id"] for r in rows]
    assert [r["answer_text"] for r in table] == [r["answer_text"] for r in rows]
    assert [r["prompt"] for r in table] == [r["prompt"] for r in rows]
    out = run.root / "claude.parquet"
    _export(ledger, "--results", "--format", "parquet", "--out", str(out))
    t = pq.read_table(out)
    assert t.column("task_id").to_pylist() == [r["task_id"] for r in rows]
    assert t.column("answer_text").to_pylist() == [r["answer_text"] for r in rows]
    assert str(t.schema.field("citations_count").type) == "int64"
    assert str(t.schema.field("collected_at").type) == "timestamp[us, tz=UTC]"


def test_citations_rows_for_searched_answers(run: Run) -> None:
    searched = {
        r["task_id"]: r
        for engine in run.results
        for r in run.results[engine]
        if r["result"] and r["result"][0].get("web_search")
    }
    assert searched, "no answer searched the web"
    annotated = [
        r
        for r in searched.values()
        if any(
            s.get("annotations")
            for item in r["result"][0]["items"]
            for s in item.get("sections") or ()
        )
    ]
    assert annotated, f"{len(searched)} searched answers, none with citations"
    for engine, ledger in run.ledgers.items():
        text = _export(ledger, "--citations", "--format", "csv")
        table = list(csv.DictReader(io.StringIO(text)))
        expected = []
        for r in run.results[engine]:
            flat = flatten(decode_result(orjson.dumps(r["result"])))
            expected += [(r["line"], r["task_id"], c.position, c.url) for c in flat.citations]
        assert [(int(t["line"]), t["task_id"], int(t["position"]), t["url"]) for t in table] == (
            sorted(expected)
        )
        assert all(t["engine"] == engine for t in table)
        assert all(t["domain"] and "google.com" not in t["domain"] for t in table)
        results = [orjson.loads(x) for x in _export(ledger, "--results").splitlines()]
        for row in results:
            cited = [t for t in table if t["task_id"] == row["task_id"]]
            assert row["citations_count"] == len(cited)
            assert row["cited_domains"] == list(dict.fromkeys(t["domain"] for t in cited))
            if cited:
                assert row["web_search"] is True


def test_export_options_that_do_not_go_together(run: Run) -> None:
    ledger = str(run.ledgers["chat_gpt"])
    for args, message in [
        (("--format", "parquet"), "--format parquet is for --results or --citations"),
        (("--results", "--format", "parquet"), "--format parquet needs --out FILE"),
        (("--citations", "--input", "x.jsonl"), "go with --results"),
        (("--results", "--state", "created"), "--state goes with receipts"),
        (("--results", "--input", str(run.root / "nope.jsonl")), "nope.jsonl: no such file"),
    ]:
        result = run_cli("export", "--ledger", ledger, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr


def test_results_export_without_pyarrow_says_how_to_install_it(run: Run) -> None:
    result = _without("pyarrow", "export", "--ledger", str(run.ledgers["gemini"]), "--results",
                      "--format", "parquet", "--out", str(run.root / "x.parquet"))  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'llmtasks[parquet]'" in result.stderr
    assert not (run.root / "x.parquet").exists()


def _without(module: str, *args: str) -> Any:
    """The CLI in a Python where ``module`` cannot be imported (an extra not installed)."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from llmtasks._cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


# -- report ---------------------------------------------------------------------------------

CHARTS_JS = """
(() => {
  const figures = [...document.querySelectorAll('figure.chart')];
  return {
    title: document.title,
    charts: figures.map(f => {
      const svg = f.querySelector('svg');
      const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
      return {width: box.width, height: box.height,
              paths: svg ? svg.querySelectorAll('path').length : 0,
              caption: f.querySelector('figcaption').textContent};
    }),
    rows: document.querySelectorAll('table tr').length,
    scripts: document.scripts.length,
  };
})()
"""


def _report(run: Run, ledger: Path) -> Path:
    out = ledger.parent / f"{ledger.name}.html"
    result = run_cli("report", "--ledger", str(ledger), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"written to {out}" in result.stderr
    return out


def test_report_is_one_self_contained_page(run: Run) -> None:
    pytest.importorskip("matplotlib")
    from llmtasks._report import external_references

    page = _report(run, run.ledgers["gemini"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 6
    assert external_references(page) == []
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    for heading in (
        "Calls per minute",
        "Outcomes by engine",
        "Cost by engine and model",
        "Time from submit to result",
        "Web search and citations",
        "cited domains",
    ):
        assert heading in page
    assert "1 task_post calls; at most 1 in any 60 s window, limit 2000 per minute" in page


def test_report_renders_in_chromium_with_no_console_errors(run: Run) -> None:
    if find_chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("matplotlib")
    out = _report(run, run.ledgers["chat_gpt"])
    seen = open_page(out, CHARTS_JS)
    assert seen.errors == []
    assert [u for u in seen.requests if not u.startswith("file:")] == []
    value = seen.value
    assert value["title"].startswith("llmtasks run ") and value["scripts"] == 0
    assert len(value["charts"]) == 6 and value["rows"] == 2  # header and chat_gpt
    for chart in value["charts"]:
        # Drawn: laid out at a real size, and made of paths (text is drawn as paths too).
        assert chart["width"] > 300 and chart["height"] > 50, chart
        assert chart["paths"] > 10, chart


def test_report_without_matplotlib_says_how_to_install_it(run: Run) -> None:
    out = run.root / "none.html"
    result = _without("matplotlib", "report", "--ledger", str(run.ledgers["claude"]),
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'llmtasks[report]'" in result.stderr
    assert not out.exists()
