"""The library surface: ``Submitter`` inside the caller's own event loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmtasks import FundsError, Receipt, Submitter, Task
from llmtasks._ledger import Ledger
from llmtasks._transport import MemoryTransport
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
            # Every call that left got its reply recorded: no batch is still marked as in
            # flight (the next run would take its lines for unknown), no line is unknown.
            in_flight = ledger.batches_sending()
        finally:
            ledger.close()
        assert in_flight == 0 and "unknown" not in counts
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


def test_a_rule_error_is_an_llmtasks_error_and_still_a_value_error() -> None:
    """Every error users can see is an LlmtasksError; code that caught ValueError still does."""
    from llmtasks import LlmtasksError
    from llmtasks._errors import TaskRuleError
    from llmtasks._rules import TaskRules

    bad = Task(user_prompt="a", model_name="gpt-4o", max_output_tokens=8)
    for kind in (LlmtasksError, ValueError, TaskRuleError):
        with pytest.raises(kind) as caught:
            TaskRules("chat_gpt").check(bad)
    assert caught.value.field == "max_output_tokens"
    assert caught.value.exit_code == 2


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
    # Without a transport of its own to give, a Submitter needs both; empty ones are a
    # choice (an emulator's), and a transport given needs neither.
    for kw in ({}, {"login": "a"}, {"password": "b"}):
        with pytest.raises(ConfigError) as info:
            Submitter(**kw)  # type: ignore[arg-type]
        assert str(info.value) == "login and password are required unless a transport is given"
    assert Submitter(login="", password="").transport.base_url == "https://api.dataforseo.com"
    assert Submitter(transport=MemoryTransport([])).transport.base_url == "memory:"


def test_the_lock_file_goes_with_the_lock_and_a_stale_handle_cannot_take_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    from llmtasks import ConfigError
    from llmtasks import _ledger as ledger_module

    path = tmp_path / "run.sqlite"
    lock = tmp_path / "run.sqlite.lock"
    first = Ledger.open(path)
    first.lock()
    assert lock.read_text() == f"pid {__import__('os').getpid()}"
    # The race: a second process opens the lock file, then the first one ends (removing the
    # file and letting go) before the second one takes the lock on what it opened.
    second = Ledger.open(path)
    real_open = builtins.open
    opened: list[str] = []

    def open_then_first_ends(file: str, *args: object, **kw: object) -> object:
        f = real_open(file, *args, **kw)  # type: ignore[call-overload]
        opened.append(file)
        if len(opened) == 1:
            first.close()
        return f

    monkeypatch.setattr(ledger_module, "open", open_then_first_ends, raising=False)
    second.lock()
    monkeypatch.undo()
    assert len(opened) == 2  # the lock on the removed file was let go; the path was opened again
    assert lock.exists()
    third = Ledger.open(path)
    with pytest.raises(ConfigError, match="in use by another submit"):
        third.lock()
    third.close()
    assert lock.exists()  # a refused submit leaves the holder's file alone
    second.close()
    assert not lock.exists()


async def test_whole_number_floats_are_sent_as_integers() -> None:
    async with Emulator() as emu:
        tasks: list[object] = [
            {"user_prompt": "dict", "model_name": "gpt-4o", "max_output_tokens": 512.0},
            Task(user_prompt="struct", model_name="gpt-4o", max_output_tokens=512.0),  # type: ignore[arg-type]
            {"user_prompt": "half", "model_name": "gpt-4o", "max_output_tokens": 512.5},
        ]
        async with _submitter(emu) as sub:
            receipts = {r.line: r for r in [r async for r in sub.submit(tasks)]}  # type: ignore[arg-type]
        assert [receipts[i].state for i in (1, 2, 3)] == ["created", "created", "rejected"]
        assert receipts[3].field == "max_output_tokens"
        sent = [t.data["max_output_tokens"] for t in emu.created]
        assert sent == [512, 512] and all(type(v) is int for v in sent)
