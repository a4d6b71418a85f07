"""The results store: what collect and receive found for the ledger's created tasks.

Tables of their own (``results``; ``fetching``, the write-ahead of task_get calls;
``result_outputs``, how far each results file was written), created on first use with
CREATE TABLE IF NOT EXISTS so ledgers written before results existed still open, and the
``lines.collected`` flag of each created line.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

from llmtasks._ledger_writer import tx as _tx

# No index on ``lines`` while submitting: task ids are random, so an index on them costs more
# than everything else a line needs. Only the commands that look tasks up by id create it.
_TASK_ID_INDEX = "CREATE INDEX IF NOT EXISTS lines_task_id ON lines (task_id);"

_RESULTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL UNIQUE,
    line INTEGER NOT NULL,
    tag TEXT,
    ok INTEGER NOT NULL,
    status_code INTEGER,
    status_message TEXT,
    result TEXT,
    via TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fetching (
    task_id TEXT PRIMARY KEY, line INTEGER NOT NULL, since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS result_outputs (
    path TEXT PRIMARY KEY, seq INTEGER NOT NULL, size INTEGER NOT NULL
);
"""


class Collected(IntEnum):
    """``lines.collected`` of a created line."""

    WAITING = 0
    """No result yet."""
    COLLECTED = 1
    """Its result is stored."""
    FAILED = 2
    """The task failed on the service (stored too, without a result)."""


class TaskRef(NamedTuple):
    """A created task of this ledger: its id, input line and tag."""

    task_id: str
    line: int
    tag: str | None
    collected: Collected = Collected.WAITING


class CollectedRow(NamedTuple):
    """A created line with its stored result, for exports and the report. ``result`` is
    the task's ``result`` JSON (None for a task that failed on the service); ``collected_at``
    and ``sent_at`` are unix seconds (when the result was stored, when its POST left)."""

    line: int
    engine: str
    tag: str | None
    task_id: str
    digest: bytes
    cost: float | None
    status_code: int | None
    status_message: str | None
    result: str | None
    collected_at: float
    sent_at: float | None


class ResultRow(NamedTuple):
    """One task's final answer as stored: ``result`` is the task's JSON ``result`` (or None)."""

    task_id: str
    line: int
    tag: str | None
    ok: bool
    status_code: int | None
    status_message: str | None
    result: str | None
    via: str
    note: str | None = None
    """Why it failed, for the line's receipt (e.g. the refund of a task failed on the service)."""


