"""reconcile's id_list windows: never past the service's now, never beyond its month."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from llmtasks._ledger import Ledger
from llmtasks._reconcile import ID_LIST_PATH, reconcile
from llmtasks._transport import Reply, Transport
from tests.conftest import LOGIN, PASSWORD, run_cli, write_prompts


class RecordingTransport(Transport):
    """The real transport, keeping each id_list body it sent and the reply's Date."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.id_lists: list[tuple[dict[str, Any], Reply]] = []

    async def post(self, path: str, body: bytes) -> Reply:
        reply = await super().post(path, body)
        if path == ID_LIST_PATH:
            self.id_lists.append((orjson.loads(body)[0], reply))
        return reply


def _parse(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z").astimezone(UTC).timestamp()


def _lost_replies_run(emulator: Any, tmp_path: Path, *extra: str) -> tuple[Any, Path]:
    emu = emulator("--drop-rate", "1.0", "--id-list-rate", "600", *extra)
    src = tmp_path / "in.jsonl"
    write_prompts(src, 6)
    ledger = tmp_path / "run.sqlite"
    args = ("--base-url", emu.url, "--ledger", str(ledger), "--batch-size", "3")
    assert run_cli("submit", str(src), *args).returncode == 1
    emu.set_config(drop_rate=0.0)
    return emu, ledger


async def test_datetime_to_is_never_past_the_services_date(emulator: Any, tmp_path: Path) -> None:
    emu, path = _lost_replies_run(emulator, tmp_path)
    ledger = Ledger.open_existing(path)
    try:
        async with RecordingTransport(base_url=emu.url, login=LOGIN, password=PASSWORD) as t:
            report = await reconcile(ledger, t, min_age_s=0)
        states = Counter(r.state for r in ledger.receipts())
    finally:
        ledger.close()
    assert report.found == 6 and states == {"created": 6}
    assert report.clock == "the service's Date header"
    assert t.id_lists
    for query, reply in t.id_lists:
        assert reply.server_time is not None
        # The Date of the reply is at least the service's now when the query arrived.
        assert _parse(query["datetime_to"]) <= reply.server_time
        assert query["include_metadata"] is True


def test_lines_older_than_the_metadata_month_stay_unknown(emulator: Any, tmp_path: Path) -> None:
    # The tasks are still running, so tasks_ready cannot show them either.
    emu, ledger = _lost_replies_run(emulator, tmp_path, "--completion-delay", "3600")
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE batches SET sent_at = sent_at - 40 * 86400")
    r = run_cli("reconcile", "--ledger", str(ledger), "--base-url", emu.url, "--min-age", "0")
    assert r.returncode == 1 and "6 unknown lines could not be looked up" in r.stderr
    led = Ledger.open_existing(ledger)
    try:
        receipts = list(led.receipts())
    finally:
        led.close()
    # Not found where nobody could look is no evidence: unknown, never pending (a resend).
    assert [x.state for x in receipts] == ["unknown"] * 6
    for x in receipts:
        assert x.reason is not None and "last month only" in x.reason
    id_lists = [c for c in emu.calls() if c["path"] == ID_LIST_PATH]
    assert id_lists == []  # no window id_list cannot search was asked for
