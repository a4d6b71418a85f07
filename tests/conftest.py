"""Shared fixtures: a real emulator process on 127.0.0.1 and the real CLI as a subprocess."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

# pytest imports this file as ``conftest`` and the tests import it as ``tests.conftest``: one
# module object for both names, or what the tests record would go to a copy nobody scans.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# Distinctive, so that tests can grep every output for them.
LOGIN = "test-login-7f3a"
PASSWORD = "pw-9c1e-never-print-me"
# The receiver's shared secret (LLMTASKS_RECEIVE_SECRET) must not leak either.
RECEIVE_SECRET = "rs-5e8d-never-log-me-either"
SECRETS = (PASSWORD, base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode(), RECEIVE_SECRET)

# Everything the CLI printed in this session; scanned for SECRETS when the session ends.
_OUTPUTS: list[str] = []
_TMP_BASES: list[Path] = []
# Every byte every child process wrote to a pipe, /dev/null or the terminal: (command, bytes).
_STREAMS: list[tuple[str, bytearray]] = []


class _RecordedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` (and so ``subprocess.run``) for the whole session, with every
    stdout and stderr recorded for the credential scan, read by the test or not.

    A pipe is teed: the child writes to a pipe that a thread drains into ``_STREAMS`` and
    forwards to the pipe the test reads (the same file object as without the tee). Output
    sent to /dev/null or inherited goes to a pipe that the thread only drains. Outputs to a
    file or a terminal the test opened are the test's to hand to the scan (``_OUTPUTS``).
    """

    def __init__(self, args: Any, *rest: Any, **kw: Any) -> None:
        assert not rest, "pass Popen's options by keyword"
        discard = set()
        for name in ("stdout", "stderr"):
            if kw.get(name) in (None, subprocess.DEVNULL):
                kw[name] = subprocess.PIPE
                discard.add(name)
        super().__init__(args, **kw)
        command = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is None:
                continue
            sink = bytearray()
            _STREAMS.append((f"{name} of {command[:200]}", sink))
            fd = stream.fileno()
            child = os.dup(fd)  # the child's end, drained by the pump
            if name in discard:
                stream.close()
                setattr(self, name, None)
                forward = None
            else:
                read_end, forward = os.pipe()
                os.dup2(read_end, fd, inheritable=False)  # the test now reads the pump's copy
                os.close(read_end)
            threading.Thread(target=_pump, args=(child, forward, sink), daemon=True).start()


def _pump(child: int, forward: int | None, sink: bytearray) -> None:
    with os.fdopen(child, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            sink += chunk
            if forward is None:
                continue
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(forward, view) :]
            except OSError:  # the test closed its end: keep draining, for the scan
                os.close(forward)
                forward = None
    if forward is not None:
        os.close(forward)


@pytest.fixture(scope="session", autouse=True)
def _record_every_process_output() -> Iterator[None]:
    original = subprocess.Popen
    subprocess.Popen = _RecordedPopen  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = original  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _models_cache_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models list cache (``$XDG_CACHE_HOME/llmtasks``) of every test, CLI runs included,
    goes to a directory of its own (beside tmp_path, which some tests list): never the
    user's, never shared between tests, and scanned for credentials with the rest."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="session", autouse=True)
def _remember_tmp_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    _TMP_BASES.append(tmp_path_factory.getbasetemp())


def find_leaks(secrets: tuple[str, ...]) -> list[str]:
    """Where any of ``secrets`` appears: process outputs, and files under the temp dirs."""
    leaks = [f"CLI output: {text[:200]!r}" for text in _OUTPUTS if any(s in text for s in secrets)]
    leaks += [what for what, data in _STREAMS if any(s.encode() in data for s in secrets)]
    for base in _TMP_BASES:
        for path in base.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                if any(s.encode() in data for s in secrets):
                    leaks.append(str(path))
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No credential in any output, log, ledger, receipt or file of the whole suite."""
    leaks = find_leaks(SECRETS)
    if leaks:
        print("\nCREDENTIAL LEAK: a test secret appeared in:\n  " + "\n  ".join(leaks))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def under_ci() -> bool:
    """``CI=true``, as .ci/run sets it (and most CI services do)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def require(program: str) -> None:
    """Skip the tests that need ``program`` (at module level: the whole module) when it is
    missing; under CI fail instead, so that a CI run cannot pass green without them."""
    if shutil.which(program) is not None:
        return
    message = f"{program} is not installed (.ci/run installs the Debian package {program})"
    if under_ci():
        pytest.fail(f"{message}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_module(name: str) -> None:
    """``pytest.importorskip`` that fails under CI."""
    try:
        __import__(name)
    except ImportError:
        if under_ci():
            pytest.fail(f"the Python module {name} is missing (CI=true)", pytrace=False)
        pytest.skip(f"the Python module {name} is missing", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on 127.0.0.1, without persistence; ``kill()`` and ``start()`` again
    on the same port simulate a crash and a restart that lost every key."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
