"""Throughput ceiling: llmtasks end to end vs raw aiohttp vs the official dataforseo-client.

No rate limit on the emulator (``--no-record``, its own process), llmtasks' limiter set far
above what the machine can do. Three clients post the same tasks, one after the other, to
the same emulator, each in its own process so its CPU time is its own:

- ``llmtasks``: ``python -m llmtasks submit FILE --rate 1000000 --concurrency 30``, JSONL
  file in, ledger + receipts out (the whole command, interpreter start included);
- ``raw_aiohttp``: the ceiling of the stack: 100-task bodies encoded before the clock
  starts, posted by an aiohttp session at the same concurrency, replies decoded for counts;
- ``dataforseo_client``: the official package (synchronous, urllib3), the same file read
  and posted 100 tasks a call with ``AiOptimizationApi.chat_gpt_llm_responses_task_post``
  from a pool of as many threads as the concurrency (its own way to run calls in parallel).

Then llmtasks runs again under cProfile and the top functions are listed.

Every client runs ``--rounds`` times, in turn (llmtasks, raw, official, llmtasks, ...), and
each figure is that client's median round.

    python benchmarks/bench_throughput.py [--quick] [--tasks N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

ENGINE_PATH = c.TASK_POST


# -- worker processes (run as ``bench_throughput.py --worker KIND``) -----------------------


def _read_tasks(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def worker_raw(url: str, path: str, concurrency: int) -> dict[str, Any]:
    import aiohttp
    import bench_emulator
    import msgspec

    tasks = _read_tasks(path)
    bodies = [msgspec.json.encode(tasks[i : i + 100]) for i in range(0, len(tasks), 100)]
    decoder = msgspec.json.Decoder(bench_emulator._Envelope)
    created = 0
    errors = 0

    async def run() -> float:
        nonlocal created, errors
        headers = {
            "Authorization": aiohttp.encode_basic_auth("login", "password"),
            "Content-Type": "application/json",
        }
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            it = iter(bodies)

            async def one() -> None:
                nonlocal created, errors
                for body in it:
                    async with session.post(url + ENGINE_PATH, data=body) as resp:
                        payload = await resp.read()
                    env = decoder.decode(payload)
                    if resp.status != 200 or env.status_code != 20000:
                        errors += 1
                    created += env.tasks_count - env.tasks_error

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(concurrency)))
            return time.perf_counter() - started

    cpu0 = c.self_cpu_s()
    elapsed = asyncio.run(run())
    return {
        "seconds": elapsed,
        "cpu_s": c.self_cpu_s() - cpu0,
        "created": created,
        "errors": errors,
    }


def worker_official(url: str, path: str, concurrency: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from dataforseo_client import api_client, configuration
    from dataforseo_client.api.ai_optimization_api import AiOptimizationApi
    from dataforseo_client.models.ai_optimization_chat_gpt_llm_responses_task_post_request_info import (  # noqa: E501
        AiOptimizationChatGptLlmResponsesTaskPostRequestInfo as RequestInfo,
    )

    cfg = configuration.Configuration(host=url, username="login", password="password")
    cfg.connection_pool_maxsize = concurrency
    cpu0 = c.self_cpu_s()
    started = time.perf_counter()
    created = 0
    errors = 0
    with api_client.ApiClient(cfg) as client, ThreadPoolExecutor(concurrency) as pool:
        api = AiOptimizationApi(client)

        def post(batch: list[RequestInfo]) -> tuple[int, int]:
            reply = api.chat_gpt_llm_responses_task_post(batch)
            ok = sum(1 for t in reply.tasks or [] if t is not None and t.status_code == 20100)
            return ok, int(reply.status_code != 20000)

        def batches() -> Any:
            with open(path, "rb") as f:
                batch: list[RequestInfo] = []
                for line in f:
                    if line.strip():
                        batch.append(RequestInfo.from_dict(json.loads(line)))
                    if len(batch) == 100:
                        yield batch
                        batch = []
                if batch:
                    yield batch

        for ok, err in pool.map(post, batches()):
            created += ok
            errors += err
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": c.self_cpu_s() - cpu0,
        "created": created,
        "errors": errors,
    }


def run_worker(kind: str, url: str, path: Path, concurrency: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--url", url, "--input", str(path)]
    cmd += ["--concurrency", str(concurrency)]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


# -- the benchmark ------------------------------------------------------------------------


def profile_top(path: Path, n: int) -> list[str]:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    out = []
    for line in lines[start : start + n + 1]:
        line = re.sub(r"\S*site-packages/|\S*/lib/python3[.0-9]*/", "", line)
        out.append(line.replace(str(c.ROOT) + "/", "").rstrip())
    return out


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda x: float(x[key]))
    return ordered[(len(ordered) - 1) // 2]


def per_task(cpu_s: float, tasks: int) -> float:
    return round(cpu_s / tasks * 1e6, 2) if tasks else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--tasks", type=int, help="tasks per client (default 300000; quick 3000)")
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument(
        "--rounds", type=int, help="rounds of every client in turn (default 3; quick 1)"
    )
    parser.add_argument("--no-official", action="store_true", help="skip dataforseo-client")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--worker", choices=("raw", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = worker_raw if args.worker == "raw" else worker_official
        print(json.dumps(fn(args.url, args.input, args.concurrency)))
        return 0

    n = args.tasks or (3000 if args.quick else 300_000)
    conc = args.concurrency
    rounds = args.rounds or (1 if args.quick else 3)
    result: dict[str, Any] = {
        "tasks": n,
        "concurrency": conc,
        "tasks_per_call": 100,
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory(prefix="llmtasks-bench-") as tmp:
        work = Path(tmp)
        inp = c.write_input(work / "input.jsonl", n)
        one = c.write_input(work / "one.jsonl", 1)
        n_small = max(1, n // 10)
        small_inp = c.write_input(work / "small.jsonl", n_small)
        result["emulator_ceiling"] = c.emulator_ceiling(max(200, n // 100), conc)
        clients: dict[str, dict[str, Any]] = {}
        with c.EmulatorProcess("--max-in-flight", str(max(30, conc))) as emu:
            limiter = ["--rate", "1000000", "--period", "60", "--concurrency", str(conc)]

            def llmtasks_run(path: Path, sub: str, **kw: Any) -> dict[str, Any]:
                d = work / sub
                d.mkdir()
                return c.run_cli(c.submit_args(str(path), emu.url, d, *limiter), **kw)

            # Fixed cost of one command (interpreter, imports, ledger set-up), for the marginal
            # per-task figure.
            fixed = llmtasks_run(one, "one")
            kinds = ["raw"] + ([] if args.no_official else ["official"])
            # Rounds of every client in turn, each figure the median of its rounds: on shared
            # cores the machine's speed drifts within minutes, and a client measured only
            # before or after a slow spell would be compared with the others unfairly.
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("llmtasks", "small", *kinds)}
            for i in range(rounds):
                # The margin: CPU of the full run minus that of a tenth of it, per extra task.
                runs["small"].append(llmtasks_run(small_inp, f"small{i}"))
                e0 = emu.cpu_s()
                r = llmtasks_run(inp, f"main{i}")
                r["emulator_cpu_s"] = emu.cpu_s() - e0
                if r["exit"] != 0:
                    raise SystemExit(f"llmtasks submit failed ({r['exit']}):\n{r['stderr']}")
                runs["llmtasks"].append(r)
                for kind in kinds:
                    e0 = emu.cpu_s()
                    w = run_worker(kind, emu.url, inp, conc)
                    w["emulator_cpu_s"] = emu.cpu_s() - e0
                    if w["created"] != n or w["errors"]:
                        raise SystemExit(
                            f"{kind}: created {w['created']} of {n}, {w['errors']} errors"
                        )
                    runs[kind].append(w)
            r = median_run(runs["llmtasks"], "wall_s")
            small = median_run(runs["small"], "cpu_s")
            clients["llmtasks"] = {
                "seconds": round(r["wall_s"], 3),
                "tasks_per_s": round(n / r["wall_s"], 1),
                "cpu_us_per_task": per_task(r["cpu_s"], n),
                "cpu_us_per_task_marginal": per_task(
                    statistics.median(x["cpu_s"] for x in runs["llmtasks"]) - small["cpu_s"],
                    n - n_small,
                ),
                "marginal_between_tasks": [n_small, n],
                "cpu_us_per_task_over_one_line": per_task(r["cpu_s"] - fixed["cpu_s"], n - 1),
                "user_s": round(r["user_s"], 3),
                "sys_s": round(r["sys_s"], 3),
                "fixed_cost_one_line": {
                    "seconds": round(fixed["wall_s"], 3),
                    "cpu_s": round(fixed["cpu_s"], 3),
                },
                "max_rss_mb": round(r["max_rss_mb"], 1),
                "emulator_cpu_us_per_task": per_task(r["emulator_cpu_s"], n),
                "rounds_seconds": [round(x["wall_s"], 3) for x in runs["llmtasks"]],
                "summary": r["stderr"].strip().splitlines(),
            }
            for kind in kinds:
                w = median_run(runs[kind], "seconds")
                clients["raw_aiohttp" if kind == "raw" else "dataforseo_client"] = {
                    "seconds": round(w["seconds"], 3),
                    "tasks_per_s": round(n / w["seconds"], 1),
                    "cpu_us_per_task": per_task(w["cpu_s"], n),
                    "process_seconds": round(w["process_wall_s"], 3),
                    "emulator_cpu_us_per_task": per_task(w["emulator_cpu_s"], n),
                    "rounds_seconds": [round(x["seconds"], 3) for x in runs[kind]],
                }
            result["clients"] = clients
            ours = clients["llmtasks"]["tasks_per_s"]
            ratios = {
                "llmtasks_vs_raw_aiohttp": round(ours / clients["raw_aiohttp"]["tasks_per_s"], 3)
            }
            if "dataforseo_client" in clients:
                ratios["llmtasks_vs_dataforseo_client"] = round(
                    ours / clients["dataforseo_client"]["tasks_per_s"], 2
                )
            result["ratios"] = ratios
            # Both processes share the machine: however well the work were spread over its
            # cores, the llmtasks run could not end before the CPU it and the emulator spent
            # on it, divided by the cores. That bounds the ratio for this much CPU per task.
            cpus = os.cpu_count() or 1
            floor_s = (r["cpu_s"] + r["emulator_cpu_s"]) / cpus
            result["cpu_bound"] = {
                "cpus": cpus,
                "client_cpu_s": round(r["cpu_s"], 3),
                "emulator_cpu_s": round(r["emulator_cpu_s"], 3),
                "fewest_seconds": round(floor_s, 3),
                "best_ratio_vs_raw_aiohttp": round(clients["raw_aiohttp"]["seconds"] / floor_s, 3),
            }
            result["goals"] = {
                "vs_raw_at_least_0.5": ratios["llmtasks_vs_raw_aiohttp"] >= 0.5,
                "vs_official_at_least_3": ratios.get("llmtasks_vs_dataforseo_client", 0) >= 3,
                "cpu_us_per_task_marginal_at_most_10": (
                    clients["llmtasks"]["cpu_us_per_task_marginal"] <= 10
                ),
            }
            if not args.no_profile:
                prof = work / "submit.prof"
                llmtasks_run(inp, "prof", profile_to=prof)
                result["llmtasks_profile_top_tottime"] = profile_top(
                    prof, 25 if not args.quick else 5
                )
    path = c.save("throughput", result, quick=args.quick)
    brief = {k: v for k, v in result.items() if k != "llmtasks_profile_top_tottime"}
    for v in brief.get("clients", {}).values():
        v.pop("summary", None)
    print(json.dumps({**brief, "saved": str(path)}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
