"""Progress as users see it: a live bar in a real pseudo-terminal, plain lines in a pipe."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, run_cli, write_prompts


def _run_in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on a pty, as in an interactive shell."""
    leader, follower = pty.openpty()
    env = cli_env(COLUMNS="160", LINES="40", TERM="xterm-256color")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtasks", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=cwd,
        close_fds=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_live_bar_on_a_terminal(emulator, tmp_path: Path) -> None:
    emu = emulator("--latency-ms", "150")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 120)
    code, screen = _run_in_terminal(
        ["submit", str(src), "--base-url", emu.url, "--batch-size", "5", "--concurrency", "2"],
        tmp_path,
    )
    assert code == 0, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "\x1b[" in screen  # drawn with terminal control sequences, redrawn in place
    assert "━" in plain  # the bar
    assert "120/120 lines" in plain
    assert "120 created 0 rejected 0 failed 0 unknown" in plain
    assert "in the last 60 s" not in plain  # the run is shorter than one window
    assert re.search(r"\b\d+ calls? so far in [0-9.]+ s, limit 2,000 per 60 s", plain)
    assert "ETA" in plain and "calls/min" not in plain
    assert "/120 lines" in plain.split("120/120 lines")[0]  # it was drawn before the end too


def test_plain_progress_lines_when_not_a_terminal(emulator, tmp_path: Path) -> None:
    emu = emulator("--latency-ms", "100")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 60)
    r = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--batch-size",
        "5",
        "--concurrency",
        "1",
        "--progress-interval",
        "0.3",
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("llmtasks: progress: ")]
    assert len(lines) >= 2
    assert "\x1b[" not in r.stderr
    done = [int(x.split("progress: ")[1].split("/")[0]) for x in lines]
    assert done == sorted(done) and 0 < done[-1] <= 60
    assert "60 created" in r.stderr.splitlines()[-3]  # then the summary
    quiet = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--quiet",
        "--ledger",
        str(tmp_path / "q.sqlite"),
        "--progress-interval",
        "0.1",
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
