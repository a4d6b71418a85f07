"""Resume and input verification, in-process: the ledger is what makes a rerun safe.

The design (../shared/design.md): re-running the same command resumes, skipping every line
already in a final state; a line the service may have created (``unknown``) is never resent
silently; if the input changed under a ledger, the run is refused with a clear message; one
submit per ledger at a time. These run ``Submitter`` against the in-process emulator (the
CLI tests run the same in subprocesses, which mutation testing cannot see into).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from llmtasks import ConfigError, FundsError, InputError, Receipt, Submitter
from llmtasks._ledger import Ledger
from llmtasks.emulator import DEFAULT_LOGIN, DEFAULT_PASSWORD, Emulator, EmulatorConfig


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=5)) as e:
        yield e


def _prompts(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    return [{"user_prompt": f"{prefix}{i}", "model_name": "gpt-4o"} for i in range(n)]


async def _submit(
    emu: Emulator, path: Path, tasks: Iterable[dict[str, Any]], **kw: Any
) -> tuple[list[Receipt], Submitter]:
    async with Submitter(
        login=DEFAULT_LOGIN,
        password=DEFAULT_PASSWORD,
        base_url=emu.base_url,
        ledger=str(path),
        batch_size=kw.pop("batch_size", 4),
        **kw,
    ) as sub:
        receipts = [r async for r in sub.submit(list(tasks))]
    return receipts, sub


def _ledger_states(path: Path) -> dict[int, str]:
    ledger = Ledger.open_existing(path)
    try:
        return {r.line: r.state for r in ledger.receipts()}
    finally:
        ledger.close()


async def test_a_rerun_sends_nothing_already_done(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    first, _ = await _submit(emu, path, _prompts(10))
    assert Counter(r.state for r in first) == {"created": 10} and len(emu.created) == 10
    again, sub = await _submit(emu, path, _prompts(10))
    assert len(emu.created) == 10  # nothing sent twice
    assert sub.stats.already_done == 10 and sub.stats.calls == 0
    # Lines done before get no new receipt: theirs are in the ledger, unchanged.
    assert again == []
    ledger = Ledger.open_existing(path)
    try:
        assert sorted(ledger.receipts(), key=lambda r: r.line) == sorted(
            first, key=lambda r: r.line
        )
    finally:
        ledger.close()


async def test_a_stopped_run_is_finished_by_the_next_one_line_by_line(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    emu.reconfigure(funds_usd=0.05)  # about 4 tasks, then 40210
    with pytest.raises(FundsError):
        await _submit(emu, path, _prompts(12), concurrency=1)
    states = Counter(_ledger_states(path).values())
    assert states["created"] == len(emu.created) and states["pending"] == 12 - len(emu.created)
    emu.reconfigure(funds_usd=100.0)
    _, sub = await _submit(emu, path, _prompts(12), concurrency=1)
    assert sub.stats.already_done == 12 - states["pending"]
    assert Counter(_ledger_states(path).values()) == {"created": 12}
    # Every prompt created exactly once over the two runs.
    prompts = Counter(t.user_prompt for t in emu.created)
    assert prompts == Counter(f"p{i}" for i in range(12))


async def test_a_changed_line_refuses_the_run_naming_the_line_and_the_ledger(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _submit(emu, path, _prompts(6))
    changed = _prompts(6)
    changed[3] = {"user_prompt": "something else", "model_name": "gpt-4o"}
    with pytest.raises(InputError) as info:
        await _submit(emu, path, changed)
    message = str(info.value)
    assert "line 4 is not the line recorded in ledger" in message and str(path) in message
    assert "the input changed since that run" in message
    assert len(emu.created) == 6  # nothing sent


async def test_a_changed_rejected_line_is_a_changed_input_too(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    tasks = _prompts(3)
    tasks[1] = {"user_prompt": "x" * 501, "model_name": "gpt-4o"}
    first, _ = await _submit(emu, path, tasks)
    assert [r.state for r in sorted(first, key=lambda r: r.line)] == [
        "created",
        "rejected",
        "created",
    ]
    _, sub = await _submit(emu, path, tasks)  # the same input: the rejection stands
    assert sub.stats.already_done == 3 and len(emu.created) == 2
    tasks[1] = {"user_prompt": "fixed", "model_name": "gpt-4o"}
    with pytest.raises(InputError, match="line 2 is not the line recorded"):
        await _submit(emu, path, tasks)


async def test_lines_added_at_the_end_are_sent_the_rest_skipped(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "run.sqlite"
    await _submit(emu, path, _prompts(5))
    _, sub = await _submit(emu, path, _prompts(8))
    assert sub.stats.already_done == 5
    assert Counter(t.user_prompt for t in emu.created) == Counter(f"p{i}" for i in range(8))
    assert Counter(_ledger_states(path).values()) == {"created": 8}


async def test_lost_replies_are_never_resent_unless_asked(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    emu.reconfigure(drop_rate=1.0)
    first, _ = await _submit(emu, path, _prompts(4), max_attempts=1)
    assert {r.state for r in first} == {"unknown"}
    created = len(emu.created)
    emu.reconfigure(drop_rate=0.0)
    _, sub = await _submit(emu, path, _prompts(4))
    assert len(emu.created) == created and sub.stats.calls == 0
    assert set(_ledger_states(path).values()) == {"unknown"}
    # Asked for explicitly: sent again (and charged again, as the user accepted).
    again, _ = await _submit(emu, path, _prompts(4), resend_unknown=True)
    assert len(emu.created) == created + 4
    assert {r.state for r in again} == {"created"}
    assert set(_ledger_states(path).values()) == {"created"}


async def test_one_submit_per_ledger_at_a_time(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    holder = Ledger.open(path)
    holder.lock()
    try:
        with pytest.raises(ConfigError, match="is in use by another submit"):
            await _submit(emu, path, _prompts(2))
    finally:
        holder.close()
    receipts, _ = await _submit(emu, path, _prompts(2))  # free again once closed
    assert {r.state for r in receipts} == {"created"}


async def test_a_ledger_of_another_engine_or_file_is_refused(emu: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    await _submit(emu, path, _prompts(2))
    with pytest.raises((ConfigError, InputError)):
        await _submit(emu, path, _prompts(2), engine="claude")
    not_a_ledger = tmp_path / "notes.sqlite"
    not_a_ledger.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match="not a usable llmtasks ledger"):
        await _submit(emu, not_a_ledger, _prompts(1))
    with pytest.raises(InputError, match="no such ledger"):
        Ledger.open_existing(tmp_path / "missing.sqlite")
