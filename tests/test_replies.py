"""A task_post reply turned into receipts, as data: every kind of answer the service gives."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from llmtasks._receipt import Receipt
from llmtasks._replies import _field_of, post_receipts
from llmtasks._wire import Envelope

LINES = [4, 7, 9]
TAGS = ["t4", "t7", "t9"]


def env(tasks: list[dict[str, Any]] | None, **top: Any) -> Envelope:
    doc: dict[str, Any] = {"status_code": 20000, "status_message": "Ok.", **top}
    if tasks is not None:
        doc["tasks"] = tasks
    return msgspec.convert(doc, Envelope)


def task(tag: str | None, code: int = 20100, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"id-{tag}",
        "status_code": code,
        "status_message": kw.pop("message", "Task Created."),
        **kw,
    }
    if tag is not None:
        out["data"] = {"tag": tag}
    return out


def test_every_task_created_in_order() -> None:
    receipts, all_created, cost = post_receipts(
        LINES, TAGS, env([task(t, cost=0.25) for t in TAGS])
    )
    assert receipts == [
        Receipt(line, "created", tag, f"id-{tag}", 20100, "Task Created.", 0.25)
        for line, tag in zip(LINES, TAGS, strict=True)
    ]
    assert all_created is True and cost == 0.75


def test_a_task_without_its_tag_echoed_is_still_created() -> None:
    receipts, all_created, cost = post_receipts([1], ["a"], env([task(None)]))
    assert receipts == [Receipt(1, "created", "a", "id-None", 20100, "Task Created.")]
    assert all_created and cost == 0.0


def test_an_invalid_task_is_rejected_naming_its_field() -> None:
    bad = task("t7", 40501, message="Invalid Field: 'max_output_tokens'.", cost=0.0)
    receipts, all_created, _ = post_receipts(LINES, TAGS, env([task("t4"), bad, task("t9")]))
    assert receipts[1] == Receipt(
        line=7,
        state="rejected",
        tag="t7",
        task_id="id-t7",
        status_code=40501,
        status_message="Invalid Field: 'max_output_tokens'.",
        cost=0.0,
        field="max_output_tokens",
        reason="Invalid Field: 'max_output_tokens'.",
    )
    assert [r.state for r in receipts] == ["created", "rejected", "created"]
    assert all_created is False


@pytest.mark.parametrize(
    ("message", "field"),
    [("Invalid Field.", None), ("Invalid Field: 'x", None), ("Invalid: ''.", ""), ("'a'", "a")],
)
def test_the_field_is_what_the_message_quotes(message: str, field: str | None) -> None:
    (r,), _, _ = post_receipts([1], ["a"], env([task("a", 40503, message=message)]))
    assert r.state == "rejected" and r.field == field


def test_another_failure_is_failed_with_its_code() -> None:
    failed = task("t4", 40000, message="Something.", cost=0.1)
    (r,), all_created, cost = post_receipts([4], ["t4"], env([failed]))
    assert r == Receipt(
        line=4,
        state="failed",
        tag="t4",
        task_id="id-t4",
        status_code=40000,
        status_message="Something.",
        cost=0.1,
    )
    assert not all_created and cost == 0.0  # only created tasks' costs are summed


def test_a_reply_out_of_order_makes_the_line_unknown() -> None:
    receipts, all_created, _ = post_receipts(LINES, TAGS, env([task("t7"), task("t4"), task("t9")]))
    assert receipts[0] == Receipt(
        line=4,
        state="unknown",
        tag="t4",
        status_code=20100,
        status_message="Task Created.",
        reason="reply out of order (tag 't7' for line 4)",
    )
    assert [r.state for r in receipts] == ["unknown", "unknown", "created"]
    assert not all_created


def test_fewer_tasks_than_lines_leaves_the_rest_unknown() -> None:
    receipts, all_created, cost = post_receipts(LINES, TAGS, env([task("t4", cost=0.5)]))
    assert receipts[0].state == "created" and cost == 0.5
    assert receipts[1:] == [
        Receipt(
            line=line,
            state="unknown",
            tag=tag,
            reason="the service answered fewer tasks than were sent",
        )
        for line, tag in zip(LINES[1:], TAGS[1:], strict=True)
    ]
    assert not all_created


def test_a_call_refused_as_a_whole_fails_every_line_with_its_code() -> None:
    receipts, all_created, cost = post_receipts(
        LINES, TAGS, env(None, status_code=40006, status_message="Too many tasks.")
    )
    assert receipts == [
        Receipt(
            line=line, state="failed", tag=tag, status_code=40006, status_message="Too many tasks."
        )
        for line, tag in zip(LINES, TAGS, strict=True)
    ]
    assert not all_created and cost == 0.0


def test_an_empty_task_list_is_not_a_refusal() -> None:
    receipts, _, _ = post_receipts([1], ["a"], env([]))
    assert receipts[0].state == "unknown"


def test_the_field_is_the_first_quoted_name_of_the_message() -> None:
    assert _field_of("Invalid Field: 'tag'. Use 'user_prompt' instead.") == "tag"
    assert _field_of("Invalid Field: 'model_name'.") == "model_name"
    assert _field_of("one 'quote only") is None
    assert _field_of("no quote") is None
