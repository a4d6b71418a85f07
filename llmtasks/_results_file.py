"""The results file, and one result as collect and receive give it.

A task_get answer (or a postback's) becomes a ``ResultRow`` for the ledger's results store
(``result_row``) and a ``Result`` for the caller (``to_result``); ``ResultWriter`` appends
the store to one JSONL file, each result exactly once whatever happens to the process.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final, Literal

import msgspec
import orjson

from llmtasks._errors import ConfigError
from llmtasks._ledger import Ledger, ResultRow, TaskRef
from llmtasks._wire import GotTask

log = logging.getLogger("llmtasks")

#: Why a task that failed on the service costs nothing (documented: a task unfinished after
#: 72 hours fails, and a failed task's prepayment is refunded).
REFUND_NOTE: Final = "failed on the service: its prepayment is refunded"

Via = Literal["tasks_ready", "direct", "postback", "pingback"]


class Result(msgspec.Struct, frozen=True):
    """One task's answer, matched to its input line. ``result`` is the task's ``result`` list
    as task_get returns it (``None`` when the task failed on the service side)."""

    line: int
    tag: str | None
    task_id: str
    status_code: int | None
    status_message: str | None
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status_code == 20000


def result_row(ref: TaskRef, task: GotTask, via: Via) -> ResultRow:
    raw = task.result
    text = bytes(raw)
    result = None if text in (b"", b"null") else text.decode()
    ok = task.status_code == 20000
    if ok:
        note = None
    elif task.status_code in (40400, 40401):
        note = f"task_get: not found on the service ({task.status_code})"
    elif task.status_code == 40403:
        note = "task_get: the result expired (40403: results are kept 30 days)"
    else:
        note = REFUND_NOTE
    return ResultRow(
        task_id=ref.task_id,
        line=ref.line,
        tag=ref.tag,
        ok=ok,
        status_code=task.status_code,
        status_message=task.status_message,
        result=result if ok else None,
        via=via,
        note=note,
    )


def to_result(row: ResultRow) -> Result:
    return Result(
        line=row.line,
        tag=row.tag,
        task_id=row.task_id,
        status_code=row.status_code,
        status_message=row.status_message,
        result=orjson.loads(row.result) if row.result is not None else None,
    )


def default_out(ledger_path: str) -> str:
    """``prompts.jsonl.ledger.sqlite`` → ``prompts.jsonl.results.jsonl``."""
    base = ledger_path.removesuffix(".sqlite").removesuffix(".ledger")
    return f"{base}.results.jsonl"


class ResultWriter:
    """Appends every result recorded in the ledger to one JSONL file, each exactly once.

    The ledger keeps, per file, the last result written and the file's size after it. On open
    a longer file is cut back to that size (lines written by a run that died before recording
    them) and a missing or shorter one is rebuilt; then everything recorded since is appended.
    One writer per file at a time.
    """

    def __init__(self, ledger: Ledger, path: str) -> None:
        self._ledger = ledger
        self.path = os.path.abspath(path)
        mark = ledger.output_mark(self.path)
        size = os.path.getsize(self.path) if os.path.exists(self.path) else None
        if mark is None:
            if size:
                raise ConfigError(
                    f"{path} exists and was not written from ledger {ledger.path}: "
                    "choose another --out or remove it"
                )
            self._seq = 0
            self._truncate(0)
        elif size is None or size < mark[1]:
            if size is not None:
                log.warning("%s is shorter than recorded: rewriting it from the ledger", path)
            self._seq = 0
            self._truncate(0)
        else:
            self._seq = mark[0]
            if size > mark[1]:
                self._truncate(mark[1])
        self.written = 0
        self.catch_up()

    def _truncate(self, size: int) -> None:
        if size == 0 and not os.path.exists(self.path):
            return  # no empty file: it is created with its first result
        with open(self.path, "ab") as f:
            f.truncate(size)

    def catch_up(self) -> int:
        """Append what the ledger recorded since the last call; returns lines written."""
        n = 0
        rows = self._ledger.results_after(self._seq)
        if not rows:
            return 0
        with open(self.path, "ab") as f:
            while rows:
                chunk = b"".join(_line_bytes(row) for row in rows)
                f.write(chunk)
                f.flush()
                self._seq = int(rows[-1][0])
                n += len(rows)
                self._ledger.set_output_mark(self.path, self._seq, f.tell())
                rows = self._ledger.results_after(self._seq)
        self.written += n
        return n


def _line_bytes(row: tuple[Any, ...]) -> bytes:
    _seq, line, tag, task_id, code, message, result, *engine = row
    doc = {
        "line": line,
        **({"engine": engine[0]} if engine else {}),
        "tag": tag,
        "task_id": task_id,
        "status_code": code,
        "status_message": message,
        "result": orjson.Fragment(result) if result is not None else None,
    }
    return orjson.dumps(doc) + b"\n"
