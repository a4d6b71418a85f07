"""The SQLite ledger: one row per input line, the source of truth for resume and reconcile.

Write-ahead discipline: a batch (with the numbers of its lines) is committed as ``sending``
*before* its POST, so a process killed at any moment leaves batches whose lines a later run
marks ``unknown`` instead of resending them. WAL with ``synchronous=NORMAL`` survives a
killed process (not a power cut) at the price of no fsync per commit, which keeps each
commit well under a millisecond.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llmtasks._errors import ConfigError, InputError
from llmtasks._ledger_reads import LedgerReads
from llmtasks._ledger_schema import SCHEMA
from llmtasks._ledger_schema import SCHEMA_VERSION as SCHEMA_VERSION
from llmtasks._ledger_schema import BatchState as BatchState
from llmtasks._ledger_schema import InFlightLine as InFlightLine
from llmtasks._ledger_schema import LineRef as LineRef
from llmtasks._ledger_schema import NewLine as NewLine
from llmtasks._ledger_writer import LedgerWriter, unpack_lines
from llmtasks._ledger_writer import pack_lines as pack_lines
from llmtasks._ledger_writer import tx as _tx
from llmtasks._receipt import LineState as LineState
from llmtasks._receipt import Receipt, State
from llmtasks._results_store import Collected as Collected
from llmtasks._results_store import CollectedRow as CollectedRow
from llmtasks._results_store import ResultRow as ResultRow
from llmtasks._results_store import TaskRef as TaskRef
from llmtasks._task import ENGINES


class Ledger(LedgerReads):
    """One ledger belongs to one input and one set of engines (one outcome per line and
    engine); reopening it resumes that job. An object is a view of one ``engine``: what it
    reads and writes about lines is that engine's (``for_engine`` gives the others)."""

    def __init__(self, conn: sqlite3.Connection, path: str, engine: str | None = None) -> None:
        self._db = conn
        self.path = path
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.run_id: str = meta["run_id"]
        #: The run's engines, in the order given (a ledger older than fan-out: its one engine).
        self.engines: tuple[str, ...] = tuple((meta.get("engines") or meta["engine"]).split(","))
        self.engine: str = engine or self.engines[0]
        if not set(self.engines) <= set(ENGINES):
            raise InputError(f"{path}: not a usable llmtasks ledger (engines {self.engines})")
        if self.engine not in self.engines:
            raise ConfigError(
                f"ledger {path} holds {', '.join(self.engines)} tasks, not {self.engine}"
            )
        self.fanout = len(self.engines) > 1
        # Generated tags stay unique per (line, engine): a fan-out run names the engine.
        self.tag_prefix = (
            f"llmtasks:{self.run_id}:{self.engine}:" if self.fanout else f"llmtasks:{self.run_id}:"
        )
        self._migrate()
        self.input_name: str = meta["input"]
        self.session_id: int | None = None
        self._lock: TextIO | None = None
        #: A view made by ``for_engine``: the ledger's lock is its first object's.
        self._view = False
        # Held by a LedgerWriter sharing this connection (``:memory:``) and by the reads
        # made while it runs.
        self._db_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        input_name: str = "",
        engine: str = "chat_gpt",
        engines: Sequence[str] | None = None,
        shard: str = "",
    ) -> Ledger:
        """Open or create. ``:memory:`` gives a ledger that lives as long as the object.
        ``engines``: every engine of the run (a fan-out), ``engine`` the one this view is of."""
        run_engines = ",".join(engines or (engine,))
        spath = os.fspath(path)
        if spath != ":memory:":
            parent = Path(spath).parent
            if not parent.is_dir():
                raise ConfigError(f"ledger directory {parent} does not exist")
        try:
            conn = sqlite3.connect(spath, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
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
                        ("engine", run_engines.split(",")[0]),
                        ("engines", run_engines),
                        ("input", input_name),
                        ("created_at", repr(time.time())),
                        ("shard", shard),
                    ],
                )
        elif meta.get("shard", "") != shard:
            conn.close()
            raise ConfigError(
                f"ledger {spath} belongs to shard {meta.get('shard') or 'none'!r}, not "
                f"{shard or 'none'!r}; use another --ledger"
            )
        elif (meta.get("engines") or meta.get("engine")) != run_engines:
            conn.close()
            have = meta.get("engines") or meta.get("engine")
            raise ConfigError(
                f"ledger {spath} belongs to engine {have!r}, not {run_engines!r}; "
                "use another --ledger"
            )
        return cls(conn, spath, engine)

    def for_engine(self, engine: str) -> Ledger:
        """Another view of the same ledger: ``engine``'s lines (a connection of its own)."""
        if self.path == ":memory:":
            view = Ledger.__new__(Ledger)
            view.__dict__.update(self.__dict__)
            view.engine = engine
            view.tag_prefix = self.tag_prefix.rsplit(":", 2)[0] + f":{engine}:"
            view._lock = None
            view._view = True
            return view
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        view = Ledger(conn, self.path, engine)
        view._view = True
        return view

    def _migrate(self) -> None:
        """Bring an older ledger to this schema (adding a column rewrites nothing).

        Before 2 there were no ``engine`` columns: every row is the ledger's one engine's.
        Before 3 there was no ``batches.write_ahead``: the lines of a batch in flight were
        rows already, in state ``pending``, which ``recover_interrupted`` still reads."""
        schema = int(self._meta_value("schema") or 1)
        if schema > SCHEMA_VERSION:
            raise ConfigError(
                f"ledger {self.path} was written by a newer llmtasks (ledger schema {schema}, "
                f"this version reads up to {SCHEMA_VERSION}): upgrade llmtasks"
            )
        # The engine is one of ENGINES (checked above): safe in the statement.
        for table, column, decl in (
            ("lines", "engine", f"TEXT NOT NULL DEFAULT '{self.engines[0]}'"),
            ("batches", "engine", f"TEXT NOT NULL DEFAULT '{self.engines[0]}'"),
            ("batches", "write_ahead", "BLOB"),
        ):
            if self._has_column(table, column):
                continue
            try:
                with _tx(self._db):
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError:
                # Another process opening the same old ledger added it first.
                if not self._has_column(table, column):
                    raise
        if schema < SCHEMA_VERSION:
            with _tx(self._db):
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
                )

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    def _meta_value(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

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

    def lock(self) -> None:
        """Only one ``submit`` per ledger: a second one would take the first one's calls in
        flight for those of a dead run. Held until ``close()``, which removes the lock file;
        the OS drops the lock if the process dies, so a killed run never leaves a stale lock
        (only a file that the next run takes over)."""
        if self.path == ":memory:" or self._lock is not None or self._view:
            return
        lock_path = self.path + ".lock"
        while True:
            f = open(lock_path, "a+")  # noqa: SIM115 (held open as the lock)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise ConfigError(
                    f"ledger {self.path} is in use by another submit ({holder}); wait for it "
                    "to finish or stop it first"
                ) from None
            # The holder removes the file before letting go of it: a lock taken on a file
            # that is no longer at the path guards nothing. Open the path again.
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock = f

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            # Removed while still held: whoever opens the path from now on gets a new file,
            # and whoever opened this one before sees it is gone once they hold it (lock()).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + ".lock")
            self._lock.close()
            self._lock = None

    # -- sessions -------------------------------------------------------------------------

    def begin_session(self, command: str = "") -> int:
        with _tx(self._db):
            cur = self._db.execute(
                "INSERT INTO sessions (started_at, command) VALUES (?, ?)", (time.time(), command)
            )
        self.session_id = int(cur.lastrowid or 0)
        return self.session_id

    def join_session(self, session_id: int) -> None:
        """A fan-out's other engines: their calls are the one run's session, not sessions
        of their own (the counters are shared)."""
        with _tx(self._db):
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (self.session_id,))
        self.session_id = session_id

    def end_session(self, *, calls: int, cost: float) -> None:
        with _tx(self._db):
            self._db.execute(
                "UPDATE sessions SET ended_at = ?, calls = ?, cost = ? WHERE session_id = ?",
                (time.time(), calls, cost, self.session_id),
            )

    def recover_interrupted(self) -> int:
        """Batches left ``sending`` by a process that died: their POST may have created tasks,
        so their lines become ``unknown`` (never resent without reconcile), written from the
        batch's write-ahead row."""
        reason = "interrupted while sending"
        with _tx(self._db):
            n = 0
            for line in self._in_flight():
                if line.digest is None:
                    # Written ahead before schema 3: the line is a ``pending`` row already.
                    cur = self._db.execute(
                        "UPDATE lines SET state = ?, batch_id = ?, reason = ? "
                        "WHERE line = ? AND engine = ? AND state = ?",
                        (
                            LineState.UNKNOWN,
                            line.batch_id,
                            reason,
                            line.line,
                            self.engine,
                            LineState.PENDING,
                        ),
                    )
                else:
                    # A row left ``pending`` by an earlier run that stopped, or none yet.
                    cur = self._db.execute(
                        "INSERT INTO lines (line, engine, digest, state, tag, prompt_digest, "
                        "batch_id, reason) VALUES (?, ?, ?, 'unknown', ?, ?, ?, ?) "
                        "ON CONFLICT (line, engine) DO UPDATE SET state = 'unknown', "
                        "tag = excluded.tag, batch_id = excluded.batch_id, "
                        "reason = excluded.reason, "
                        "prompt_digest = COALESCE(excluded.prompt_digest, prompt_digest) "
                        "WHERE state = 'pending'",
                        (
                            line.line,
                            self.engine,
                            line.digest,
                            line.tag,
                            line.prompt_digest,
                            line.batch_id,
                            reason,
                        ),
                    )
                n += cur.rowcount
            self._db.execute(
                "UPDATE batches SET state = ?, note = ? WHERE state = ? AND engine = ?",
                (BatchState.UNKNOWN, reason, BatchState.SENDING, self.engine),
            )
        return n

    def in_flight(self) -> list[InFlightLine]:
        """The lines of this engine's batches written ahead as ``sending`` and not recorded
        since: calls in flight now, or cut off by a process that died."""
        with self._db_lock:
            return self._in_flight()

    def _in_flight(self) -> list[InFlightLine]:
        out: list[InFlightLine] = []
        for batch_id, packed, write_ahead in self._db.execute(
            "SELECT batch_id, lines, write_ahead FROM batches WHERE state = ? "
            "AND engine = ? ORDER BY batch_id",
            (BatchState.SENDING, self.engine),
        ).fetchall():
            lines = unpack_lines(packed)
            if write_ahead is None:
                out += [InFlightLine(line, batch_id) for line in lines]
                continue
            digests, user = _decode_write_ahead(write_ahead)
            tags: dict[int, tuple[str, bytes]] = {i: (tag, pd) for i, tag, pd in user}
            prefix = self.tag_prefix
            for i, line in enumerate(lines):
                tag, prompt = tags.get(i) or (f"{prefix}{line}", None)
                out.append(InFlightLine(line, batch_id, digests[i], tag, prompt))
        return out

    # -- reading --------------------------------------------------------------------------

    def known(self, first: int, last: int) -> dict[int, tuple[bytes, State]]:
        """Digest and state of the recorded lines in ``first..last``."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT line, digest, state FROM lines WHERE line BETWEEN ? AND ? AND engine = ?",
                (first, last, self.engine),
            ).fetchall()
        return {line: (digest, state) for line, digest, state in rows}

    def writer(self) -> LedgerWriter:
        """A writer thread for submit, with its own connection (``:memory:`` shares this one)."""
        if self.path == ":memory:":
            return LedgerWriter(self._db, lock=self._db_lock, engine=self.engine)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return LedgerWriter(conn, lock=threading.Lock(), owned=True, engine=self.engine)

    def batches_sending(self) -> int:
        """Calls in flight now, or cut off by a process that died (the next run finds them)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM batches WHERE state = ? AND engine = ?",
            (BatchState.SENDING, self.engine),
        ).fetchone()
        return int(row[0])

    def last_line(self) -> int:
        row = self._db.execute(
            "SELECT MAX(line) FROM lines WHERE engine = ?", (self.engine,)
        ).fetchone()
        return int(row[0] or 0)

    def counts(self, *, all_engines: bool = False) -> dict[str, int]:
        """Lines by state: this engine's, or every engine's (a fan-out run's (line, engine)
        pairs)."""
        if all_engines:
            rows = self._db.execute("SELECT state, COUNT(*) FROM lines GROUP BY state")
        else:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM lines WHERE engine = ? GROUP BY state",
                (self.engine,),
            )
        return {state: n for state, n in rows}

    def receipts(
        self, *, states: Iterable[str] | None = None, first_line: int = 1
    ) -> Iterator[Receipt]:
        """Every recorded line in input order (or only those in ``states``), from
        ``first_line`` on; in a fan-out ledger every (line, engine), with its engine."""
        sql = (
            "SELECT line, state, tag, task_id, status_code, status_message, cost, field, reason, "
            f"{'engine' if self.fanout else 'NULL'} FROM lines WHERE line >= ?"
        )
        args: list[Any] = [first_line]
        if states is not None:
            wanted = list(states)
            sql += f" AND state IN ({','.join('?' * len(wanted))})"
            args += wanted
        sql += " ORDER BY line, engine"
        for row in self._db.execute(sql, args):
            yield _receipt(row)

    def lines_in_state(self, state: LineState | State) -> list[LineRef]:
        """Every line in ``state``, in line order."""
        rows = self._db.execute(
            "SELECT line, tag, prompt_digest, batch_id FROM lines WHERE state = ? AND engine = ? "
            "ORDER BY line",
            (state, self.engine),
        )
        return [LineRef(a, b, c, int(d or 0)) for a, b, c, d in rows]

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

    def lookup_unrecorded(self, tag: str) -> int | None:
        """The one line in flight (in a batch written ahead, its reply not yet recorded) or
        ``unknown`` with this tag: a result may arrive (by postback) before the POST's reply
        is recorded. None when no line or several match."""
        rows = self._db.execute(
            "SELECT line FROM lines WHERE tag = ? AND engine = ? "
            "AND state IN ('pending', 'unknown') LIMIT 2",
            (tag, self.engine),
        ).fetchall()
        found = {int(r[0]) for r in rows}
        found.update(f.line for f in self._in_flight() if f.tag == tag)
        return found.pop() if len(found) == 1 else None

    # -- writing --------------------------------------------------------------------------

    def add_lines(self, rows: Sequence[NewLine]) -> None:
        if not rows:
            return
        with _tx(self._db):
            self._db.executemany(
                "INSERT INTO lines (line, digest, state, tag, prompt_digest, field, reason, "
                "engine) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, self.engine) for r in rows],
            )

    def mark_sending(self, lines: Sequence[int]) -> int:
        """Write the batch as ``sending``: committed before the POST leaves.

        One row naming its lines, not an update of each line: this commit sits on the path
        of every call. The lines themselves change once, when the outcome is recorded."""
        with _tx(self._db):
            cur = self._db.execute(
                "INSERT INTO batches (session_id, state, n_tasks, sent_at, lines, engine) "
                "VALUES (?, 'sending', ?, ?, ?, ?)",
                (self.session_id or 0, len(lines), time.time(), pack_lines(lines), self.engine),
            )
        return int(cur.lastrowid or 0)

    def record(
        self,
        batch_id: int,
        outcomes: Sequence[Receipt],
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
                "cost = ?, field = ?, reason = ?, batch_id = ? WHERE line = ? AND engine = ?",
                [
                    (
                        o.state,
                        o.task_id,
                        o.status_code,
                        o.status_message,
                        o.cost,
                        o.field,
                        o.reason,
                        batch_id,
                        o.line,
                        self.engine,
                    )
                    for o in outcomes
                ],
            )

    def resolve(self, updates: Sequence[Receipt]) -> None:
        """Reconcile's verdicts on ``unknown`` lines (created with an id, or pending again)."""
        with _tx(self._db):
            self._db.executemany(
                "UPDATE lines SET state = ?, task_id = ?, status_code = ?, status_message = ?, "
                "cost = ?, reason = ? WHERE line = ? AND engine = ? AND state = 'unknown'",
                [
                    (
                        o.state,
                        o.task_id,
                        o.status_code,
                        o.status_message,
                        o.cost,
                        o.reason,
                        o.line,
                        self.engine,
                    )
                    for o in updates
                ],
            )

    def requeue_unknown(self) -> int:
        """``--resend-unknown``: the user accepts paying twice for what may exist already."""
        with _tx(self._db):
            cur = self._db.execute(
                "UPDATE lines SET state = ?, reason = NULL WHERE state = ? AND engine = ?",
                (LineState.PENDING, LineState.UNKNOWN, self.engine),
            )
        return cur.rowcount


def _receipt(row: tuple[Any, ...]) -> Receipt:
    line, state, tag, task_id, code, message, cost, field, reason, engine = row
    return Receipt(
        line=line,
        engine=engine,
        state=state,
        tag=tag,
        task_id=task_id,
        status_code=code,
        status_message=message,
        cost=cost,
        field=field,
        reason=reason,
    )


_decode_write_ahead = msgspec.msgpack.Decoder(
    tuple[list[bytes], list[tuple[int, str, bytes]]]
).decode
