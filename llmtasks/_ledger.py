"""The SQLite ledger: one row per input line, the source of truth for resume and reconcile.

Write-ahead discipline: a batch is committed as ``sending`` *before* its POST, so a process
killed at any moment leaves lines that a later run finds and marks ``unknown`` instead of
resending them. WAL with ``synchronous=NORMAL`` survives a killed process (not a power cut)
at the price of no fsync per commit, which keeps each commit well under a millisecond.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from llmtasks._errors import ConfigError, InputError
from llmtasks._receipt import FINAL_STATES, Receipt, State

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    calls INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    n_tasks INTEGER NOT NULL,
    sent_at REAL NOT NULL,
    done_at REAL,
    http_status INTEGER,
    status_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS lines (
    line INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    state TEXT NOT NULL,
    tag TEXT,
    prompt_digest BLOB,
    task_id TEXT,
    status_code INTEGER,
    status_message TEXT,
    cost REAL,
    field TEXT,
    reason TEXT,
    batch_id INTEGER,
    collected INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lines_state ON lines (state);
CREATE INDEX IF NOT EXISTS lines_batch ON lines (batch_id);
CREATE INDEX IF NOT EXISTS lines_task_id ON lines (task_id);
"""


class NewLine(NamedTuple):
    """A line read from input, as first written to the ledger."""

    line: int
    digest: bytes
    state: State
    tag: str | None = None
    prompt_digest: bytes | None = None
    field: str | None = None
    reason: str | None = None


class Outcome(NamedTuple):
    """The service's answer for one line of a batch."""

    line: int
    state: State
    task_id: str | None
    status_code: int | None
    status_message: str | None
    cost: float | None
    field: str | None = None
    reason: str | None = None


