"""Fan-out: ``submit --engine chat_gpt,claude,gemini``, one ledger with an outcome per (line,
engine). The real CLI against a real emulator on 127.0.0.1, end to end: submit, resume,
collect --wait, export --results / --citations, status and report."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from llmtasks._flatten import flatten
from llmtasks._ledger import Ledger, NewLine
from llmtasks._llm_result import decode_result
from tests.conftest import EmulatorProcess, read_jsonl, run_cli

ENGINES = ("chat_gpt", "claude", "gemini")
MODELS = {"chat_gpt": "gpt-4.1-mini", "claude": "claude-sonnet-4-0", "gemini": "gemini-2.5-flash"}
N = 300
BAD = N + 1  # a line no engine takes
FAST = ("--rate", "20000", "--poll-interval", "0.3", "--max-poll-interval", "1")


def _prompt(i: int) -> str:
    return f"question {i}: which e-bike brands lead the market?"


class Run:
    def __init__(self, root: Path, emu: EmulatorProcess) -> None:
        self.root = root
        self.emu = emu
        self.src = root / "prompts.jsonl"
        self.ledger = root / "prompts.jsonl.ledger.sqlite"
        self.submit: Any = None
        self.again: Any = None
        self.results: list[dict[str, Any]] = []


def _submit(r: Run) -> Any:
    models = [f"--model={e}={m}" for e, m in MODELS.items()]
    return run_cli(
        "submit", str(r.src), "--engine", ",".join(ENGINES), *models, "--base-url", r.emu.url,
        "--rate", "20000",
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("fanout")
    emu = EmulatorProcess("--completion-delay", "0.3")
    try:
        r = Run(root, emu)
        with r.src.open("wb") as f:
            for i in range(N):
                task: dict[str, Any] = {"user_prompt": _prompt(i)}
                if i % 4 == 0:
                    task["web_search"] = True
                f.write(orjson.dumps(task) + b"\n")
            f.write(b'{"user_prompt": "too hot", "temperature": 5}\n')
        r.submit = _submit(r)
        # The same command again: every (line, engine) is final, nothing is sent twice.
        r.again = _submit(r)
        got = run_cli("collect", "--ledger", str(r.ledger), "--base-url", emu.url, "--wait", *FAST)
        assert got.returncode == 0, got.stderr
        r.results = read_jsonl(root / "prompts.jsonl.results.jsonl")
        yield r
    finally:
        emu.stop()


def test_every_line_is_created_exactly_once_on_each_engine(run: Run) -> None:
    assert run.submit.returncode == 1, run.submit.stderr  # the one rejected line
    created = run.emu.created()
    per = Counter((t["engine"], t["user_prompt"]) for t in created)
    assert len(created) == 3 * N
    assert per == Counter({(e, _prompt(i)): 1 for e in ENGINES for i in range(N)})
    for t in created:
        assert t["model_name"] == MODELS[t["engine"]]
        assert t["tag"].endswith(f":{t['engine']}:{int(t['user_prompt'].split()[1][:-1]) + 1}")
        assert "engine" not in t["data"]
    assert len({t["tag"] for t in created}) == 3 * N  # generated tags unique per (line, engine)
    # Each POST went to one engine's path, at most 100 tasks, none of another engine.
    for call in run.emu.calls():
        if call.get("path", "").endswith("/task_post"):
            assert call["path"].split("/")[3] in ENGINES


def test_resume_sends_nothing_already_final(run: Run) -> None:
    assert run.again.returncode == 1, run.again.stderr
    assert f"{3 * (N + 1):,} done by earlier runs" in run.again.stderr
    assert len(run.emu.created()) == 3 * N


def test_receipts_and_rejects_have_one_row_per_line_and_engine(run: Run) -> None:
    receipts = read_jsonl(run.root / "prompts.jsonl.receipts.jsonl")
    assert [(r["line"], r["engine"]) for r in receipts] == [
        (line, e) for line in range(1, BAD + 1) for e in sorted(ENGINES)
    ]
    assert Counter(r["state"] for r in receipts) == {"created": 3 * N, "rejected": 3}
    rejects = read_jsonl(run.root / "prompts.jsonl.rejects.jsonl")
    assert [(r["line"], r["engine"], r["field"]) for r in rejects] == [
        (BAD, e, "temperature") for e in sorted(ENGINES)
    ]


def test_export_of_receipts_has_an_engine_column(run: Run) -> None:
    table = _export(run, "--state", "rejected")
    assert [(r["line"], r["engine"], r["field"]) for r in table] == [
        (str(BAD), e, "temperature") for e in sorted(ENGINES)
    ]


def test_status_shows_each_engine(run: Run) -> None:
    got = run_cli("status", "--ledger", str(run.ledger), "--json")
    assert got.returncode == 0, got.stderr
    status = orjson.loads(got.stdout)
    assert status["engines"] == {e: {"created": N, "rejected": 1} for e in ENGINES}
    assert status["states"] == {"created": 3 * N, "rejected": 3}
    assert len(status["sessions"]) == 2  # one per submit, not one per engine
    assert status["sessions"][0]["calls"] == 3 * -(-N // 100)
    text = run_cli("status", "--ledger", str(run.ledger)).stdout
    assert "engine chat_gpt,claude,gemini" in text
    assert f"  claude   {N + 1:,}: {N:,} created, 1 rejected" in text


def _export(run: Run, *args: str) -> list[dict[str, str]]:
    got = run_cli("export", "--ledger", str(run.ledger), *args, "--format", "csv")
    assert got.returncode == 0, got.stderr
    return list(csv.DictReader(io.StringIO(got.stdout)))


def test_results_one_row_per_line_and_engine_with_the_service_answer(run: Run) -> None:
    rows = _export(run, "--results")
    assert [(int(r["line"]), r["engine"]) for r in rows] == [
        (line, e) for line in range(1, N + 1) for e in sorted(ENGINES)
    ]
    collected = {r["task_id"]: r for r in run.results}
    assert len(collected) == 3 * N
    assert Counter(r["engine"] for r in run.results) == dict.fromkeys(ENGINES, N)
    created = {t["id"]: t for t in run.emu.created()}
    searched_with_citations = 0
    for row in rows:
        service = collected[row["task_id"]]["result"][0]
        assert created[row["task_id"]]["engine"] == row["engine"]
        assert collected[row["task_id"]]["engine"] == row["engine"]
        assert row["prompt"] == _prompt(int(row["line"]) - 1)
        assert row["answer_text"] == "\n\n".join(
            s["text"] for item in service["items"] if item["type"] == "message"
            for s in item["sections"]
        )  # fmt: skip
        assert row["model_name"].startswith(MODELS[row["engine"]].removesuffix("-0"))
        hosts = [
            urlsplit(a.get("direct_url") or a["url"]).hostname or ""
            for item in service["items"]
            for s in item.get("sections") or ()
            for a in s.get("annotations") or ()
        ]
        domains = orjson.loads(row["cited_domains"])
        assert len(domains) == len(set(domains))
        assert {h for h in hosts if any(h == d or h.endswith("." + d) for d in domains)} == set(
            hosts
        )
        if (int(row["line"]) - 1) % 4 != 0:
            assert domains == [] and row["web_search_requested"] == ""
        elif domains:
            searched_with_citations += 1
    assert searched_with_citations > 0


def test_citations_one_row_per_citation_with_its_registered_domain(run: Run) -> None:
    table = _export(run, "--citations")
    expected = []
    for r in sorted(run.results, key=lambda r: (r["line"], r["task_id"])):
        flat = flatten(decode_result(orjson.dumps(r["result"])))
        expected += [(r["task_id"], c.position, c.url) for c in flat.citations]
    assert sorted((t["task_id"], int(t["position"]), t["url"]) for t in table) == sorted(expected)
    assert expected
    engines = {t["engine"] for t in table}
    assert engines == set(ENGINES)
    for t in table:
        host = urlsplit(t["direct_url"] or t["url"]).hostname or ""
        assert t["domain"] and (host == t["domain"] or host.endswith("." + t["domain"]))
        if host.endswith((".example.com", ".example.org")):
            assert t["domain"] in ("example.com", "example.org")


def test_report_draws_the_fanout_ledger(run: Run) -> None:
    pytest.importorskip("matplotlib")
    out = run.root / "report.html"
    got = run_cli("report", "--ledger", str(run.ledger), "--out", str(out))
    assert got.returncode == 0, got.stderr
    page = out.read_text()
    for engine in ENGINES:
        assert engine in page


def test_dry_run_counts_and_prices_per_engine(run: Run) -> None:
    models = [f"--model={e}={m}" for e, m in MODELS.items()]
    got = run_cli("submit", str(run.src), "--engine", ",".join(ENGINES), *models, "--dry-run")
    assert got.returncode == 1
    for engine in ENGINES:
        assert f"dry run ({engine}) of {run.src}: {N + 1} lines, {N} valid, 1 rejected" in (
            got.stderr
        )
    assert f"{3 * N:,} tasks valid, 3 rejected; 9 calls" in got.stderr
    assert f"${3 * N * 0.0102:.4f}" in got.stderr


def test_model_options_that_do_not_fit_the_engines(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'{"user_prompt": "hi"}\n')
    for args, message in [
        (("--engine", "chat_gpt,claude", "--model", "gpt-4.1-mini"), "say whose"),
        (("--engine", "chat_gpt", "--model", "claude=claude-sonnet-4-0"), "not an engine of"),
        (("--engine", "chat_gpt,bing"), "unknown engine 'bing'"),
        (("--engine", "claude,claude"), "named twice"),
    ]:
        got = run_cli("submit", str(src), *args, "--dry-run")
        assert got.returncode == 2, (args, got.stderr)
        assert message in got.stderr


# -- the ledger: views per engine, a killed run, a ledger written before fan-out ----------


def test_a_killed_run_leaves_only_its_engines_batch_unknown(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    main = Ledger.open(path, engine="chat_gpt", engines=ENGINES)
    claude = main.for_engine("claude")
    for view in (main, claude):
        view.begin_session()
        view.add_lines([NewLine(line, b"d%d" % line, "pending") for line in (1, 2, 3)])
    claude.mark_sending([1, 2])  # the POST left; the process died before its reply
    main.close()
    claude.close()
    again = Ledger.open(path, engine="chat_gpt", engines=ENGINES)
    views = {e: again.for_engine(e) for e in ENGINES[1:]} | {"chat_gpt": again}
    assert views["chat_gpt"].recover_interrupted() == 0
    assert views["gemini"].recover_interrupted() == 0
    assert views["claude"].recover_interrupted() == 2
    assert again.counts_by_engine() == {
        "chat_gpt": {"pending": 3},
        "claude": {"unknown": 2, "pending": 1},
        "gemini": {},
    }
    assert views["claude"].tag_prefix.endswith(":claude:")
    for v in views.values():
        v.close()
    with pytest.raises(Exception, match="belongs to engine"):
        Ledger.open(path, engine="chat_gpt")


_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (session_id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
    ended_at REAL, calls INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT '');
CREATE TABLE batches (batch_id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL,
    state TEXT NOT NULL, n_tasks INTEGER NOT NULL, sent_at REAL NOT NULL, done_at REAL,
    http_status INTEGER, status_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, note TEXT,
    lines BLOB);
CREATE TABLE lines (line INTEGER PRIMARY KEY, digest BLOB NOT NULL, state TEXT NOT NULL,
    tag TEXT, prompt_digest BLOB, task_id TEXT, status_code INTEGER, status_message TEXT,
    cost REAL, field TEXT, reason TEXT, batch_id INTEGER,
    collected INTEGER NOT NULL DEFAULT 0);
INSERT INTO meta VALUES ('schema', '1'), ('run_id', 'abcd1234'), ('engine', 'claude'),
    ('input', 'p.jsonl'), ('created_at', '0'), ('shard', '');
INSERT INTO lines (line, digest, state, tag) VALUES (1, x'01', 'created', 't1'),
    (2, x'02', 'pending', 'llmtasks:abcd1234:2');
INSERT INTO batches (session_id, state, n_tasks, sent_at, lines) VALUES (1, 'sending', 1, 1.0,
    x'0200000000000000');
"""


