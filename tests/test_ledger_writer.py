"""The ledger's writer thread and the streamed receipts: order, durability, failure, resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from llmtasks._ledger import Ledger, pack_lines
from llmtasks._ledger_writer import LedgerWriteError
from llmtasks._outputs import ReceiptStream
from llmtasks._receipt import Receipt
from tests.conftest import read_jsonl, run_cli, write_prompts


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


async def test_write_ahead_is_committed_when_it_returns_and_writes_keep_their_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    try:
        writer.add_lines([(1, b"d1" * 4, "llmtasks:x:1"), (2, b"d2" * 4, "llmtasks:x:2")])
        batch_id = await writer.mark_sending(session, pack_lines([1, 2]), 2)
        # Another connection (another process, after a kill -9) sees lines and batch now.
        assert _rows(path, "SELECT line, state, tag FROM lines ORDER BY line") == [
            (1, "pending", "llmtasks:x:1"),
            (2, "pending", "llmtasks:x:2"),
        ]
        assert _rows(path, "SELECT batch_id, state FROM batches") == [(batch_id, "sending")]
        writer.record(
            batch_id,
            ("done", 200, 20000, 1, None),
            [("failed", None, 40000, "no", None, None, None, batch_id, 2)],
            [("t-1", "Task Created.", 0.01, batch_id, 1)],
        )
        await writer.flush()
        assert _rows(path, "SELECT line, state, task_id, status_code FROM lines ORDER BY line") == [
            (1, "created", "t-1", 20100),
            (2, "failed", None, 40000),
        ]
        assert _rows(path, "SELECT state FROM batches") == [("done",)]
    finally:
        await writer.close()
        ledger.close()


async def test_a_failed_write_refuses_every_later_write_ahead(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    try:
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE lines")  # the next insert fails
        writer.add_lines([(1, b"12345678", "t")])
        with pytest.raises(LedgerWriteError):
            await writer.mark_sending(session, pack_lines([1]), 1)
        # Nothing after the failure is applied: no batch row, so no call may be made.
        assert _rows(path, "SELECT COUNT(*) FROM batches") == [(0,)]
        with pytest.raises(LedgerWriteError):
            await writer.mark_sending(session, pack_lines([2]), 1)
        with pytest.raises(LedgerWriteError):
            await writer.flush()
    finally:
        await writer.close()
        ledger.close()


def _receipt(line: int, state: str = "created") -> Receipt:
    return Receipt(line=line, state=state, tag=f"t{line}")  # type: ignore[arg-type]


def test_receipts_stream_in_input_order_whatever_the_order_they_arrive(tmp_path: Path) -> None:
    out, rej = tmp_path / "r.jsonl", tmp_path / "x.jsonl"
    stream = ReceiptStream(out, rej)
    stream.add([_receipt(3), _receipt(2, "rejected")])
    assert stream.receipts == 0 and not out.exists()  # line 1 not there yet: held
    stream.add([_receipt(1)])
    stream.add([_receipt(5), _receipt(4)])
    ledger = Ledger.open(":memory:")  # nothing left for the ledger to add
    stream.finish(ledger)
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 4, 5]
    assert [r["line"] for r in read_jsonl(rej)] == [2]
    assert not list(tmp_path.glob(".*.partial"))


def test_receipts_stream_holds_a_bounded_number_then_takes_the_rest_from_the_ledger(
    tmp_path: Path,
) -> None:
    ledger = Ledger.open(tmp_path / "l.sqlite")
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        db.executemany(
            "INSERT INTO lines (line, digest, state, tag, engine) "
            "VALUES (?, x'00', 'created', ?, 'chat_gpt')",
            [(i, f"t{i}") for i in range(1, 101)],
        )
    out, rej = tmp_path / "r.jsonl", tmp_path / "x.jsonl"
    stream = ReceiptStream(out, rej, max_held=10)
    stream.add([_receipt(1), _receipt(2)])
    # Line 3 is late (a call being retried): the buffer fills up and streaming stops.
    stream.add([_receipt(i) for i in range(4, 60)])
    assert len(stream._held) == 0
    stream.finish(ledger)
    lines = [r["line"] for r in read_jsonl(out)]
    assert lines == list(range(1, 101))
    ledger.close()


def test_a_resumed_run_writes_every_line_in_order(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 120)
    with src.open("ab") as f:
        f.write(b'{"user_prompt": "bad", "model_name": "gpt-4.1-mini", "top_p": 7}\n')
    write_prompts(tmp_path / "more.jsonl", 79, start=200)
    with src.open("ab") as f:
        f.write((tmp_path / "more.jsonl").read_bytes())
    args = ("submit", str(src), "--base-url", emu.url, "--batch-size", "10")
    first = run_cli(*args, "--max-cost-usd", "0.5")
    assert first.returncode == 3, first.stderr
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in receipts] == sorted(r["line"] for r in receipts)
    second = run_cli(*args)
    assert second.returncode == 1, second.stderr  # the rejected line
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in receipts] == list(range(1, 201))
    assert [r["line"] for r in receipts if r["state"] != "created"] == [121]
    assert [r["line"] for r in read_jsonl(tmp_path / "in.jsonl.rejects.jsonl")] == [121]
    assert len(emu.created()) == 199
    assert not list(tmp_path.glob(".*.partial"))
