"""A task_post reply turned into receipts: what became of each line of the batch sent.

Pure: no ledger and no network, so every answer the service can give is tested as data
(tests/test_replies.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmtasks._receipt import Receipt
from llmtasks._transport import INVALID_TASK_CODES
from llmtasks._wire import Envelope


def post_receipts(
    lines: Sequence[int], tags: Sequence[str], env: Envelope
) -> tuple[list[Receipt], bool, float]:
    """(one receipt per line, whether every task was created, the created tasks' cost).

    The n-th task of the reply answers the n-th line sent; a task echoing another line's
    tag means the reply cannot be matched, so that line is ``unknown``."""
    replies = env.tasks or []
    n_replies = len(replies)
    receipts: list[Receipt] = []
    all_created = True
    cost = 0.0
    for i, line in enumerate(lines):
        tag = tags[i]
        if i < n_replies:
            t = replies[i]
            code, msg, task_cost = t.status_code, t.status_message, t.cost
            echoed = t.data.tag if t.data is not None else None
            if code == 20100 and (echoed is None or echoed == tag):
                # The common case, kept short: one receipt and one row per task.
                receipts.append(Receipt(line, "created", tag, t.id, 20100, msg, task_cost))
                cost += task_cost or 0.0
                continue
            if echoed is not None and echoed != tag:
                r = Receipt(
                    line=line,
                    state="unknown",
                    tag=tag,
                    status_code=code,
                    status_message=msg,
                    reason=f"reply out of order (tag {echoed!r} for line {line})",
                )
            elif code in INVALID_TASK_CODES:
                r = Receipt(
                    line=line,
                    state="rejected",
                    tag=tag,
                    task_id=t.id,
                    status_code=code,
                    status_message=msg,
                    cost=task_cost,
                    field=_field_of(msg),
                    reason=msg,
                )
            else:
                r = Receipt(
                    line=line,
                    state="failed",
                    tag=tag,
                    task_id=t.id,
                    status_code=code,
                    status_message=msg,
                    cost=task_cost,
                )
        elif env.tasks is None:
            # The whole call was refused with a code of its own: nothing created.
            r = Receipt(
                line=line,
                state="failed",
                tag=tag,
                status_code=env.status_code,
                status_message=env.status_message,
            )
        else:
            r = Receipt(
                line=line,
                state="unknown",
                tag=tag,
                reason="the service answered fewer tasks than were sent",
            )
        receipts.append(r)
        all_created = False
    return receipts, all_created, cost


def _field_of(message: str) -> str | None:
    # The service names the field as "Invalid Field: 'name'."
    start = message.find("'")
    end = message.find("'", start + 1)
    return message[start + 1 : end] if 0 <= start < end else None
