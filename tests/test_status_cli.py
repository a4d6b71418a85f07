"""``status`` and ``export`` read a ledger left by a real run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson

from tests.conftest import read_jsonl, run_cli, write_prompts


def test_status_and_export_after_a_partial_run(emulator, tmp_path: Path) -> None:
    emu = emulator("--funds-usd", "0.5")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 100)
    with src.open("ab") as f:
        f.write(b'{"user_prompt": "bad", "model_name": "gpt-4.1-mini", "top_p": 7}\n')
    ledger = tmp_path / "run.sqlite"
    r = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--batch-size",
        "10",
        "--concurrency",
        "1",
        "--ledger",
        str(ledger),
    )
    assert r.returncode == 3, r.stderr

    st = run_cli("status", "--ledger", str(ledger), "--json")
    assert st.returncode == 0, st.stderr
    status = orjson.loads(st.stdout)
    created = len(emu.created())
    assert status["states"] == {"created": created, "pending": 100 - created, "rejected": 1}
    assert status["status_codes"]["20100"] == created
    assert abs(status["cost_usd"] - sum(t["cost_usd"] for t in emu.created())) < 1e-9
    assert status["next"] == [f"llmtasks submit {src} --ledger {ledger}"]
    assert len(status["sessions"]) == 1 and status["sessions"][0]["ended_at"] is not None

    text = run_cli("status", "--ledger", str(ledger))
    assert f"{created} created" in text.stdout and "to continue:" in text.stdout

    jsonl = run_cli("export", "--ledger", str(ledger))
    rows = [orjson.loads(x) for x in jsonl.stdout.splitlines()]
    assert rows == read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in rows] == list(range(1, 102))

    out = tmp_path / "r.csv"
    c = run_cli(
        "export",
        "--ledger",
        str(ledger),
        "--format",
        "csv",
        "--out",
        str(out),
        "--state",
        "rejected",
    )
    assert c.returncode == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == 1 and table[0]["line"] == "101" and table[0]["field"] == "top_p"

    # The command status printed continues the job (with more funds).
    emu.set_config(funds_usd=10.0)
    cont = run_cli(*status["next"][0].split()[1:], "--base-url", emu.url)
    assert cont.returncode == 1, cont.stderr  # the rejected line stays rejected
    final = orjson.loads(run_cli("status", "--ledger", str(ledger), "--json").stdout)
    assert final["states"] == {"created": 100, "rejected": 1}
    assert final["next"] == []


def test_status_of_a_missing_ledger_is_a_clear_error(tmp_path: Path) -> None:
    r = run_cli("status", "--ledger", str(tmp_path / "nope.sqlite"))
    assert r.returncode == 2 and "no such ledger" in r.stderr
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 100)
    r = run_cli("export", "--ledger", str(junk))
    assert r.returncode == 2 and "not an llmtasks ledger" in r.stderr