class ResultsStore:
    """The results half of ``Ledger`` (which it is mixed into): one engine's view."""

    _db: sqlite3.Connection
    engine: str
    fanout: bool

    def ensure_results(self) -> None:
        """Create the results tables, and the index of task ids, if missing (idempotent)."""
        self._db.executescript(_RESULTS_SCHEMA + _TASK_ID_INDEX)

    def uncollected_count(self) -> int:
        """Created tasks whose result is neither collected nor known to have failed."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM lines WHERE state = 'created' AND collected = ? AND engine = ?",
            (Collected.WAITING, self.engine),
        ).fetchone()
        return int(row[0])

    def result_counts(self) -> dict[str, int]:
        """``created`` tasks, and of them ``collected``, ``failed`` and ``waiting``."""
        rows = self._db.execute(
            "SELECT collected, COUNT(*) FROM lines WHERE state = 'created' AND engine = ? "
            "GROUP BY collected",
            (self.engine,),
        )
        by = {Collected(c): int(n) for c, n in rows}
        return {
            "created": sum(by.values()),
            "collected": by.get(Collected.COLLECTED, 0),
            "failed": by.get(Collected.FAILED, 0),
            "waiting": by.get(Collected.WAITING, 0),
        }

    def lookup_tasks(
        self, task_ids: Sequence[str], *, uncollected_only: bool = True
    ) -> dict[str, TaskRef]:
        """The lines of these task ids (created lines only; by default not yet collected)."""
        out: dict[str, TaskRef] = {}
        extra = f" AND collected = {Collected.WAITING:d}" if uncollected_only else ""
        ids = list(task_ids)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self._db.execute(
                f"SELECT task_id, line, tag, collected FROM lines WHERE state = 'created' "
                f"AND engine = ? AND task_id IN ({','.join('?' * len(part))}){extra}",
                [self.engine, *part],
            )
            for task_id, line, tag, collected in rows:
                out[task_id] = TaskRef(task_id, line, tag, Collected(collected))
        return out

    def uncollected(
        self, *, limit: int, after_line: int = 0, sent_before: float | None = None
    ) -> list[TaskRef]:
        """Created, not collected, in line order after ``after_line`` (optionally only those
        whose POST left before ``sent_before``, unix seconds)."""
        if sent_before is None:
            rows = self._db.execute(
                "SELECT task_id, line, tag, collected FROM lines WHERE state = 'created' "
                "AND collected = ? AND engine = ? AND line > ? ORDER BY line LIMIT ?",
                (Collected.WAITING, self.engine, after_line, limit),
            )
        else:
            rows = self._db.execute(
                "SELECT l.task_id, l.line, l.tag, l.collected FROM lines l "
                "JOIN batches b ON b.batch_id = l.batch_id WHERE l.state = 'created' "
                "AND l.collected = ? AND l.engine = ? AND l.line > ? AND b.sent_at < ? "
                "ORDER BY l.line LIMIT ?",
                (Collected.WAITING, self.engine, after_line, sent_before, limit),
            )
        return [TaskRef(a, b, c, Collected(d)) for a, b, c, d in rows]

    def mark_fetching(self, refs: Sequence[TaskRef]) -> None:
        """Write-ahead before task_get: a fetched task leaves tasks_ready for good, so a run
        killed between the fetch and the record must find these again and fetch them directly."""
        if not refs:
            return
        now = time.time()
        with _tx(self._db):
            self._db.executemany(
                "INSERT OR IGNORE INTO fetching (task_id, line, since) VALUES (?, ?, ?)",
                [(r.task_id, r.line, now) for r in refs],
            )

    def unmark_fetching(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with _tx(self._db):
            self._db.executemany("DELETE FROM fetching WHERE task_id = ?", [(t,) for t in task_ids])

    def fetching(self) -> list[TaskRef]:
        """Tasks marked for fetching and not recorded since (an interrupted run's)."""
        rows = self._db.execute(
            "SELECT f.task_id, f.line, l.tag, l.collected FROM fetching f "
            "JOIN lines l ON l.task_id = f.task_id WHERE l.engine = ? ORDER BY f.line",
            (self.engine,),
        )
        return [TaskRef(a, b, c, Collected(d)) for a, b, c, d in rows]

    def store_results(self, rows: Sequence[ResultRow]) -> int:
        """Record results in one transaction; a task already recorded keeps its first result.
        Returns how many were new."""
        if not rows:
            return 0
        now = time.time()
        new = 0
        with _tx(self._db):
            for r in rows:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO results (task_id, line, tag, ok, status_code, "
                    "status_message, result, via, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.task_id,
                        r.line,
                        r.tag,
                        int(r.ok),
                        r.status_code,
                        r.status_message,
                        r.result,
                        r.via,
                        now,
                    ),
                )
                if cur.rowcount:
                    new += 1
                    self._db.execute(
                        "UPDATE lines SET collected = ?, reason = COALESCE(?, reason) "
                        "WHERE task_id = ? AND line = ?",
                        (
                            Collected.COLLECTED if r.ok else Collected.FAILED,
                            r.note,
                            r.task_id,
                            r.line,
                        ),
                    )
                self._db.execute("DELETE FROM fetching WHERE task_id = ?", (r.task_id,))
        return new

    def results_after(self, seq: int, *, limit: int = 2000) -> list[tuple[Any, ...]]:
        """(seq, line, tag, task_id, status_code, status_message, result JSON) in record order,
        and in a fan-out ledger the task's engine."""
        engine = (
            ", (SELECT l.engine FROM lines l WHERE l.task_id = r.task_id)" if self.fanout else ""
        )
        return list(
            self._db.execute(
                "SELECT seq, line, tag, task_id, status_code, status_message, result"
                f"{engine} FROM results r WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        )

    def results_by_line(self) -> Iterator[CollectedRow]:
        """Every collected task (failed ones too), in input-line order, streamed.

        Walks ``lines`` in key order and finds each result by its task id (an index; CROSS
        JOIN keeps SQLite from choosing the other order, which would sort every result
        text), so nothing grows with the ledger. ``engine`` is the line's own when the
        ledger has a per-line engine column, else the ledger's."""
        self.ensure_results()
        per_line = any(row[1] == "engine" for row in self._db.execute("PRAGMA table_info(lines)"))
        engine = "l.engine" if per_line else "?"
        args: tuple[Any, ...] = () if per_line else (self.engine,)
        order = "l.line, l.engine" if per_line else "l.line"
        cur = self._db.execute(
            f"SELECT l.line, {engine}, l.tag, l.task_id, l.digest, l.cost, r.status_code, "
            "r.status_message, r.result, r.at, b.sent_at FROM lines l "
            "CROSS JOIN results r ON r.task_id = l.task_id "
            "LEFT JOIN batches b ON b.batch_id = l.batch_id "
            f"WHERE l.state = 'created' AND l.collected != ? ORDER BY {order}",
            (*args, Collected.WAITING),
        )
        for row in cur:
            yield CollectedRow(*row)

    def output_mark(self, path: str) -> tuple[int, int] | None:
        """(last result seq, file size) written to the results file ``path``."""
        row = self._db.execute(
            "SELECT seq, size FROM result_outputs WHERE path = ?", (path,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def set_output_mark(self, path: str, seq: int, size: int) -> None:
        with _tx(self._db):
            self._db.execute(
                "INSERT INTO result_outputs (path, seq, size) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET seq = excluded.seq, size = excluded.size",
                (path, seq, size),
            )
