"""One way a task is judged: the same bad task gets the same field and reason whether it is a
line of a JSONL file given to ``llmtasks submit`` or a dict or ``Task`` given to
``Submitter.submit`` in Python (both end in ``_decode.decode_record``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from llmtasks import Submitter, Task
from llmtasks.emulator import Emulator
from tests.conftest import read_jsonl, run_cli

M = "gpt-4.1-mini"
REASONING = "o3-mini"

# (task as given in Python, whether it must be refused and for which field)
CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"user_prompt": "ok", "model_name": M}, None),
    ({"user_prompt": "typo", "model_name": M, "temprature": 1}, "temprature"),
    (
        {
            "user_prompt": "nested",
            "model_name": M,
            "message_chain": [{"role": "user", "message": "m", "mesage": "x"}],
        },
        "message_chain[0].mesage",
    ),
    ({"user_prompt": 5, "model_name": M}, "user_prompt"),
    ({"user_prompt": "type", "model_name": M, "max_output_tokens": "512"}, "max_output_tokens"),
    ({"user_prompt": "type", "model_name": M, "web_search": "yes"}, "web_search"),
    ({"user_prompt": "x" * 501, "model_name": M}, "user_prompt"),
    ({"user_prompt": "range", "model_name": M, "max_output_tokens": 9999}, "max_output_tokens"),
    ({"user_prompt": "rule", "model_name": M, "max_output_tokens": 8}, "max_output_tokens"),
    (
        {"user_prompt": "rule", "model_name": REASONING, "max_output_tokens": 512},
        "max_output_tokens",
    ),
    ({"user_prompt": "rule", "model_name": M, "temperature": 2.5}, "temperature"),
    ({"user_prompt": "rule", "model_name": M, "use_reasoning": True}, "use_reasoning"),
    ({"user_prompt": "rule", "model_name": M, "force_web_search": True}, "force_web_search"),
    ({"model_name": M}, "user_prompt"),
    ({"user_prompt": "", "model_name": M}, "user_prompt"),
    WHOLE := ({"user_prompt": "whole", "model_name": M, "max_output_tokens": 512.0}, None),
    ({"user_prompt": "fraction", "model_name": M, "max_output_tokens": 512.5}, "max_output_tokens"),
    (
        {
            "user_prompt": "chain",
            "model_name": M,
            "message_chain": [{"role": "bot", "message": "m"}],
        },
        "message_chain[0].role",
    ),
    ({"user_prompt": "routed", "model_name": M, "engine": "claude"}, "engine"),
    ({"user_prompt": "routed here", "model_name": M, "engine": "chat_gpt"}, None),
]


def _file_outcomes(emulator: Any, tmp_path: Path, extra_lines: list[bytes]) -> list[dict[str, Any]]:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t, _ in CASES) + b"".join(extra_lines))
    result = run_cli("submit", str(src), "--base-url", emu.url)
    assert result.returncode == 1, result.stderr  # some lines were rejected
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in receipts] == list(range(1, len(CASES) + len(extra_lines) + 1))
    # 512.0 is sent as the integer 512 (the service's type), not as a float.
    whole = [t["data"]["max_output_tokens"] for t in emu.created() if t["user_prompt"] == "whole"]
    assert [(w, type(w)) for w in whole] == [(512, int)] * (len(whole) > 0)
    return receipts


async def _python_outcomes(tasks: list[Any]) -> list[dict[str, Any]]:
    async with Emulator() as emu:
        async with Submitter(login="login", password="password", base_url=emu.base_url) as sub:
            receipts = sorted([r async for r in sub.submit(tasks)], key=lambda r: r.line)
        whole = [t.data["max_output_tokens"] for t in emu.created if t.user_prompt == "whole"]
        assert [(w, type(w)) for w in whole] == [(512, int)] * (len(whole) > 0)
    assert [r.line for r in receipts] == list(range(1, len(tasks) + 1))
    return [{"state": r.state, "field": r.field, "reason": r.reason} for r in receipts]


async def test_a_bad_task_is_worded_the_same_from_a_file_and_from_python(
    emulator: Any, tmp_path: Path
) -> None:
    twice = b'{"user_prompt": "a", "model_name": "%s", "user_prompt": "b"}\n' % M.encode()
    from_file = _file_outcomes(emulator, tmp_path, [twice])
    assert from_file[CASES.index(WHOLE)]["state"] == "created"
    # A dict cannot hold a key twice: the file alone can say the same field twice.
    assert from_file[-1]["state"] == "rejected" and from_file[-1]["field"] == "user_prompt"
    assert "given twice" in from_file[-1]["reason"]
    as_dicts = await _python_outcomes([t for t, _ in CASES])
    # The same tasks as Task structs, where a Task can hold them (no unknown field or engine).
    structs = [Task(**t) if set(t) <= set(Task.__struct_fields__) else t for t, _ in CASES]
    as_structs = await _python_outcomes(structs)
    for i, (task, field) in enumerate(CASES):
        f, d, s = from_file[i], as_dicts[i], as_structs[i]
        want = "created" if field is None else "rejected"
        assert f["state"] == d["state"] == s["state"] == want, (task, f, d, s)
        if field is not None:
            assert f["field"] == d["field"] == s["field"] == field, (task, f, d, s)
            assert f["reason"] == d["reason"] == s["reason"], (task, f, d, s)
            assert f["reason"], task


async def test_a_missing_model_says_how_to_give_one_in_each_interface(
    emulator: Any, tmp_path: Path
) -> None:
    [from_file] = [
        r
        for r in _file_outcomes(emulator, tmp_path, [b'{"user_prompt": "no model"}\n'])
        if r["line"] == len(CASES) + 1
    ]
    [from_python] = await _python_outcomes([{"user_prompt": "no model"}])
    assert from_file["field"] == from_python["field"] == "model_name"
    assert from_file["reason"] == "is required (set model_name in the input or give --model)"
    assert from_python["reason"] == "is required (set model_name in the task or give default_model)"
