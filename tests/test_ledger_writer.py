"""The ledger's writer thread and the streamed receipts: order, durability, failure, resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from llmtasks._batching import Batch
from llmtasks._input import record_digest
from llmtasks._ledger import InFlightLine, Ledger, NewLine, pack_lines
from llmtasks._ledger_writer import LedgerWriteError
from llmtasks._outputs import ReceiptStream
from llmtasks._receipt import Receipt
from tests.conftest import read_jsonl, run_cli, write_prompts


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


def _batch(lines: list[int], tags: list[str], user: list[tuple[int, bytes]] | None = None) -> Batch:
    batch = Batch()
    batch.lines, batch.tags = lines, tags
    batch.digests = [b"d%d" % line * 4 for line in lines]
    batch.parts = [b"{}" for _ in lines]
    batch.user_tags = user or []
    return batch


async def test_write_ahead_is_committed_when_it_returns_and_lines_are_written_at_their_outcome(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    prefix = ledger.tag_prefix
    try:
        batch = _batch([1, 2, 3], [f"{prefix}1", "mine", f"{prefix}3"], [(1, b"prompt-2")])
        batch_id = await writer.mark_sending(session, batch)
        # Another connection (another process, after a kill -9) sees the batch now: one row
        # with the lines, their digests and the tag that is not generated.
        assert _rows(path, "SELECT batch_id, state, lines FROM batches") == [
            (batch_id, "sending", pack_lines([1, 2, 3]))
        ]
        assert _rows(path, "SELECT COUNT(*) FROM lines") == [(0,)]
        assert ledger.in_flight() == [
            InFlightLine(1, batch_id, b"d1" * 4, f"{prefix}1"),
            InFlightLine(2, batch_id, b"d2" * 4, "mine", b"prompt-2"),
            InFlightLine(3, batch_id, b"d3" * 4, f"{prefix}3"),
        ]
        assert ledger.lookup_unrecorded("mine") == 2
        assert ledger.lookup_unrecorded(f"{prefix}3") == 3
        writer.add_lines([(7, b"d7" * 4, "rejected", None, None, "top_p", "too big")])
        writer.record(
            batch_id,
            ("done", 200, 20000, 1, None),
            batch,
            [
                Receipt(1, "created", f"{prefix}1", "t-1", 20100, "Task Created.", 0.01),
                Receipt(2, "failed", "mine", None, 40000, "no"),
                Receipt(3, "created", f"{prefix}3", "t-3", 20100, "Task Created.", 0.01),
            ],
        )
        await writer.flush()
        assert _rows(
            path,
            "SELECT line, state, tag, task_id, status_code, digest, prompt_digest, batch_id "
            "FROM lines ORDER BY line",
        ) == [
            (1, "created", f"{prefix}1", "t-1", 20100, b"d1" * 4, None, batch_id),
            (2, "failed", "mine", None, 40000, b"d2" * 4, b"prompt-2", batch_id),
            (3, "created", f"{prefix}3", "t-3", 20100, b"d3" * 4, None, batch_id),
            (7, "rejected", None, None, None, b"d7" * 4, None, None),
        ]
        assert _rows(path, "SELECT state FROM batches") == [("done",)]
        assert ledger.in_flight() == []
    finally:
        await writer.close()
        ledger.close()


async def test_a_killed_run_leaves_its_batch_which_the_next_run_marks_unknown(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    prefix = ledger.tag_prefix
    # Line 2 was left pending by an earlier run that stopped; this run sends it again.
    ledger.add_lines([NewLine(2, b"d2" * 4, "pending", f"{prefix}2")])
    try:
        sent = _batch([1, 2], [f"{prefix}1", f"{prefix}2"])
        await writer.mark_sending(session, sent)
        retried = _batch([3], ["mine"], [(0, b"prompt-3")])
        first = await writer.mark_sending(session, retried)
        writer.record(first, ("not_created", 200, 40202, 1, "rate"), retried)
        await writer.mark_sending(session, retried)
        await writer.flush()
    finally:
        await writer.close()
        ledger.close()  # as a kill -9 would: the replies never recorded
    again = Ledger.open(path)
    assert again.recover_interrupted() == 3
    assert [(r.line, r.state, r.tag) for r in again.receipts()] == [
        (1, "unknown", f"{prefix}1"),
        (2, "unknown", f"{prefix}2"),
        (3, "unknown", "mine"),
    ]
    assert again.lines_in_state("unknown")[2][2] == b"prompt-3"  # reconcile's prompt digest
    assert again.known(1, 3)[1] == (b"d1" * 4, "unknown")  # resume checks the input by it
    assert again.in_flight() == [] and again.recover_interrupted() == 0
    again.close()


async def test_a_failed_write_refuses_every_later_write_ahead(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    try:
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE lines")  # the next insert fails
        writer.add_lines([(1, b"12345678", "rejected", None, None, "x", "bad")])
        with pytest.raises(LedgerWriteError):
            await writer.mark_sending(session, _batch([2], ["t"]))
        # Nothing after the failure is applied: no batch row, so no call may be made.
        assert _rows(path, "SELECT COUNT(*) FROM batches") == [(0,)]
        with pytest.raises(LedgerWriteError):
            await writer.mark_sending(session, _batch([3], ["t"]))
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


_SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (session_id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
    ended_at REAL, calls INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT '');
CREATE TABLE batches (batch_id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL,
    state TEXT NOT NULL, n_tasks INTEGER NOT NULL, sent_at REAL NOT NULL, done_at REAL,
    http_status INTEGER, status_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, note TEXT,
    lines BLOB, engine TEXT NOT NULL);
CREATE TABLE lines (line INTEGER NOT NULL, engine TEXT NOT NULL, digest BLOB NOT NULL,
    state TEXT NOT NULL, tag TEXT, prompt_digest BLOB, task_id TEXT, status_code INTEGER,
    status_message TEXT, cost REAL, field TEXT, reason TEXT, batch_id INTEGER,
    collected INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (line, engine)) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema', '2'), ('run_id', 'abcd1234'), ('engine', 'chat_gpt'),
    ('engines', 'chat_gpt'), ('input', 'in.jsonl'), ('created_at', '0'), ('shard', '');
"""


