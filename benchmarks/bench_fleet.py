"""Several processes on one account: one limit shared through Redis, a static split, nothing.

Each case runs N ``python -m llmtasks submit FILE --shard i/N --batch-size 1`` processes at
once on one input (R x windows lines), against one emulator (``--rate R --period W``, a strict
sliding window, every call recorded):

- ``shared``: every process ``--rate R --limiter redis://...`` (the fleet of docs/fleet.md);
- ``split``: every process ``--rate R/N``, no limiter (a static share of the limit);
- ``none``: every process ``--rate R``, no limiter (what happens by accident).

From the emulator's arrival times it computes the peak number of calls in any window
(t - W, t] (all arrivals, refused ones included), the 40202 count, and utilization: accepted
calls per second between the first and the last accepted arrival, over R/W. For ``shared``
it also counts the Redis script calls per admission (INFO commandstats) and the clients' CPU.

    python benchmarks/bench_fleet.py [--quick] [--rate 200] [--period 5] [--windows 4]
                                     [--procs 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, ``noeviction``."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("bench_fleet needs redis-server (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"),
                *("--dir", str(workdir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def reset(self) -> None:
        self.client.flushall()
        self.client.config_resetstat()

    def script_calls(self) -> int:
        stats = self.client.info("commandstats")
        return sum(
            int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
        )

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run_fleet(args: list[list[str]]) -> list[dict[str, Any]]:
    """Start every command at once; wait for all; exit code and CPU of each."""
    env = {**os.environ, **c.CREDENTIALS}
    env.pop("LLMTASKS_LIMITER", None)
    procs = []
    errs = []
    for a in args:
        err = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        errs.append(err)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llmtasks", *a],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=c.ROOT,
            )
        )
    out = []
    for p, err in zip(procs, errs, strict=True):
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
        err.close()
        out.append({"exit": p.returncode, "cpu_s": usage.ru_utime + usage.ru_stime, "stderr": text})
    return out


def one_case(
    mode: str, procs: int, rate: int, period: float, lines: int, redis_server: RedisServer
) -> dict[str, Any]:
    with (
        c.EmulatorProcess("--rate", str(rate), "--period", str(period), record=True) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        src = c.write_input(work / "in.jsonl", lines)
        each_rate = max(2, rate // procs) if mode == "split" else rate
        redis_server.reset()
        commands = []
        for i in range(1, procs + 1):
            a = ["submit", str(src), "--base-url", emu.url, "--no-preflight", "-q"]
            a += ["--batch-size", "1", "--shard", f"{i}/{procs}"]
            a += ["--rate", str(each_rate), "--period", str(period)]
            if mode == "shared":
                a += ["--limiter", redis_server.url]
            commands.append(a)
        started = time.perf_counter()
        results = run_fleet(commands)
        wall = time.perf_counter() - started
        calls = [x for x in emu.calls() if x["path"] == c.TASK_POST]
    accepted = sorted(x["at"] for x in calls if x["status_code"] == 20000)
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
    per_s = (len(accepted) - 1) / span if span > 0 else 0.0
    row: dict[str, Any] = {
        "mode": mode,
        "procs": procs,
        "rate": rate,
        "period_s": period,
        "rate_per_process": each_rate,
        "lines": lines,
        "exits": [r["exit"] for r in results],
        "calls": len(calls),
        "accepted": len(accepted),
        "status_40202": sum(1 for x in calls if x["status_code"] == 40202),
        "status_40209": sum(1 for x in calls if x["status_code"] == 40209),
        "peak_window_all_arrivals": c.sliding_peak([x["at"] for x in calls], period),
        "peak_window_accepted": c.sliding_peak(accepted, period),
        "utilization": round(per_s / (rate / period), 4),
        "wall_s": round(wall, 2),
        "client_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "client_cpu_ms_per_call": round(1000 * sum(r["cpu_s"] for r in results) / len(calls), 2),
    }
    if mode == "shared":
        row["redis_scripts_per_admission"] = round(redis_server.script_calls() / len(calls), 2)
    bad = [r["stderr"][-500:] for r in results if r["exit"] not in (0, 1)]
    if bad:
        row["errors"] = bad
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the smoke test)")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--windows", type=int, default=4, help="input = rate x windows lines")
    ap.add_argument("--procs", default="1,2,4,8", help="comma-separated process counts")
    ap.add_argument("--modes", default="shared,split,none")
    opts = ap.parse_args()
    if opts.quick:
        opts.rate, opts.period, opts.windows, opts.procs = 40, 1.0, 2, "2"
    procs = [int(p) for p in opts.procs.split(",")]
    modes = opts.modes.split(",")
    lines = opts.rate * opts.windows
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            for n in procs:
                for mode in modes:
                    if n == 1 and mode == "none":
                        continue  # one process without a limiter is the split case
                    row = one_case(mode, n, opts.rate, opts.period, lines, server)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "errors"}))
        finally:
            server.close()
    result = {"rate": opts.rate, "period_s": opts.period, "lines": lines, "cases": rows}
    path = c.save("fleet", result, quick=opts.quick)
    print(json.dumps({"saved": str(path), "summary": rows}))


if __name__ == "__main__":
    main()
