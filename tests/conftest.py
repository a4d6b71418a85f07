"""Shared fixtures: a real emulator process on 127.0.0.1 and the real CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

# Distinctive, so that tests can grep every output for them.
LOGIN = "test-login-7f3a"
PASSWORD = "pw-9c1e-never-print-me"


class EmulatorProcess:
    """``python -m llmtasks emulate --port 0`` in a subprocess, inspected over HTTP."""

    def __init__(self, *args: str) -> None:
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
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.kill()
            raise RuntimeError(f"emulator did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
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
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


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
    return subprocess.run(
        [sys.executable, "-m", "llmtasks", *args],
        env=cli_env() if env is None else env,
        cwd=cwd,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
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