def test_a_ledger_written_before_fanout_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.close()
    ledger = Ledger.open(path, engine="claude")
    assert ledger.engines == ("claude",) and not ledger.fanout
    assert ledger.tag_prefix == "llmtasks:abcd1234:"  # the tags it generated before
    assert ledger.meta()["schema"] == "3"
    assert ledger.recover_interrupted() == 1
    assert ledger.counts() == {"created": 1, "unknown": 1}
    assert [(r.line, r.state, r.engine) for r in ledger.receipts()] == [
        (1, "created", None),
        (2, "unknown", None),
    ]
    ledger.close()
    got = run_cli("status", "--ledger", str(path), "--json")
    assert got.returncode == 0, got.stderr
    assert orjson.loads(got.stdout)["engines"] == {"claude": {"created": 1, "unknown": 1}}


def test_an_engine_field_routes_its_line_and_is_never_sent(emulator: Any, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "routed.jsonl"
    src.write_bytes(
        b'{"user_prompt": "everyone"}\n'
        b'{"user_prompt": "claude only", "engine": "claude"}\n'
        b'{"user_prompt": "gemini only", "engine": "gemini", "use_reasoning": true}\n'
        b'{"user_prompt": "nobody", "engine": "bing"}\n'
    )
    models = [f"--model={e}={m}" for e, m in MODELS.items() if e != "chat_gpt"]
    args = ("submit", str(src), "--engine", "claude,gemini", *models, "--base-url", emu.url)
    got = run_cli(*args)
    assert got.returncode == 1, got.stderr  # the line for no engine of the run
    created = Counter((t["engine"], t["user_prompt"]) for t in emu.created())
    assert created == {
        ("claude", "everyone"): 1,
        ("gemini", "everyone"): 1,
        ("claude", "claude only"): 1,
        ("gemini", "gemini only"): 1,
    }
    assert all("engine" not in t["data"] for t in emu.created())
    receipts = read_jsonl(tmp_path / "routed.jsonl.receipts.jsonl")
    assert [(r["line"], r["engine"], r["state"]) for r in receipts] == [
        (1, "claude", "created"),
        (1, "gemini", "created"),
        (2, "claude", "created"),
        (2, "gemini", "skipped"),
        (3, "claude", "skipped"),
        (3, "gemini", "created"),
        (4, "claude", "rejected"),
        (4, "gemini", "rejected"),
    ]
    assert receipts[3]["reason"] == "sent to claude by its engine field"
    rejects = read_jsonl(tmp_path / "routed.jsonl.rejects.jsonl")
    assert {(r["field"], r["reason"]) for r in rejects} == {
        ("engine", 'must be an engine of this run (claude, gemini), got "bing"')
    }
    # The same in CSV, with an engine column.
    emu2 = emulator()
    csv_src = tmp_path / "routed.csv"
    csv_src.write_text("user_prompt,engine\neveryone,\nclaude only,claude\nnobody,chat_gpt\n")
    got = run_cli("submit", str(csv_src), "--engine", "claude,gemini", *models,
                  "--base-url", emu2.url)  # fmt: skip
    assert got.returncode == 1, got.stderr
    assert Counter((t["engine"], t["user_prompt"]) for t in emu2.created()) == {
        ("claude", "everyone"): 1,
        ("gemini", "everyone"): 1,
        ("claude", "claude only"): 1,
    }
    rejects = read_jsonl(tmp_path / "routed.csv.rejects.jsonl")
    assert [(r["line"], r["engine"], r["field"]) for r in rejects] == [
        (4, "claude", "engine"),
        (4, "gemini", "engine"),
    ]


def _pairs(path: Path) -> dict[tuple[int, str], tuple[str, str | None]]:
    """(line, engine) -> (state, task_id); pairs of a batch still marked sending (a killed
    run's calls in flight) read as "sending"."""
    import array

    with sqlite3.connect(path) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone() is None:
            return {}
        in_flight = {
            (line, engine)
            for packed, engine in db.execute(
                "SELECT lines, engine FROM batches WHERE state = 'sending'"
            )
            for line in array.array("q", packed).tolist()
        }
        return {
            (line, engine): ("sending" if (line, engine) in in_flight else state, task_id)
            for line, engine, state, task_id in db.execute(
                "SELECT line, engine, state, task_id FROM lines"
            )
        }


def test_kill_9_and_lost_replies_then_reconcile_and_rerun(emulator: Any, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from tests.conftest import spawn_cli

    emu = emulator("--latency-ms", "40", "--drop-rate", "0.05", "--seed", "3",
                   "--id-list-rate", "600")  # fmt: skip
    n = 200
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"user_prompt": _prompt(i)}) + b"\n" for i in range(n)))
    ledger = tmp_path / "run.sqlite"
    models = [f"--model={e}={m}" for e, m in MODELS.items()]
    args = ("submit", str(src), "--engine", ",".join(ENGINES), *models, "--base-url", emu.url,
            "--batch-size", "5", "--concurrency", "3", "--ledger", str(ledger))  # fmt: skip
    kills = 0
    for delay in (0.8, 1.2):
        proc = spawn_cli(*args, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    reconciled = 0
    for _ in range(12):
        pairs = _pairs(ledger)
        if Counter(s for s, _ in pairs.values()) == {"created": 3 * n}:
            break
        if any(s in ("unknown", "sending") for s, _ in pairs.values()):
            # A submit marks a dead run's batches unknown; reconcile then looks them up.
            run_cli(*args, "-q")
            r = run_cli("reconcile", "--ledger", str(ledger), "--base-url", emu.url,
                        "--min-age", "0")  # fmt: skip
            assert r.returncode in (0, 1), r.stderr
            reconciled += r.stderr.count("found (created)")
        run_cli(*args, "-q")
    pairs = _pairs(ledger)
    assert Counter(s for s, _ in pairs.values()) == {"created": 3 * n}
    assert reconciled >= 3 and reconciled % 3 == 0  # each engine looked its lost replies up
    created = emu.created()
    assert Counter((t["engine"], t["user_prompt"]) for t in created) == Counter(
        {(e, _prompt(i)): 1 for e in ENGINES for i in range(n)}
    )  # every line once on each engine, whatever was killed or lost
    by_id = {t["id"]: t for t in created}
    for (line, engine), (_, task_id) in pairs.items():
        assert task_id is not None
        assert by_id[task_id]["engine"] == engine
        assert by_id[task_id]["user_prompt"] == _prompt(line - 1)


def test_one_budget_for_all_engines_and_no_stdin(emulator: Any, tmp_path: Path) -> None:
    emu = emulator("--latency-ms", "30")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"user_prompt": _prompt(i)}) + b"\n" for i in range(200)))
    models = [f"--model={e}={m}" for e, m in MODELS.items()]
    args = ("--engine", ",".join(ENGINES), *models, "--base-url", emu.url, "--batch-size", "10")
    got = run_cli("submit", str(src), *args, "--max-cost-usd", "0.5", "--concurrency", "6")
    assert got.returncode == 3, got.stderr
    spent = sum(t["cost_usd"] for t in emu.created())
    # Every engine's calls in flight count against the one budget: never above it.
    assert 0 < spent <= 0.5
    assert len(emu.created()) <= 40
    got = run_cli("submit", "-", *args, stdin=src.read_bytes())
    assert got.returncode == 2
    assert "give a file, not -" in got.stderr
