"""What became of one input line: the record every run leaves, line by line."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

State = Literal["pending", "sending", "created", "failed", "rejected", "skipped", "unknown"]

#: States that never change again (``unknown`` changes only through ``reconcile``).
FINAL_STATES: Final = frozenset({"created", "failed", "rejected", "skipped"})
STATES: Final[tuple[State, ...]] = (
    "pending",
    "sending",
    "created",
    "failed",
    "rejected",
    "skipped",
    "unknown",
)


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
