"""What became of one input line: the record every run leaves, line by line."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

import msgspec

# A line in a call that is in flight stays ``pending``: the write-ahead record is its batch
# (see _ledger). ``created``, ``failed``, ``rejected`` and ``skipped`` never change again;
# ``unknown`` changes only through ``reconcile``.
State = Literal["pending", "created", "failed", "rejected", "skipped", "unknown"]
STATES: Final[tuple[State, ...]] = (
    "pending",
    "created",
    "failed",
    "rejected",
    "skipped",
    "unknown",
)


class LineState(StrEnum):
    """``State`` as an enum, for the ledger's code (its values are the states)."""

    PENDING = "pending"
    CREATED = "created"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


class Receipt(msgspec.Struct, frozen=True, omit_defaults=True):
    """One input line's outcome, as written to receipts and rejects files.

    ``field`` and ``reason`` are set for lines that were not sent (or that the service
    refused as invalid); ``task_id`` and ``status_code`` come from the service.
    """

    line: int
    state: State
    tag: str | None = None
    task_id: str | None = None
    status_code: int | None = None
    status_message: str | None = None
    cost: float | None = None
    field: str | None = None
    reason: str | None = None
    #: Set in a fan-out run (one outcome per line and engine).
    engine: str | None = None