def test_a_schema_2_ledger_killed_mid_run_resumes(emulator, tmp_path: Path) -> None:
    """A ledger written before lines were written once: every line read was a row, and the
    lines of a call in flight were ``pending`` rows named by a ``sending`` batch. The next
    run (this version) marks those unknown, sends the rest, and keeps the old tags."""
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 8)
    digests = [record_digest(raw) for raw in src.read_bytes().splitlines()]
    ledger = tmp_path / "run.sqlite"
    with sqlite3.connect(ledger) as db:
        db.executescript(_SCHEMA_2)
        db.executemany(
            "INSERT INTO lines (line, engine, digest, state, tag, task_id, status_code) "
            "VALUES (?, 'chat_gpt', ?, ?, ?, ?, ?)",
            [
                (i, digests[i - 1], *row, f"llmtasks:abcd1234:{i}", *done)
                for i, row, done in [(1, ("created",), ("old-1", 20100))]
                + [(i, ("pending",), (None, None)) for i in range(2, 7)]
            ],
        )
        db.execute(
            "INSERT INTO batches (session_id, state, n_tasks, sent_at, lines, engine) "
            "VALUES (1, 'sending', 2, 1.0, ?, 'chat_gpt')",
            (pack_lines([2, 3]),),
        )
    r = run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger))
    assert r.returncode == 1, r.stderr  # two lines unknown: reconcile them
    assert "2 lines being sent when an earlier run stopped" in r.stderr
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [(x["line"], x["state"]) for x in receipts] == [
        (1, "created"),
        (2, "unknown"),
        (3, "unknown"),
        *[(i, "created") for i in range(4, 9)],
    ]
    created = emu.created()
    assert sorted(t["tag"] for t in created) == sorted(
        f"llmtasks:abcd1234:{i}" for i in range(4, 9)
    )
    assert _rows(ledger, "SELECT value FROM meta WHERE key = 'schema'") == [("3",)]
