"""The README's commands are the ones CI runs, and its examples work as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _console_commands(text: str) -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [
        line[2:].split("  #")[0].strip()
        for b in blocks
        for line in b.splitlines()
        if line.startswith("$ ")
    ]


def test_ci_runs_the_readme_test_command() -> None:
    commands = _console_commands(README)
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, "README test command and .ci/run have drifted apart"
    assert "set -euo pipefail" in ci


def test_readme_demo_command_works(tmp_path: Path) -> None:
    demo = _console_commands(README)[0]
    assert demo.startswith("pip install . && ")
    run = demo.removeprefix("pip install . && ").replace("python", sys.executable, 1)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in cli_env().items() if not k.startswith("DATAFORSEO_")}
    result = subprocess.run(
        run, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    n_lines = len((ROOT / "examples" / "prompts.jsonl").read_text().splitlines())
    assert f"{n_lines} created" in result.stderr
    receipts = read_jsonl(tmp_path / "examples" / "prompts.jsonl.receipts.jsonl")
    assert len(receipts) == n_lines


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README, flags=re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("1 created ") and out[1].startswith("2 created ")
    assert out[2] == "1 calls"
