"""The library surface: ``Submitter`` inside the caller's own event loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmtasks import FundsError, Ledger, Receipt, Submitter, Task
from llmtasks.emulator import Emulator, EmulatorConfig


def _submitter(emu: Emulator, **kw: object) -> Submitter:
    return Submitter(login="login", password="password", base_url=emu.base_url, **kw)  # type: ignore[arg-type]


async def test_one_receipt_per_task_from_sync_and_async_iterables() -> None:
    async with Emulator() as emu:
        tasks: list[object] = [
            {"user_prompt": f"p{i}", "model_name": "gpt-4.1-mini"} for i in range(250)
        ]
        tasks[10] = {"user_prompt": "x" * 501, "model_name": "gpt-4.1-mini"}
        tasks[20] = {"user_prompt": "y", "model_name": "gpt-4o", "max_output_tokens": 9999}
        tasks[40] = Task(user_prompt="a struct", model_name="gpt-4o", max_output_tokens=100)
        tasks[30] = {"user_prompt": "no model given"}
        async with _submitter(emu, batch_size=40) as sub:
            receipts = [r async for r in sub.submit(tasks)]  # type: ignore[arg-type]
        assert sorted(r.line for r in receipts) == list(range(1, 251))
        by_line = {r.line: r for r in receipts}
        assert by_line[11].state == "rejected" and by_line[11].field == "user_prompt"
        assert by_line[21].state == "rejected" and by_line[21].field == "max_output_tokens"
        assert by_line[31].state == "rejected" and by_line[31].field == "model_name"
        created = {r.task_id: r for r in receipts if r.state == "created"}
        assert len(created) == 247 == len(emu.created)
        for t in emu.created:
            assert created[t.id].tag == t.tag
        assert sub.stats.calls == 7  # ceil(247 / 40)

        async def agen() -> AsyncIterator[Task]:
            for i in range(5):
                yield Task(user_prompt=f"async {i}")

        async with _submitter(emu, default_model="claude-sonnet-4-0", engine="claude") as sub:
            more = [r async for r in sub.submit(agen())]
        assert [r.state for r in more] == ["created"] * 5
        assert {t.engine for t in emu.created[-5:]} == {"claude"}


async def test_stop_reason_is_raised_after_the_receipts() -> None:
    async with Emulator(EmulatorConfig(funds_usd=0.3)) as emu:
        got: list[Receipt] = []
        async with _submitter(emu, batch_size=10, concurrency=1) as sub:
            with pytest.raises(FundsError):
                async for r in sub.submit(
                    {"user_prompt": f"p{i}", "model_name": "gpt-4o"} for i in range(100)
                ):
                    got.append(r)
        states = Counter(r.state for r in got)
        assert states["created"] == len(emu.created) == 20
        assert states["created"] + states["pending"] == len(got)


async def test_leaving_the_loop_early_records_what_was_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "lib.sqlite"
    async with Emulator(EmulatorConfig(latency_ms=50)) as emu:
        async with _submitter(emu, batch_size=5, concurrency=3, ledger=str(path)) as sub:
            async for _ in sub.submit(
                {"user_prompt": f"p{i}", "model_name": "gpt-4o"} for i in range(500)
            ):
                break
        ledger = Ledger.open_existing(path)
        try:
            counts = ledger.counts()
        finally:
            ledger.close()
        assert "sending" not in counts and "unknown" not in counts
        assert counts["created"] == len(emu.created) > 0
        # A second pass with the same ledger sends exactly the rest.
        async with _submitter(emu, batch_size=50, ledger=str(path)) as sub:
            rest = [
                r
                async for r in sub.submit(
                    {"user_prompt": f"p{i}", "model_name": "gpt-4o"} for i in range(500)
                )
            ]
        assert len(emu.created) == 500
        assert len({t.tag for t in emu.created}) == 500
        assert all(r.state == "created" for r in rest)


def test_a_task_struct_is_checked_by_its_engines_rules() -> None:
    from llmtasks._rules import TaskRules
    from llmtasks._task import TaskRuleError

    task = Task(user_prompt="a", model_name="claude-sonnet-4", max_output_tokens=8)
    TaskRules("claude").check(task)  # 1..4096 on claude
    with pytest.raises(TaskRuleError, match="max_output_tokens"):
        TaskRules("chat_gpt").check(Task(user_prompt="a", model_name="gpt-4o", max_output_tokens=8))


def test_bad_configuration_is_refused_up_front() -> None:
    from llmtasks import ConfigError

    for kw in ({"batch_size": 101}, {"concurrency": 31}, {"engine": "perplexity"}, {"rate": 0}):
        with pytest.raises(ConfigError):
            Submitter(login="a", password="b", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="plain http"):
        Submitter(login="a", password="b", base_url="http://example.com")
    with pytest.raises(ConfigError) as info:
        Submitter(login="a", password="b", base_url="https://user:secret@example.com")
    assert "secret" not in str(info.value)
