"""Ledger writes off the event loop: one thread, its own SQLite connection, group commits.

Submit's writes queue here in the order they are made and are applied in that order, many
to a transaction. A write-ahead (``mark_sending``) returns only once its transaction is
committed, so no POST leaves before the record of its batch; outcomes are queued and the
sender goes on. A slow disk then slows the next write-ahead, never a reply being read.
The event loop never touches SQLite: even a write-ahead is the thread's. A sender writes its
next batch ahead (``prepare``) before it waits for a slot, so the write-ahead is not what a
freed slot waits for; a batch that is then not posted has its row closed ``not_created``.

Each line is written once, at its outcome. Until then the batch's write-ahead row is its
record: line numbers, input digests and the tags that are not generated from the line
number, all in that one row. A batch's outcome (its lines inserted, its row updated) is one
transaction and comes after its write-ahead in the queue, so a process killed at any moment
leaves, for each batch, either its write-ahead alone (the next run marks its lines
``unknown`` from it, see ``Ledger.recover_interrupted``) or its outcome.
"""

from __future__ import annotations

import array
import asyncio
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from llmtasks._errors import LlmtasksError
from llmtasks._receipt import Receipt
from llmtasks._task import ENGINES

if TYPE_CHECKING:
    from llmtasks._batching import Batch

# A line is written once, at its outcome: an insert, or an update of the row an earlier run
# left (``pending``: not sent then; ``unknown`` sent again with ``--resend-unknown``). The
# engine is one of ENGINES (checked), so it is part of the statement, not of every row.
# Many rows go in one statement (``VALUES (...), (...)``): the sqlite3 module lets go of the
# GIL around every step, and under a busy event loop each time it takes it back can cost a
# switch interval (5 ms), so ``executemany`` of a 100-line batch could take far longer than
# its SQLite work; one statement is one step.
_CREATED_COLUMNS: Final = (
    "INSERT INTO lines (line, engine, digest, state, tag, task_id, status_code, status_message, "
    "cost, batch_id) VALUES "
)
_CREATED_ROW: Final = "(?, '{engine}', ?, 'created', ?, ?, ?, ?, ?, ?)"
_CREATED_CONFLICT: Final = (
    " ON CONFLICT (line, engine) DO UPDATE SET state = 'created', task_id = excluded.task_id, "
    "status_code = excluded.status_code, status_message = excluded.status_message, "
    "cost = excluded.cost, field = NULL, reason = NULL, batch_id = excluded.batch_id"
)
_LINE_COLUMNS: Final = (
    "INSERT INTO lines (line, engine, digest, state, tag, prompt_digest, task_id, status_code, "
    "status_message, cost, field, reason, batch_id) VALUES "
)
_LINE_ROW: Final = "(?, '{engine}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LINE_CONFLICT: Final = (
    " ON CONFLICT (line, engine) DO UPDATE SET state = excluded.state, tag = excluded.tag, "
    "prompt_digest = COALESCE(excluded.prompt_digest, prompt_digest), "
    "task_id = excluded.task_id, status_code = excluded.status_code, "
    "status_message = excluded.status_message, cost = excluded.cost, field = excluded.field, "
    "reason = excluded.reason, batch_id = COALESCE(excluded.batch_id, batch_id)"
)
_INSERT_BATCH: Final = (
    "INSERT INTO batches (session_id, state, n_tasks, sent_at, lines, write_ahead, engine) "
    "VALUES (?, 'sending', ?, ?, ?, ?, '{engine}')"
)
_UPDATE_BATCHES: Final = (
    "UPDATE batches SET state = v.column2, done_at = v.column3, http_status = v.column4, "
    "status_code = v.column5, attempts = v.column6, note = v.column7, "
    "sent_at = COALESCE(v.column8, sent_at) FROM (VALUES {rows}) AS v "
    "WHERE batches.batch_id = v.column1"
)
_BATCH_END_ROW: Final = "(?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per statement: few statements per transaction, each well under SQLite's limit on
# parameters (32766 since 3.32; older builds 999).
_ROWS_PER_STATEMENT: Final = 512


class LedgerWriteError(LlmtasksError):
    """The ledger could not be written (disk full, file removed...): the run stops, since
    a call whose record cannot be kept must not be made."""


