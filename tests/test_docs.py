"""The docs cannot drift: docs/cli.md is the real ``--help`` output, and every command shown
in the README and docs runs, in order, against an emulator.

Regenerate docs/cli.md with ``python tests/test_docs.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import LOGIN, PASSWORD, RedisServer, require

ROOT = Path(__file__).resolve().parent.parent
# The Redis the docs' examples name; the test puts its own loopback redis-server in its place.
DOC_REDIS = "redis://127.0.0.1:6379"
COMMANDS = (
    "submit",
    "reconcile",
    "collect",
    "models",
    "receive",
    "status",
    "export",
    "report",
    "emulate",
)


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("LLMTASKS_BASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "llmtasks", *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return out.replace("python -m llmtasks", "llmtasks")


def render_cli_reference() -> str:
    parts = [
        "# Command line reference\n",
        "Generated from the real `--help` output (`python tests/test_docs.py`); a test fails",
        "when it drifts. `python -m llmtasks` and the `llmtasks` command are the same.\n",
        "```text",
        _help().rstrip(),
        "```\n",
    ]
    for cmd in COMMANDS:
        parts += [f"## llmtasks {cmd}\n", "```text", _help(cmd).rstrip(), "```\n"]
    return "\n".join(parts)


def test_cli_reference_matches_the_real_help() -> None:
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == render_cli_reference(), "docs/cli.md is stale: run python tests/test_docs.py"


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(text: str) -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:] for b in blocks for line in b.splitlines() if line.startswith("$ ")]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_every_documented_command_runs(
    doc: Path, emulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Run each ``$ command`` of a document in one shell session, against an emulator.

    The environment points the commands at the emulator (LLMTASKS_BASE_URL and its
    credentials), ``prompts.jsonl`` is the example input and has been submitted once, and
    servers run on a free port for a few seconds. A document that names the Redis of its
    examples (``redis://127.0.0.1:6379``) gets a redis-server of its own on a free loopback
    port in its place, and the test checks that the commands used it.
    """
    commands = _commands(doc.read_text())
    if not commands:
        pytest.skip("no commands")
    # Never let a documented command reach past this machine: a runnable example that names a
    # service must name loopback (the others belong in ```sh blocks, which are not run).
    for cmd in commands:
        cmd = cmd.split("  #")[0]
        for url in re.findall(r"(?:--base-url|--limiter|LLMTASKS_LIMITER)[ =](\S+)", cmd):
            host = urlsplit(url.strip("'\"")).hostname or ""
            assert host in ("127.0.0.1", "localhost", "::1"), f"{doc.name}: {cmd}"
    redis = None
    if any(DOC_REDIS in cmd for cmd in commands):
        require("redis-server")
        redis = RedisServer(tmp_path)
        request.addfinalizer(redis.stop)
    emu = emulator("--login", LOGIN, "--password", PASSWORD, "--completion-delay", "0.2")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copy(ROOT / "examples" / "prompts.jsonl", tmp_path / "prompts.jsonl")
    # Commands that read a ledger assume a run of prompts.jsonl happened: it has.
    script = ["set -e", "python -m llmtasks submit prompts.jsonl --quiet"]
    for cmd in commands:
        cmd = cmd.split("  #")[0].strip()
        if "pytest" in cmd or "benchmarks/" in cmd or "[bench]" in cmd:
            continue  # the suite itself, and benchmarks (tests/test_benchmarks_smoke.py)
        if cmd.startswith("export DATAFORSEO_"):
            continue  # the environment below has the emulator's credentials
        if cmd.startswith("pip install "):
            continue  # installed already, extras included; and no index is reachable here
        if " emulate " in cmd and cmd.endswith("&"):
            continue  # the test's own emulator plays this one, at LLMTASKS_BASE_URL
        if "| jq" in cmd and shutil.which("jq") is None:
            cmd = cmd.split("| jq")[0]
        cmd = cmd.replace("pip install . && ", "").replace("pip install -e '.[test]' && ", "")
        cmd = cmd.replace("http://127.0.0.1:8765", emu.url).replace("0.0.0.0", "127.0.0.1")
        if redis is not None:
            cmd = cmd.replace(DOC_REDIS, redis.url.removesuffix("/0"))
        if cmd == "wait":
            # A bare ``wait`` succeeds whatever its jobs did: wait for each, so that set -e
            # fails the run when one of them failed.
            cmd = 'for job in $(jobs -p); do wait "$job"; done'

        if " emulate " in cmd or " receive " in cmd:
            # Servers in the foreground: on a free port, stopped after a few seconds.
            cmd = re.sub(r"--port \d+", "--port 0", cmd)
            cmd = f"timeout -s INT 3 {cmd} || test $? -eq 124"
        script.append(cmd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAFORSEO_", "LLMTASKS_"))}
    env.update(
        DATAFORSEO_LOGIN=LOGIN,
        DATAFORSEO_PASSWORD=PASSWORD,
        LLMTASKS_BASE_URL=emu.url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{shlex.join(script)}\n{result.stdout}\n{result.stderr}"
    if redis is not None:
        # The examples went through the shared limiter: it logged their calls in Redis.
        import redis as redis_client

        with redis_client.Redis.from_url(redis.url) as db:
            logs = [key for key in db.keys("llmtasks:*") if key.endswith(b":log")]
            assert logs and db.zcard(logs[0]) > 0, db.keys("*")


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render_cli_reference())
    print("wrote docs/cli.md")
