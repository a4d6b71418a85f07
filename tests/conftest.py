"""Shared fixtures: a real emulator process on 127.0.0.1 and the real CLI as a subprocess."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

# Distinctive, so that tests can grep every output for them.
LOGIN = "test-login-7f3a"
PASSWORD = "pw-9c1e-never-print-me"
# The receiver's shared secret (LLMTASKS_RECEIVE_SECRET) must not leak either.
RECEIVE_SECRET = "rs-5e8d-never-log-me-either"
SECRETS = (PASSWORD, base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode(), RECEIVE_SECRET)

# Everything the CLI printed in this session; scanned for SECRETS when the session ends.
_OUTPUTS: list[str] = []
_TMP_BASES: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_tmp_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    _TMP_BASES.append(tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No credential in any output, log, ledger, receipt or file of the whole suite."""
    leaks = [f"CLI output: {text[:200]!r}" for text in _OUTPUTS if any(s in text for s in SECRETS)]
    for base in _TMP_BASES:
        for path in base.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                if any(s.encode() in data for s in SECRETS):
                    leaks.append(str(path))
    if leaks:
        print("\nCREDENTIAL LEAK: a test secret appeared in:\n  " + "\n  ".join(leaks))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class EmulatorProcess:
    """``python -m llmtasks emulate --port 0`` in a subprocess, inspected over HTTP."""

    def __init__(self, *args: str) -> None:
        # A file, not a pipe: a pipe nobody reads would block a chatty emulator.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmtasks",
                "emulate",
                "--port",
                "0",
                "--login",
                LOGIN,
                "--password",
                PASSWORD,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r} {_OUTPUTS[-1]!r}")
        self.url = line.rsplit(" ", 1)[1].strip()

    def _get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as resp:  # loopback only
            return orjson.loads(resp.read())

    def created(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_emulator/created")
        return result

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_emulator/calls")
        return result

    def set_config(self, **changes: Any) -> None:
        import urllib.request

        req = urllib.request.Request(
            self.url + "/_emulator/config", data=orjson.dumps(changes), method="POST"
        )
        with urllib.request.urlopen(req, timeout=30):
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.seek(0)
        _OUTPUTS.append(self._stderr.read().decode("utf-8", "replace"))
        self._stderr.close()


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A factory: ``emu = emulator("--rate", "100", ...)``; every one is stopped afterwards."""
    started: list[EmulatorProcess] = []

    def start(*args: str) -> EmulatorProcess:
        emu = EmulatorProcess(*args)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAFORSEO_", "LLMTASKS_"))}
    env.update(DATAFORSEO_LOGIN=LOGIN, DATAFORSEO_PASSWORD=PASSWORD)
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "llmtasks", *args],
        env=cli_env() if env is None else env,
        cwd=cwd,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    _OUTPUTS.append(result.stdout + result.stderr)
    return result


def spawn_cli(
    *args: str, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.PIPE, text: bool = True
) -> subprocess.Popen[Any]:
    """The real command line in the background, for tests that signal or kill it."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmtasks", *args],
        env=cli_env(),
        stdout=stdout,
        stderr=stderr,
        text=text,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_prompts(
    path: Path, n: int, *, model: str | None = "gpt-4.1-mini", start: int = 0
) -> None:
    with path.open("wb") as f:
        for i in range(start, start + n):
            task: dict[str, Any] = {"user_prompt": f"prompt number {i}: which brands lead?"}
            if model:
                task["model_name"] = model
            f.write(orjson.dumps(task) + b"\n")
