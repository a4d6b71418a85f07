"""How many task_post calls per second the emulator serves, validation on, no limit.

Starts ``python -m llmtasks emulate --port 0 --no-record`` as a subprocess (so the server has
its own process, as in real use), posts pre-encoded 100-task bodies with a raw aiohttp client
and prints a JSON line with calls/s and tasks/s.

    python benchmarks/bench_emulator.py [--calls N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import msgspec

PREFIX = "llmtasks emulator listening on "


class _Envelope(msgspec.Struct):
    status_code: int
    tasks_count: int
    tasks_error: int


def make_body(call: int, tasks_per_call: int) -> bytes:
    tasks = [
        {
            "user_prompt": f"benchmark prompt {call}-{i}: is the amusement park business relevant",
            "model_name": "gpt-4.1-mini",
            "max_output_tokens": 512,
            "temperature": 0.5,
            "system_message": "answer briefly",
            "tag": f"bench-{call}-{i}",
        }
        for i in range(tasks_per_call)
    ]
    return json.dumps(tasks).encode()


def start_emulator(extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "llmtasks", "emulate", "--port", "0", "--no-record", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(PREFIX):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, line[len(PREFIX) :].strip()


async def drive(
    base_url: str, calls: int, concurrency: int, bodies: list[bytes]
) -> dict[str, float]:
    url = f"{base_url}/v3/ai_optimization/chat_gpt/llm_responses/task_post"
    headers = {
        "Authorization": aiohttp.encode_basic_auth("login", "password"),
        "Content-Type": "application/json",
    }
    decoder = msgspec.json.Decoder(_Envelope)
    connector = aiohttp.TCPConnector(limit=concurrency)
    created = 0
    errors = 0
    next_call = 0

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal created, errors, next_call
            while next_call < calls:
                body = bodies[next_call % len(bodies)]
                next_call += 1
                async with session.post(url, data=body) as resp:
                    payload = await resp.read()
                env = decoder.decode(payload)
                if resp.status != 200 or env.status_code != 20000:
                    errors += 1
                created += env.tasks_count - env.tasks_error

        # Warm up connections and code paths before timing.
        warm = min(200, calls)
        saved, next_call, calls = calls, 0, warm
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        calls, next_call, created, errors = saved, 0, 0, 0

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "calls": calls,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(calls / elapsed, 1),
        "tasks_per_s": round(created / elapsed, 1),
        "tasks_created": created,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tasks-per-call", type=int, default=100)
    args = parser.parse_args()
    # The cap on simultaneous requests stays above the client's concurrency: this measures
    # throughput, not the 40209 path.
    extra = ["--max-in-flight", str(max(30, args.concurrency))]
    proc, base_url = start_emulator(extra)
    try:
        bodies = [make_body(c, args.tasks_per_call) for c in range(50)]
        result = asyncio.run(drive(base_url, args.calls, args.concurrency, bodies))
        result["body_bytes"] = len(bodies[0])
        result["cpus"] = os.cpu_count() or 0
        print(json.dumps(result))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
