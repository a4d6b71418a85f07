"""Rate fidelity: calls per sliding window as the server counts them, llmtasks vs aiolimiter.

The emulator (its own process, ``--rate R --period W``, every call recorded) enforces a
strict sliding window and answers 40202 over it. Each case posts one task per call:

- ``llmtasks``: ``python -m llmtasks submit FILE --rate R --period W --batch-size 1`` with
  every other setting at its default (margin 1% of W, default concurrency and burst);
- ``llmtasks+jitter``: the same through a TCP proxy that delays every chunk, both ways, by a
  random 0..J ms (order kept per connection): arrivals no longer match admissions;
- ``aiolimiter``: a plain ``AsyncLimiter(R, W)`` loop (at most 30 in flight, no retries),
  the textbook alternative; its bucket starts full, so its first window gets about 2R.

From the emulator's own arrival times (``GET /_emulator/calls``, ``at`` = server monotonic
seconds) it computes the peak number of calls in any window (t - W, t], 40202 count,
utilization, and a series of window counts over time for the plot.

    python benchmarks/bench_rate.py [--quick] [--rate 200] [--period 5] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

# -- a TCP proxy that adds random delay ---------------------------------------------------


class JitterProxy:
    """Forwards 127.0.0.1:port to the emulator, each chunk delayed by uniform(0, jitter_s).

    A chunk is never delivered before the one read before it on the same connection, so
    HTTP stays intact; a request is one chunk here, so each request gets its own delay.
    """

    def __init__(self, upstream_port: int, jitter_s: float, seed: int = 1) -> None:
        self.upstream_port = upstream_port
        self.jitter_s = jitter_s
        self.rng = random.Random(seed)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> JitterProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        self._writers |= {cw, uw}
        await asyncio.gather(self._pump(cr, uw), self._pump(ur, cw), return_exceptions=True)
        for w in (cw, uw):
            w.close()
            self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(65536)
                last_due = max(last_due, loop.time() + self.rng.uniform(0, self.jitter_s))
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


# -- the clients --------------------------------------------------------------------------


async def run_llmtasks(
    url: str, work: Path, lines: int, rate: int, period_s: float
) -> dict[str, Any]:
    inp = c.write_input(work / "input.jsonl", lines)
    args = c.submit_args(str(inp), url, work, "--rate", str(rate), "--period", str(period_s))
    args += ["--batch-size", "1"]
    r = await asyncio.to_thread(c.run_cli, args)
    return {"exit": r["exit"], "summary": r["stderr"].strip().splitlines()}


async def run_aiolimiter(url: str, calls: int, rate: int, period_s: float) -> dict[str, Any]:
    import aiohttp
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(rate, period_s)
    in_flight = asyncio.Semaphore(30)
    codes: dict[str, int] = {}
    headers = {"Authorization": aiohttp.encode_basic_auth("login", "password")}

    async with aiohttp.ClientSession(headers=headers) as session:

        async def post(i: int) -> None:
            try:
                body = b"[" + c.task_line(i).strip() + b"]"
                async with session.post(
                    url + c.TASK_POST, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    code = str(json.loads(await resp.read())["status_code"])
            finally:
                in_flight.release()
            codes[code] = codes.get(code, 0) + 1

        pending = set()
        for i in range(calls):
            await in_flight.acquire()
            await limiter.acquire()
            task = asyncio.create_task(post(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    return {"status_codes": codes}


# -- analysis -----------------------------------------------------------------------------


def analyse(calls: list[dict[str, Any]], rate: int, period_s: float) -> dict[str, Any]:
    posts = [x for x in calls if x["path"] == c.TASK_POST]
    arrivals = sorted(x["at"] for x in posts)
    admitted = sorted(x["at"] for x in posts if x["status_code"] not in (40202, 40209))
    t0, t1 = arrivals[0], arrivals[-1]
    span = t1 - t0
    # Utilization two ways: admitted calls per second over the run against R / W, and the
    # mean count of the full windows (t - W, t] that lie inside the run, against R.
    steady = [n for _, n in c.window_counts(admitted, period_s, period_s / 50, t0 + period_s, t1)]
    first_window = sum(1 for t in arrivals if t < t0 + period_s)
    return {
        "calls": len(posts),
        "admitted": len(admitted),
        "status_40202": sum(1 for x in posts if x["status_code"] == 40202),
        "status_40209": sum(1 for x in posts if x["status_code"] == 40209),
        "span_s": round(span, 3),
        "peak_window_all_arrivals": c.sliding_peak(arrivals, period_s),
        "peak_window_admitted": c.sliding_peak(admitted, period_s),
        "first_window_arrivals": first_window,
        "rate_utilization": round((len(admitted) - 1) / span / (rate / period_s), 4)
        if span > 0
        else 0.0,
        "mean_full_window_utilization": round(sum(steady) / len(steady) / rate, 4)
        if steady
        else None,
        "series": c.window_counts(arrivals, period_s, period_s / 50, t0, t1 + period_s),
    }


async def run_case(
    client: str, rate: int, period_s: float, duration_s: float, jitter_ms: float, work: Path
) -> dict[str, Any]:
    calls = math.ceil(rate / period_s * duration_s)
    extra = ["--rate", str(rate), "--period", str(period_s), "--max-in-flight", "30"]
    with c.EmulatorProcess(*extra, record=True) as emu:
        started = time.perf_counter()
        if jitter_ms:
            async with JitterProxy(emu.port, jitter_ms / 1000) as proxy:
                url = f"http://127.0.0.1:{proxy.port}"
                out = await _client(client, url, work, calls, rate, period_s)
        else:
            out = await _client(client, emu.url, work, calls, rate, period_s)
        wall = time.perf_counter() - started
        stats = analyse(emu.calls(), rate, period_s)
    return {
        "client": client,
        "rate": rate,
        "period_s": period_s,
        "jitter_ms": jitter_ms,
        "tasks": calls,
        "wall_s": round(wall, 2),
        **out,
        **stats,
    }


async def _client(
    client: str, url: str, work: Path, calls: int, rate: int, period_s: float
) -> dict[str, Any]:
    if client == "llmtasks":
        return await run_llmtasks(url, work, calls, rate, period_s)
    return await run_aiolimiter(url, calls, rate, period_s)


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    """Window counts over the whole run, and the first two windows up close."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(
        1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]}
    )
    styles = {"llmtasks": "-", "aiolimiter": "--"}
    rate, period = cases[0]["rate"], cases[0]["period_s"]
    for case in cases:
        if case["client"] not in styles:
            continue
        jitter = f" + 0-{case['jitter_ms']:g} ms jitter" if case["jitter_ms"] else ""
        label = f"{case['client']}{jitter} ({case['status_40202']} × 40202)"
        xs = [t for t, _ in case["series"]]
        ys = [n for _, n in case["series"]]
        for axis in (ax, zoom):
            axis.plot(xs, ys, styles[case["client"]], label=label)
    for axis in (ax, zoom):
        axis.axhline(rate, color="red", linewidth=1, label=f"limit: {rate} per {period:g} s")
        axis.set_xlabel("seconds since the first call")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    ax.set_ylabel(f"calls arrived in the last {period:g} s")
    ax.set_title("Calls per sliding window, as the server counts them")
    ax.legend(loc="lower center", fontsize=8)
    zoom.set_xlim(0, 2.5 * period)
    zoom.set_ylim(0.8 * rate, 2.05 * rate)
    zoom.set_title("first windows, up close")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    plan: list[tuple[str, int, float, float]] = [
        ("llmtasks", args.rate, args.period, 0.0),
        ("llmtasks", args.rate, args.period, args.jitter_ms),
        ("aiolimiter", args.rate, args.period, 0.0),
    ]
    if args.also_rate:
        rate2, period2 = args.also_rate
        plan.append(("llmtasks", int(rate2), float(period2), 0.0))
    cases = []
    for client, rate, period_s, jitter in plan:
        with tempfile.TemporaryDirectory(prefix="llmtasks-bench-") as tmp:
            case = await run_case(client, rate, period_s, args.duration, jitter, Path(tmp))
        cases.append(case)
        brief = {k: v for k, v in case.items() if k not in ("series", "summary")}
        print(json.dumps(brief), file=sys.stderr)
    return {"cases": cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--rate", type=int, help="calls per period (default 200; quick 20)")
    parser.add_argument("--period", type=float, help="seconds (default 5; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per case (default 60; quick 2)")
    parser.add_argument("--jitter-ms", type=float, help="proxy delay 0..J ms (default 50)")
    parser.add_argument(
        "--also-rate",
        nargs=2,
        metavar=("RATE", "PERIOD"),
        help="one more llmtasks case at this limit (default 1000 10; none with --quick)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the plot from results/rate.json"
    )
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((c.RESULTS / "rate.json").read_text())
        first = saved["cases"][0]
        plot([x for x in saved["cases"] if x["rate"] == first["rate"]], c.IMG / "rate-windows.png")
        return 0
    q = args.quick
    args.rate = args.rate or (20 if q else 200)
    args.period = args.period or (1.0 if q else 5.0)
    args.duration = args.duration or (2.0 if q else 60.0)
    args.jitter_ms = args.jitter_ms if args.jitter_ms is not None else args.period * 10
    if args.also_rate is None and not q:
        args.also_rate = ["1000", "10"]
    result: dict[str, Any] = {"emulator_ceiling": c.emulator_ceiling(300 if q else 2000)}
    result |= asyncio.run(main_async(args))
    summary = []
    for case in result["cases"]:
        row = {k: v for k, v in case.items() if k not in ("series", "summary")}
        row["never_over_limit"] = case["peak_window_all_arrivals"] <= case["rate"]
        summary.append(row)
    result["summary"] = summary
    if not args.no_plot:
        img = c.IMG / ("rate-windows-quick.png" if q else "rate-windows.png")
        if q:
            img = c.RESULTS / "rate-windows-quick.png"
        plot([x for x in result["cases"] if x["rate"] == args.rate], img)
        result["plot"] = str(img.relative_to(c.ROOT)) if img.is_relative_to(c.ROOT) else str(img)
    path = c.save("rate", result, quick=q)
    print(json.dumps({"summary": summary, "saved": str(path), "plot": result.get("plot")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
