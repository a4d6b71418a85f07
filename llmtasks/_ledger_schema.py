"""The ledger's tables and the typed rows read from them.

What ``Ledger`` (and its reads for status and reports, ``_ledger_reads``) hand out: line
references for reconcile, batch and session summaries, the state of a batch as an enum.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple

from llmtasks._receipt import State

#: 3: lines are written once, at their outcome; a batch in flight keeps its lines' digests
#: and tags in its write-ahead row (``batches.write_ahead``). 2: ``engine`` columns, one row
#: per (line, engine). 1: one engine per ledger. Older ledgers are migrated when opened.
SCHEMA_VERSION: Final = 3

SCHEMA = """
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
    note TEXT,
    lines BLOB,
    engine TEXT NOT NULL,
    write_ahead BLOB
);
CREATE TABLE IF NOT EXISTS lines (
    line INTEGER NOT NULL,
    engine TEXT NOT NULL,
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
    collected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (line, engine)
) WITHOUT ROWID;
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


class LineRef(NamedTuple):
    """A recorded line, as reconcile looks for it on the service."""

    line: int
    tag: str | None
    prompt_digest: bytes | None
    """Of a user's own tag's task (a generated tag names its line)."""
    batch_id: int
    """Its last POST (0: never sent)."""


class BatchSummary(NamedTuple):
    calls: int
    sending: int
    """Written ahead and not recorded since (in flight, or cut off by a process that died)."""
    first_call_at: float | None
    last_call_at: float | None


class SessionRow(NamedTuple):
    session_id: int
    started_at: float
    ended_at: float | None
    calls: int
    cost: float


class BatchState(StrEnum):
    """``batches.state``: written ahead as ``SENDING``; then what became of the call."""

    SENDING = "sending"
    DONE = "done"
    NOT_CREATED = "not_created"
    UNKNOWN = "unknown"


class InFlightLine(NamedTuple):
    """A line of a batch written ahead and not recorded since. ``digest`` is None for a
    batch written ahead before schema 3 (its lines are rows in the ledger, ``pending``)."""

    line: int
    batch_id: int
    digest: bytes | None = None
    tag: str | None = None
    prompt_digest: bytes | None = None