class LedgerWriter:
    """Start with ``start()`` (on the event loop), stop with ``await close()``."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        lock: threading.Lock,
        owned: bool = False,
        engine: str = "chat_gpt",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"not an engine: {engine!r}")
        self._db = db
        #: Every line and batch this writer records is this engine's.
        self._engine = engine
        self._created_sql = (
            _CREATED_COLUMNS,
            _CREATED_ROW.format(engine=engine),
            _CREATED_CONFLICT,
        )
        self._line_sql = (_LINE_COLUMNS, _LINE_ROW.format(engine=engine), _LINE_CONFLICT)
        self._batch_sql = _INSERT_BATCH.format(engine=engine)
        self._owned = owned
        # Held for each transaction: a ``:memory:`` ledger shares its one connection with
        # the readers on the loop thread.
        self._lock = lock
        self._queue: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
        # Writes made during one pass of the event loop go to the thread together (see
        # _put): one wake of the thread, one GIL hand-over, instead of one per write.
        self._pending: list[tuple[Any, ...]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: LedgerWriteError | None = None
        #: Batches written ahead by ``prepare`` and not yet posted (see ``start``).
        self._ahead: asyncio.Semaphore | None = None
        # When each prepared batch's POST left (``mark_sending``), for its row's sent_at.
        self._sent_at: dict[int, float] = {}

    def start(self, *, ahead: int = 4) -> None:
        """``ahead``: at most this many batches written ahead by ``prepare`` and not yet
        posted: enough that a freed slot finds one ready (a write-ahead can take a few
        milliseconds, a slot frees every few at 30 in flight), few enough that a killed run
        leaves few lines ``unknown`` beyond its calls in flight."""
        self._loop = asyncio.get_running_loop()
        self._ahead = asyncio.Semaphore(ahead)
        self._thread = threading.Thread(target=self._run, name="llmtasks-ledger", daemon=True)
        self._thread.start()

    # -- queued writes (called on the loop) -------------------------------------------------

    def add_lines(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Lines that were not sent, at their outcome (rejected, skipped, or left pending by
        a run that stopped), as ``NewLine`` rows; not waited for."""
        if rows:
            self._put(("lines", rows))

    async def prepare(self, session_id: int, batch: Batch) -> None:
        """Write ahead the batch's first POST now, before its sender waits for a slot, so
        that a freed slot is followed by the POST alone. At most ``ahead`` batches are
        written ahead and not yet posted (``start``); this waits for one of them to go."""
        ahead = self._ahead
        assert ahead is not None, "LedgerWriter.start() first"
        await ahead.acquire()
        try:
            batch.prepared = await self._write_ahead(session_id, batch)
        except BaseException:
            ahead.release()
            raise

    def unprepare(self, batch: Batch) -> int | None:
        """The id of the write-ahead ``prepare`` made for a POST that will not be made (its
        row must then be closed with ``record``), or None."""
        batch_id = batch.prepared
        if batch_id is not None:
            batch.prepared = None
            assert self._ahead is not None
            self._ahead.release()
        return batch_id

    async def mark_sending(self, session_id: int, batch: Batch) -> int:
        """The id of the batch's write-ahead row (``sending``, its lines, their digests and
        tags) once it is committed: the one ``prepare`` made, else one inserted now."""
        batch_id = self.unprepare(batch)
        if batch_id is not None:
            if self.error is not None:
                raise self.error
            # Its row says when it was written; the POST leaves now.
            self._sent_at[batch_id] = time.time()
            return batch_id
        return await self._write_ahead(session_id, batch)

    async def _write_ahead(self, session_id: int, batch: Batch) -> int:
        fut = self._future()
        self._put(
            (
                "sending",
                fut,
                session_id,
                len(batch.lines),
                time.time(),
                pack_lines(batch.lines),
                batch.write_ahead(),
            ),
            now=True,
        )
        batch_id: int = await fut
        return batch_id

    def _failed(self, exc: BaseException) -> LedgerWriteError:
        if self.error is None:
            self.error = LedgerWriteError(f"cannot write the ledger: {exc}")
        return self.error

    def record(
        self,
        batch_id: int | None,
        end: tuple[Any, ...],
        batch: Batch,
        receipts: Sequence[Receipt] = (),
    ) -> None:
        """A batch's end (state, http_status, status_code, attempts, note) and, when
        ``receipts`` are given (one per line of ``batch``, in its order), its lines'
        outcomes; not waited for. A call that is retried records no lines: they are still
        on their way. ``batch_id`` None: lines that were never sent (the run stopped)."""
        sent_at = None if batch_id is None else self._sent_at.pop(batch_id, None)
        self._put(("record", batch_id, time.time(), end, batch, receipts, sent_at))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (raises if it could not be)."""
        fut = self._future()
        self._put(("flush", fut), now=True)
        await fut

    async def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._thread is None:
            return
        self._push()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._owned:
            self._db.close()

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None, "LedgerWriter.start() first"
        return self._loop.create_future()

    def _put(self, op: tuple[Any, ...], *, now: bool = False) -> None:
        # After a failed write nothing more is applied (see _apply): a write-ahead or a
        # flush then raises the error, which stops the run before its next call.
        # Outcomes wait for the end of this pass of the loop; what a sender waits for
        # (``now``) goes at once, with everything queued before it, in order.
        pending = self._pending
        pending.append(op)
        if now:
            self._push()
        elif len(pending) == 1:
            assert self._loop is not None, "LedgerWriter.start() first"
            self._loop.call_soon(self._push)

    def _push(self) -> None:
        if self._pending:
            self._queue.put(self._pending)
            self._pending = []

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            got: list[tuple[Any, ...]] | None = get()
            ops: list[tuple[Any, ...]] = []
            # Everything queued goes into one transaction: a write-ahead waits for at most
            # the transaction under way and its own, never for a backlog of outcomes.
            while got is not None:
                ops += got
                try:
                    got = get_nowait()
                except queue.Empty:
                    break
            self._apply(ops)
            if got is None:
                return

    def _apply(self, ops: list[tuple[Any, ...]]) -> None:
        """One transaction: the write-aheads first (a sender is waiting for each), then the
        outcomes in the order they were queued. A failure rolls all of it back and refuses
        every write-ahead from then on, so none is committed after a write that failed."""
        results: list[tuple[asyncio.Future[Any], Any]] = []
        failure: BaseException | None = self.error
        if failure is None and ops:
            db = self._db
            try:
                with self._lock:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        for op in ops:
                            if op[0] == "sending":
                                _, fut, session_id, n, at, packed, write_ahead = op
                                cur = db.execute(
                                    self._batch_sql, (session_id, n, at, packed, write_ahead)
                                )
                                results.append((fut, int(cur.lastrowid or 0)))
                        self._write_outcomes(ops, results)
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
            except Exception as exc:
                failure = exc
        if failure is not None:
            self._failed(failure)
            results = [(op[1], None) for op in ops if op[0] in ("sending", "flush")]
        loop = self._loop
        assert loop is not None
        for fut, value in results:
            loop.call_soon_threadsafe(_settle, fut, value, self.error)

    def _write_outcomes(
        self, ops: list[tuple[Any, ...]], results: list[tuple[asyncio.Future[Any], Any]]
    ) -> None:
        ends: dict[int, tuple[Any, ...]] = {}
        created: list[Any] = []
        others: list[Any] = []
        for op in ops:
            kind = op[0]
            if kind == "record":
                _, batch_id, at, end, batch, receipts, sent_at = op
                if batch_id is not None:
                    ends[batch_id] = (batch_id, end[0], at, *end[1:], sent_at)
                if receipts:
                    _outcome_rows(batch_id, batch, receipts, created, others)
            elif kind == "lines":
                for r in op[1]:
                    others += (*r[:5], None, None, None, None, r[5], r[6], None)
            elif kind == "flush":
                results.append((op[1], None))
        if ends:
            rows = list(ends.values())
            for i in range(0, len(rows), _ROWS_PER_STATEMENT):
                part = rows[i : i + _ROWS_PER_STATEMENT]
                self._db.execute(_update_batches_sql(len(part)), [x for r in part for x in r])
        self._insert(self._created_sql, created, 8)
        self._insert(self._line_sql, others, 12)

    def _insert(self, sql: tuple[str, str, str], flat: list[Any], width: int) -> None:
        step = _ROWS_PER_STATEMENT * width
        for i in range(0, len(flat), step):
            part = flat[i : i + step]
            self._db.execute(_rows_sql(sql, len(part) // width), part)


@functools.lru_cache(maxsize=64)
def _rows_sql(sql: tuple[str, str, str], n: int) -> str:
    head, row, tail = sql
    return head + ",".join([row] * n) + tail


@functools.lru_cache(maxsize=16)
def _update_batches_sql(n: int) -> str:
    return _UPDATE_BATCHES.format(rows=",".join([_BATCH_END_ROW] * n))


def _outcome_rows(
    batch_id: int | None,
    batch: Batch,
    receipts: Sequence[Receipt],
    created: list[Any],
    others: list[Any],
) -> None:
    """Add the parameters of a batch's outcomes, flat: created lines (nearly all of them,
    with the fewest parameters) to ``created``, the others to ``others``."""
    digests = batch.digests
    if len(receipts) != len(digests):
        raise ValueError(f"{len(receipts)} outcomes for a batch of {len(digests)} lines")
    prompts = dict(batch.user_tags) if batch.user_tags else {}
    for i, r in enumerate(receipts):
        if r.state == "created":
            created += (
                r.line,
                digests[i],
                r.tag,
                r.task_id,
                r.status_code,
                r.status_message,
                r.cost,
                batch_id,
            )
        else:
            others += (
                r.line,
                digests[i],
                r.state,
                r.tag,
                prompts.get(i),
                r.task_id,
                r.status_code,
                r.status_message,
                r.cost,
                r.field,
                r.reason,
                batch_id,
            )


def pack_lines(lines: Sequence[int]) -> bytes:
    """Line numbers as the write-ahead row keeps them (``batches.lines``)."""
    return array.array("q", lines).tobytes()


def unpack_lines(packed: bytes | None) -> list[int]:
    out = array.array("q")
    out.frombytes(packed or b"")
    return out.tolist()


class tx:
    """``with tx(conn):`` one explicit transaction (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
