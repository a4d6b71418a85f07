"""Ledger writes off the event loop: one thread, its own SQLite connection, group commits.

Submit's writes queue here in the order they are made and are applied in that order, many
to a transaction. A write-ahead (``mark_sending``) returns only once its transaction is
committed, so no POST leaves before the record of its batch; outcomes and new lines are
queued and the sender goes on. A slow disk then slows the next write-ahead, never a reply
being read. Because the queue is first in, first out, a batch's lines are always recorded
before its write-ahead, and its write-ahead before its outcome: a process killed at any
moment leaves a prefix of these writes, which the next run reads as it always did.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from llmtasks._errors import LlmtasksError

# One transaction takes whatever has queued up to this many writes: enough to make the
# per-commit cost vanish at any rate the service allows, few enough to keep a commit short.
_MAX_OPS_PER_TX: Final = 256

_INSERT_LINES: Final = (
    "INSERT INTO lines (line, digest, state, tag, prompt_digest, field, reason, engine) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# The two statements of nearly every line, with as few parameters as they need.
_INSERT_PENDING: Final = (
    "INSERT INTO lines (line, digest, state, tag, engine) VALUES (?, ?, 'pending', ?, ?)"
)
_UPDATE_CREATED: Final = (
    "UPDATE lines SET state = 'created', task_id = ?, status_code = 20100, status_message = ?, "
    "cost = ?, batch_id = ? WHERE line = ? AND engine = ?"
)
_UPDATE_BATCH: Final = (
    "UPDATE batches SET state = ?, done_at = ?, http_status = ?, status_code = ?, "
    "attempts = ?, note = ? WHERE batch_id = ?"
)
_UPDATE_LINES: Final = (
    "UPDATE lines SET state = ?, task_id = ?, status_code = ?, status_message = ?, "
    "cost = ?, field = ?, reason = ?, batch_id = ? WHERE line = ? AND engine = ?"
)


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
        self._db = db
        #: Every line and batch this writer records is this engine's.
        self._engine = engine
        self._owned = owned
        # Held for each transaction: a ``:memory:`` ledger shares its one connection with
        # the readers on the loop thread.
        self._lock = lock
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: LedgerWriteError | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="llmtasks-ledger", daemon=True)
        self._thread.start()

    # -- queued writes (called on the loop) -------------------------------------------------

    def add_lines(
        self, pending: Sequence[tuple[int, bytes, str]], others: Sequence[tuple[Any, ...]] = ()
    ) -> None:
        """Insert lines (one transaction): to send as (line, digest, tag), and any others as
        ``NewLine`` rows; not waited for."""
        if pending or others:
            self._put(("lines", pending, others))

    async def mark_sending(self, session_id: int, lines: bytes, n: int) -> int:
        """Insert a batch row as ``sending`` and return its id once it is committed."""
        fut = self._future()
        self._put(("sending", fut, session_id, n, time.time(), lines))
        batch_id: int = await fut
        return batch_id

    def record(
        self,
        batch_id: int,
        batch: tuple[Any, ...],
        lines: Sequence[tuple[Any, ...]],
        created: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """A batch's end (state, http_status, status_code, attempts, note) and its lines'
        outcomes: ``lines`` as (state, task_id, status_code, status_message, cost, field,
        reason, batch_id, line), ``created`` as (task_id, status_message, cost, batch_id,
        line); not waited for."""
        self._put(("record", batch_id, time.time(), batch, lines, created))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (raises if it could not be)."""
        fut = self._future()
        self._put(("flush", fut))
        await fut

    async def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._owned:
            self._db.close()

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None, "LedgerWriter.start() first"
        return self._loop.create_future()

    def _put(self, op: tuple[Any, ...]) -> None:
        # After a failed write nothing more is applied (see _apply): a write-ahead or a
        # flush then raises the error, which stops the run before its next call.
        self._queue.put(op)

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        get = self._queue.get
        while True:
            first = get()
            ops = [first]
            while first is not None and len(ops) < _MAX_OPS_PER_TX:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                ops.append(op)
                if op is None:
                    break
            self._apply([op for op in ops if op is not None])
            if ops[-1] is None:
                return

    def _apply(self, ops: list[tuple[Any, ...]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any]] = []
        failure: BaseException | None = self.error
        if failure is None and ops:
            db = self._db
            eng = self._engine
            try:
                with self._lock:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        for op in ops:
                            kind = op[0]
                            if kind == "lines":
                                if op[1]:
                                    db.executemany(_INSERT_PENDING, [(*r, eng) for r in op[1]])
                                if op[2]:
                                    db.executemany(_INSERT_LINES, [(*r, eng) for r in op[2]])
                            elif kind == "sending":
                                _, fut, session_id, n, at, packed = op
                                cur = db.execute(
                                    "INSERT INTO batches (session_id, state, n_tasks, sent_at, "
                                    "lines, engine) VALUES (?, 'sending', ?, ?, ?, ?)",
                                    (session_id, n, at, packed, eng),
                                )
                                results.append((fut, int(cur.lastrowid or 0)))
                            elif kind == "record":
                                _, batch_id, at, b, lines, created = op
                                db.execute(_UPDATE_BATCH, (b[0], at, *b[1:], batch_id))
                                if created:
                                    db.executemany(_UPDATE_CREATED, [(*r, eng) for r in created])
                                if lines:
                                    db.executemany(_UPDATE_LINES, [(*r, eng) for r in lines])
                            else:
                                results.append((op[1], None))
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
            except Exception as exc:
                failure = exc
        if failure is not None:
            if self.error is None:
                self.error = LedgerWriteError(f"cannot write the ledger: {failure}")
            results = [(op[1], None) for op in ops if op[0] in ("sending", "flush")]
        loop = self._loop
        assert loop is not None
        for fut, value in results:
            loop.call_soon_threadsafe(_settle, fut, value, self.error)


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
