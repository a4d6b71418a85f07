"""Helpers shared by the benchmark scripts: emulator subprocess, inputs, CLI runs, results.

Every benchmark runs the emulator in its own process (as bench_emulator.py does) and the
client under test in another, so each side's CPU time can be read from its own rusage.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_emulator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The smoke test points this elsewhere so CI never touches the committed figures.
RESULTS = Path(os.environ.get("LLMTASKS_BENCH_RESULTS", HERE / "results"))
IMG = ROOT / "docs" / "img"
PREFIX = bench_emulator.PREFIX
CREDENTIALS = {"DATAFORSEO_LOGIN": "login", "DATAFORSEO_PASSWORD": "password"}
TASK_POST = "/v3/ai_optimization/chat_gpt/llm_responses/task_post"


class EmulatorProcess:
    """``python -m llmtasks emulate --port 0 ...`` as a subprocess; ``with`` stops it."""

    def __init__(self, *extra: str, record: bool = False) -> None:
        cmd = [sys.executable, "-m", "llmtasks", "emulate", "--port", "0"]
        cmd += ["--record" if record else "--no-record", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(PREFIX):
            self.proc.kill()
            raise SystemExit(f"emulator did not start: {line!r}")
        self.url = line[len(PREFIX) :].strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=60) as resp:
            return json.loads(resp.read())

    def calls(self) -> list[dict[str, Any]]:
        """Every call the emulator recorded (needs ``record=True``)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/_emulator/calls?offset={len(out)}")
            if not page:
                return out
            out.extend(page)

    def cpu_s(self) -> float:
        """CPU seconds the emulator process has used so far (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def emulator_ceiling(calls: int, concurrency: int = 30) -> dict[str, Any]:
    """The emulator's own task_post ceiling, measured now (bench_emulator.py's method)."""
    with EmulatorProcess("--max-in-flight", str(max(30, concurrency))) as emu:
        bodies = [bench_emulator.make_body(c, 100) for c in range(50)]
        result = asyncio.run(bench_emulator.drive(emu.url, calls, concurrency, bodies))
    return {k: result[k] for k in ("calls", "concurrency", "calls_per_s", "tasks_per_s")}


def task_line(i: int) -> bytes:
    """One realistic JSONL input line (model named, a few options), about 130 bytes."""
    return (
        b'{"user_prompt": "Which brands lead the e-bike market in city %d? Name three.", '
        b'"model_name": "gpt-4.1-mini", "max_output_tokens": 512}\n' % i
    )


def write_input(path: Path, lines: int) -> Path:
    """A JSONL file of ``lines`` tasks, written in large blocks (10M lines in seconds)."""
    block = 100_000
    with open(path, "wb") as f:
        for start in range(0, lines, block):
            f.write(b"".join(task_line(i) for i in range(start, min(lines, start + block))))
    return path


_HWM_MARK = "\nllmtasks-bench VmHWM: "
# Runs ``python -m llmtasks ARGS`` and, at exit, writes the process's own peak RSS (VmHWM of
# its post-exec address space) to stderr, where run_cli() takes it off again.
_HWM_LAUNCHER = f"""
import atexit, runpy, sys

def _hwm():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    sys.stderr.write({_HWM_MARK!r} + kb + "\\n")
    sys.stderr.flush()

atexit.register(_hwm)
sys.argv = ["llmtasks", *sys.argv[1:]]
runpy.run_module("llmtasks", run_name="__main__", alter_sys=True)
"""


def run_cli(
    args: Sequence[str],
    *,
    stdin_path: Path | None = None,
    profile_to: Path | None = None,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Run ``python -m llmtasks ARGS`` and return wall time, CPU time, peak RSS, stderr.

    ``os.wait4`` gives the rusage of exactly this child (``ru_maxrss`` in KiB on Linux).
    """
    if profile_to is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "llmtasks", *args]
    else:
        cmd = [sys.executable, "-c", _HWM_LAUNCHER, *args]
    env = {**os.environ, **CREDENTIALS}
    stdin = open(stdin_path, "rb") if stdin_path is not None else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT
        )
        assert proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        err = b""
        # Read stderr while waiting so a chatty run never blocks on a full pipe.
        while True:
            chunk = proc.stderr.read(65536)
            if not chunk:
                break
            err += chunk
            if time.monotonic() > deadline:
                proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if stdin_path is not None:
            stdin.close()  # type: ignore[union-attr]
    wall = time.perf_counter() - started
    text = err.decode(errors="replace")
    hwm_kb = None
    if _HWM_MARK in text:
        head, _, tail = text.rpartition(_HWM_MARK)
        hwm_kb, text = int(tail.split()[0]), head
    return {
        "exit": proc.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        # VmHWM of the process itself; ru_maxrss also counts the pages of this (parent)
        # process that the child had mapped between fork and exec.
        "max_rss_mb": (hwm_kb if hwm_kb is not None else usage.ru_maxrss) / 1024,
        "ru_maxrss_mb": usage.ru_maxrss / 1024,
        "stderr": text,
    }


def submit_args(
    input_arg: str, url: str, workdir: Path, *extra: str, fmt: str | None = None
) -> list[str]:
    """``submit`` arguments with ledger, receipts and rejects in ``workdir``."""
    args = ["submit", input_arg, "--base-url", url, "--no-preflight"]
    args += ["--ledger", str(workdir / "ledger.sqlite")]
    args += ["--receipts", str(workdir / "receipts.jsonl")]
    args += ["--rejects", str(workdir / "rejects.jsonl")]
    if fmt:
        args += ["--format", fmt]
    return args + list(extra)


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def sliding_peak(times: Sequence[float], period_s: float) -> int:
    """Most events in any window (t - period_s, t]: the emulator's own window shape."""
    ts = sorted(times)
    best = 0
    for i, t in enumerate(ts):
        best = max(best, i + 1 - bisect.bisect_right(ts, t - period_s))
    return best


def window_counts(
    times: Sequence[float], period_s: float, step_s: float, start: float, end: float
) -> list[tuple[float, int]]:
    """Events in (t - period_s, t] for t = start, start + step_s, ... end (for plots)."""
    ts = sorted(times)
    out = []
    t = start
    while t <= end + 1e-9:
        n = bisect.bisect_right(ts, t) - bisect.bisect_right(ts, t - period_s)
        out.append((round(t - start, 3), n))
        t += step_s
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import aiohttp
    import msgspec

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
        "commit": _git_head(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _git(*args: str) -> str:
    """git's output as printed (not stripped: porcelain lines start with a status column)."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout
    except OSError:
        return ""


def _git_head() -> str:
    return _git("rev-parse", "--short=10", "HEAD").strip()


def git_dirty() -> bool:
    """Uncommitted changes to tracked files outside benchmarks/results and docs: figures
    measured then do not belong to the commit they name."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return any(line and not line[3:].startswith("docs/") for line in out.splitlines())


def save(name: str, result: dict[str, Any], *, quick: bool) -> Path:
    """Write results/NAME.json (NAME-quick.json for --quick runs, which are not committed)."""
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": name,
        "quick": quick,
        "commit": _git_head(),
        "dirty": git_dirty(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", *_relative_argv()]),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def _relative_argv() -> list[str]:
    argv = list(sys.argv)
    if argv:
        p = Path(argv[0]).resolve()
        argv[0] = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else argv[0]
    return argv


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