class Ledger:
    """One ledger belongs to one input and one engine; reopening it resumes that job."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._db = conn
        self.path = path
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.run_id: str = meta["run_id"]
        self.engine: str = meta["engine"]
        self.input_name: str = meta["input"]
        self.session_id: int | None = None

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, input_name: str = "", engine: str = "chat_gpt"
    ) -> Ledger:
        """Open or create. ``:memory:`` gives a ledger that lives as long as the object."""
        spath = os.fspath(path)
        if spath != ":memory:":
            parent = Path(spath).parent
            if not parent.is_dir():
                raise ConfigError(f"ledger directory {parent} does not exist")
        try:
            conn = sqlite3.connect(spath, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{spath}: not a usable llmtasks ledger ({exc})") from None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            with _tx(conn):
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("run_id", secrets.token_hex(4)),
                        ("engine", engine),
                        ("input", input_name),
                        ("created_at", repr(time.time())),
                    ],
                )
        elif meta.get("engine") != engine:
            conn.close()
            raise ConfigError(
                f"ledger {spath} belongs to engine {meta.get('engine')!r}, not {engine!r}; "
                "use another --ledger"
            )
        return cls(conn, spath)

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> Ledger:
        """Open a ledger that must already exist (status, export, reconcile, collect)."""
        spath = os.fspath(path)
        if not Path(spath).is_file():
            raise InputError(f"{spath}: no such ledger")
        conn = sqlite3.connect(spath, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            if not conn.execute("SELECT 1 FROM meta WHERE key = 'run_id'").fetchone():
                raise sqlite3.DatabaseError("no run id")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InputError(f"{spath}: not an llmtasks ledger ({exc})") from None
        return cls(conn, spath)

    def close(self) -> None:
        self._db.close()

    # -- sessions -------------------------------------------------------------------------

    def begin_session(self, command: str = "") -> int:
        with _tx(self._db):
            cur = self._db.execute(
                "INSERT INTO sessions (started_at, command) VALUES (?, ?)", (time.time(), command)
            )
        self.session_id = int(cur.lastrowid or 0)
        return self.session_id

    def end_session(self, *, calls: int, cost: float) -> None:
        with _tx(self._db):
            self._db.execute(
                "UPDATE sessions SET ended_at = ?, calls = ?, cost = ? WHERE session_id = ?",
                (time.time(), calls, cost, self.session_id),
            )

    def recover_interrupted(self) -> int:
        """Lines left ``sending`` by a process that died: their POST may have created tasks."""
        with _tx(self._db):
            self._db.execute(
                "UPDATE batches SET state = 'unknown', note = 'interrupted while sending' "
                "WHERE state = 'sending'"
            )
            cur = self._db.execute(
                "UPDATE lines SET state = 'unknown', reason = 'interrupted while sending' "
                "WHERE state = 'sending'"
            )
        return cur.rowcount

    # -- reading --------------------------------------------------------------------------

    def known(self, first: int, last: int) -> dict[int, tuple[bytes, State]]:
        """Digest and state of the recorded lines in ``first..last``."""
        rows = self._db.execute(
            "SELECT line, digest, state FROM lines WHERE line BETWEEN ? AND ?", (first, last)
        )
        return {line: (digest, state) for line, digest, state in rows}

    def last_line(self) -> int:
        row = self._db.execute("SELECT MAX(line) FROM lines").fetchone()
        return int(row[0] or 0)

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM lines GROUP BY state")
        return {state: n for state, n in rows}

    def receipts(self, *, states: Iterable[str] | None = None) -> Iterator[Receipt]:
        """Every recorded line in input order (or only those in ``states``)."""
        sql = (
            "SELECT line, state, tag, task_id, status_code, status_message, cost, field, reason "
            "FROM lines"
        )
        args: list[Any] = []
        if states is not None:
            wanted = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args = wanted
        sql += " ORDER BY line"
        for row in self._db.execute(sql, args):
            yield _receipt(row)

    def lines_in_state(self, state: State) -> list[tuple[int, str | None, bytes | None, int]]:
        """(line, tag, prompt_digest, batch_id) of every line in ``state``."""
        rows = self._db.execute(
            "SELECT line, tag, prompt_digest, batch_id FROM lines WHERE state = ? ORDER BY line",
            (state,),
        )
        return [(a, b, c, int(d or 0)) for a, b, c, d in rows]

    def batch_times(self, batch_ids: Iterable[int]) -> dict[int, float]:
        ids = list(set(batch_ids))
        out: dict[int, float] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self._db.execute(
                f"SELECT batch_id, sent_at FROM batches WHERE batch_id IN "
                f"({','.join('?' * len(part))})",
                part,
            )
            out.update({b: t for b, t in rows})
        return out

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only access for reports (status); callers pass constant SQL."""
        return list(self._db.execute(sql, args))

    # -- writing --------------------------------------------------------------------------

    def add_lines(self, rows: Sequence[NewLine]) -> None:
        if not rows:
            return
        with _tx(self._db):
            self._db.executemany(
                "INSERT INTO lines (line, digest, state, tag, prompt_digest, field, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def mark_sending(self, lines: Sequence[int]) -> int:
        """Write the batch as ``sending``: committed before the POST leaves."""
        with _tx(self._db):
            cur = self._db.execute(
                "INSERT INTO batches (session_id, state, n_tasks, sent_at) "
                "VALUES (?, 'sending', ?, ?)",
                (self.session_id or 0, len(lines), time.time()),
            )
            batch_id = int(cur.lastrowid or 0)
            self._db.executemany(
                "UPDATE lines SET state = 'sending', batch_id = ? WHERE line = ?",
                [(batch_id, line) for line in lines],
            )
        return batch_id

    def record(
        self,
        batch_id: int,
        outcomes: Sequence[Outcome],
        *,
        batch_state: str,
        attempts: int,
        http_status: int | None = None,
        status_code: int | None = None,
        note: str | None = None,
    ) -> None:
        """Record the end of a batch: each line's outcome and the batch's own."""
        with _tx(self._db):
            self._db.execute(
                "UPDATE batches SET state = ?, done_at = ?, http_status = ?, status_code = ?, "
                "attempts = ?, note = ? WHERE batch_id = ?",
                (batch_state, time.time(), http_status, status_code, attempts, note, batch_id),
            )
            self._db.executemany(
                "UPDATE lines SET state = ?, task_id = ?, status_code = ?, status_message = ?, "
                "cost = ?, field = ?, reason = ? WHERE line = ?",
                [
                    (
                        o.state,
                        o.task_id,
                        o.status_code,
                        o.status_message,
                        o.cost,
                        o.field,
                        o.reason,
                        o.line,
                    )
                    for o in outcomes
                ],
            )

    def resolve(self, updates: Sequence[Outcome]) -> None:
        """Reconcile's verdicts on ``unknown`` lines (created with an id, or pending again)."""
        with _tx(self._db):
            self._db.executemany(
                "UPDATE lines SET state = ?, task_id = ?, status_code = ?, status_message = ?, "
                "cost = ?, reason = ? WHERE line = ? AND state = 'unknown'",
                [
                    (o.state, o.task_id, o.status_code, o.status_message, o.cost, o.reason, o.line)
                    for o in updates
                ],
            )

    def requeue_unknown(self) -> int:
        """``--resend-unknown``: the user accepts paying twice for what may exist already."""
        with _tx(self._db):
            cur = self._db.execute(
                "UPDATE lines SET state = 'pending', reason = NULL WHERE state = 'unknown'"
            )
        return cur.rowcount


def is_final(state: str) -> bool:
    return state in FINAL_STATES


def _receipt(row: tuple[Any, ...]) -> Receipt:
    line, state, tag, task_id, code, message, cost, field, reason = row
    return Receipt(
        line=line,
        state=state,
        tag=tag,
        task_id=task_id,
        status_code=code,
        status_message=message,
        cost=cost,
        field=field,
        reason=reason,
    )


class _tx:
    """``with _tx(conn):`` one explicit transaction (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
