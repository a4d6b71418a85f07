"""Reconcile: find out what became of ``unknown`` lines by asking the service.

A line is ``unknown`` when its POST may have reached the service but no reply came back.
There is no idempotency key, so the only way to know is to look for the task: ``id_list``
with metadata lists every task created in a time window with the fields it was posted with,
tag included. Each unknown line found there becomes ``created`` with its real task id;
each one not found becomes ``pending`` again, for the next ``submit`` to send.

id_list refuses a ``datetime_to`` in the future, and keeps the POST fields (the tag) for a
month. So every window ends at the service's "now" (the ``Date`` header of its reply to a
free call, never our own clock) and starts within the last four weeks (the shortest month);
a line whose window cannot be searched in full stays ``unknown`` with the reason, since not
finding it there would prove nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson

from llmtasks._batching import prompt_digest
from llmtasks._client import AccountClient, BaseTransport, Request
from llmtasks._errors import AuthError, ServiceError
from llmtasks._ledger import Ledger, LineRef
from llmtasks._receipt import Receipt
from llmtasks._throttle import RetryPolicy, Throttle, local_throttle
from llmtasks._transport import Reply
from llmtasks._wire import IdListItem, IdListMetadata, id_list_items, ready_items

log = logging.getLogger("llmtasks")

ID_LIST_PATH: Final = "/v3/ai_optimization/id_list"
PAGE: Final = 1000
#: How far the service's clock and ours may disagree, and how long a POST may take.
DEFAULT_SKEW_S: Final = 300.0
#: A POST that timed out may still be running on the service: look only once it is surely done.
DEFAULT_MIN_AGE_S: Final = 120.0
_MAX_TRIES: Final = 6
#: The backoff of every reconcile call: 1 s, doubling to 30 s, from the upper half.
_BACKOFF: Final = RetryPolicy(max_attempts=_MAX_TRIES, backoff_s=1.0)
#: The clock is a nicety (without it, our own clock less the skew): asked at most this often.
_CLOCK_TRIES: Final = 3
#: How far back id_list lists tasks with their metadata: "one month", read as the shortest.
METADATA_REACH_S: Final = 28 * 24 * 3600.0
CLOCK_PATH: Final = "/v3/appendix/user_data"
_NO_METADATA: Final = IdListMetadata()


@dataclass
class ReconcileReport:
    unknown: int = 0
    found: int = 0
    not_found: int = 0
    too_recent: int = 0
    duplicates: int = 0
    calls: int = 0
    #: Unknown lines whose window id_list cannot search (too old, or not yet): still unknown.
    unsearchable: int = 0
    #: Where the service's "now" came from.
    clock: str = ""


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S +00:00")


def _windows(times: list[float], skew_s: float) -> list[tuple[float, float]]:
    """Merge [t - skew, t + skew] around each POST into as few id_list windows as possible."""
    out: list[tuple[float, float]] = []
    for t in sorted(times):
        lo, hi = t - skew_s, t + skew_s
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


async def reconcile(
    ledger: Ledger,
    transport: BaseTransport,
    *,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    skew_s: float = DEFAULT_SKEW_S,
    id_list_rate: int = 10,
    tasks_ready_rate: int = 20,
    id_list_throttle: Throttle | None = None,
    tasks_ready_throttle: Throttle | None = None,
) -> ReconcileReport:
    """Settle the ledger's ``unknown`` lines. Every id_list and tasks_ready call takes a
    token first: from the given throttles (a fleet's shared budgets), else from local
    buckets at ``id_list_rate`` / ``tasks_ready_rate`` per minute."""
    report = ReconcileReport()
    unknown = ledger.lines_in_state("unknown")
    report.unknown = len(unknown)
    if not unknown:
        return report
    sent_at = ledger.batch_times(u.batch_id for u in unknown)
    now = time.time()
    ripe = [u for u in unknown if now - sent_at.get(u.batch_id, now) >= min_age_s]
    report.too_recent = len(unknown) - len(ripe)
    if not ripe:
        return report
    service_now, report.clock = await service_clock(transport, skew_s)
    report.calls += 1
    client = AccountClient(transport, policy=_BACKOFF)
    reach = service_now - METADATA_REACH_S
    # Every window [t - skew, t + skew] is cut at the service's now (nothing can have been
    # created later); it must start within id_list's reach, or a miss would prove nothing.
    searchable = {
        b for b in {u.batch_id for u in ripe} if reach <= sent_at[b] - skew_s <= service_now
    }
    blind = [u for u in ripe if u.batch_id not in searchable]
    ripe = [u for u in ripe if u.batch_id in searchable]
    by_tag: dict[str | None, list[tuple[int, bytes | None]]] = {}
    for line, tag, digest, _ in ripe:
        by_tag.setdefault(tag, []).append((line, digest))
    # 10 calls per minute is id_list's own documented limit; never exceed it.
    client.throttles["id_list"] = id_list_throttle or local_throttle(
        max(2, id_list_rate), 60.0, burst=1, concurrency=1
    )
    found: dict[int, Receipt] = {}
    windows = _windows([sent_at[b] for b in searchable], skew_s)
    for lo, hi in ((lo, min(hi, service_now)) for lo, hi in windows):
        offset = 0
        while True:
            items = await _page(client, lo, hi, offset, report)
            for item in items:
                _match(item, ledger.engine, by_tag, found, report)
            if len(items) < PAGE:
                break
            offset += PAGE
    missing = [u for u in ripe + blind if u.line not in found]
    if missing:
        client.throttles["tasks_ready"] = tasks_ready_throttle or local_throttle(
            max(2, tasks_ready_rate), 60.0, burst=1, concurrency=1
        )
        await _tasks_ready(client, ledger.engine, missing, found, report)
    verdicts = list(found.values())
    for line, _, _, _ in ripe:
        if line not in found:
            verdicts.append(
                Receipt(
                    line=line,
                    state="pending",
                    reason="not found on the service by reconcile: the next submit sends it",
                )
            )
    for line, _, _, batch in blind:
        if line not in found:
            report.unsearchable += 1
            verdicts.append(
                Receipt(line=line, state="unknown", reason=_blind_reason(sent_at[batch], reach))
            )
    ledger.resolve(verdicts)
    report.found = len(found)
    report.not_found = len(ripe) - len([u for u in ripe if u.line in found])
    return report


def _blind_reason(sent: float, reach: float) -> str:
    if sent < reach + DEFAULT_SKEW_S:
        return (
            f"sent {_fmt(sent)}: id_list keeps the tags of the last month only, so reconcile "
            "cannot tell whether it was created; still unknown (resend it with "
            "--resend-unknown only if paying twice is acceptable)"
        )
    return (
        f"sent {_fmt(sent)}, which the service's clock has not reached yet: id_list cannot "
        "search that window; still unknown, run reconcile again later"
    )


async def service_clock(transport: BaseTransport, skew_s: float) -> tuple[float, str]:
    """The service's "now": the ``Date`` header of a free call's reply. Without one, our own
    clock less ``skew_s`` (the most the clocks are assumed to disagree): never in its future."""
    answer = await AccountClient(transport, policy=_BACKOFF).call(
        Request("other", "GET", CLOCK_PATH, idempotent=True),
        attempts=_CLOCK_TRIES,
        # Any reply with a Date will do; an answer without one would come back the same.
        again=lambda reply, _: reply.kind not in ("ok", "auth") and reply.server_time is None,
    )
    reply = answer.reply
    assert reply is not None  # nothing stops this call
    if reply.kind == "auth":
        raise AuthError(f"the service refused the credentials ({reply.message})")
    if reply.server_time is not None:
        return reply.server_time, "the service's Date header"
    log.warning(
        "the service's reply had no Date header: taking our clock less %.0f s as its now", skew_s
    )
    return time.time() - skew_s, f"the local clock less {skew_s:.0f} s"


def _match(
    item: IdListItem,
    engine: str,
    by_tag: dict[str | None, list[tuple[int, bytes | None]]],
    found: dict[int, Receipt],
    report: ReconcileReport,
) -> None:
    meta = item.metadata or _NO_METADATA
    if f"/{engine}/" not in item.url:
        return
    candidates = by_tag.get(meta.tag)
    if not candidates:
        return
    digest = prompt_digest(meta.user_prompt or "")
    task_id = item.id
    matching = [line for line, want in candidates if want is None or want == digest]
    if any(found[line].task_id == task_id for line in matching if line in found):
        return  # the same item seen twice (overlapping pages)
    for line in matching:
        if line not in found:
            found[line] = Receipt(
                line=line,
                state="created",
                task_id=task_id,
                status_code=20100,
                status_message="Task Created.",
                cost=item.cost_usd,
                reason="found on the service by reconcile",
            )
            return
    if matching:
        # One more task than lines with this tag and prompt: an earlier resend created it twice.
        report.duplicates += 1


async def _tasks_ready(
    client: AccountClient,
    engine: str,
    missing: list[LineRef],
    found: dict[int, Receipt],
    report: ReconcileReport,
) -> None:
    """A second look for what id_list did not list (its metadata is kept a month): finished,
    uncollected tasks are in tasks_ready with their tag. Only a tag that names exactly one
    unknown line identifies it (tasks_ready has no prompt to compare)."""
    lines_by_tag: dict[str, list[int]] = {}
    for line, tag, _, _ in missing:
        if tag is not None:
            lines_by_tag.setdefault(tag, []).append(line)

    async def failed(reply: Reply, attempt: int) -> None:
        log.info("tasks_ready failed (%s), attempt %d", reply.message, attempt)

    answer = await client.call(
        Request(
            "tasks_ready",
            "GET",
            f"/v3/ai_optimization/{engine}/llm_responses/tasks_ready",
            idempotent=True,
        ),
        # A read: asking again can never create or cost anything (a lost reply included);
        # refused credentials are not asked again here, whatever came before.
        again=lambda reply, default: default and reply.kind != "auth",
        on_retry=failed,
    )
    report.calls += answer.attempts
    reply = answer.reply
    assert reply is not None  # nothing stops this call
    if reply.kind != "ok":
        log.info("tasks_ready not available for reconcile (%s)", reply.message)
        return
    page = ready_items(reply.body)
    if page is None:
        log.info("tasks_ready answered something unreadable; not used by reconcile")
        return
    items, _ = page
    for item in items:
        lines = lines_by_tag.get(item.tag) if item.tag is not None else None
        if lines is not None and len(lines) == 1 and lines[0] not in found:
            found[lines[0]] = Receipt(
                line=lines[0],
                state="created",
                task_id=item.id,
                status_code=20100,
                status_message="Task Created.",
                reason="found in tasks_ready by reconcile",
            )


async def _page(
    client: AccountClient, lo: float, hi: float, offset: int, report: ReconcileReport
) -> list[IdListItem]:
    body = orjson.dumps(
        [
            {
                "datetime_from": _fmt(lo),
                # Whole seconds, rounded down: never past the service's now.
                "datetime_to": _fmt(hi),
                "limit": PAGE,
                "offset": offset,
                "sort": "asc",
                "include_metadata": True,
            }
        ]
    )
    pages: list[list[IdListItem]] = []

    def again(reply: Reply, _: bool) -> bool:
        # id_list is a free read: anything but an answer (or refused credentials) is asked
        # again, a refusal of the query itself (task level) included.
        if reply.kind == "auth":
            return False
        items = id_list_items(reply.body) if reply.kind == "ok" else None
        if items is None:
            return True
        pages.append(items)
        return False

    async def failed(reply: Reply, attempt: int) -> None:
        log.info("id_list failed (%s), attempt %d", _reason(reply), attempt)

    # 40202 (or 429) from id_list slows every later id_list call down (its throttle).
    answer = await client.call(
        Request("id_list", "POST", ID_LIST_PATH, body, idempotent=True),
        again=again,
        on_retry=failed,
    )
    report.calls += answer.attempts
    reply = answer.reply
    assert reply is not None  # nothing stops this call
    if reply.kind == "auth":
        raise AuthError(f"the service refused the credentials ({reply.message})")
    if pages:
        return pages[-1]
    raise ServiceError(
        f"id_list kept failing ({_reason(reply)}); nothing was changed, try again later"
    )


def _reason(reply: Reply) -> str:
    if reply.kind != "ok" or reply.envelope is None:
        return reply.message
    tasks = reply.envelope.tasks or []
    return f"{tasks[0].status_code} {tasks[0].status_message}" if tasks else "no task"
