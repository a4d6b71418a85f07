"""Memory: peak RSS of ``llmtasks submit`` over inputs of growing size, from a file and stdin.

Generates JSONL inputs (100k, 1M and 10M lines by default; ``--quick``: 10k and 100k),
submits each to an emulator process with no rate limit and ``--no-record`` (so the server
keeps only counters), and reads the peak resident set size of the submit process from
``os.wait4`` (``ru_maxrss``). Flat means: the same peak whatever the input size.

    python benchmarks/bench_memory.py [--quick] [--sizes 100000 1000000 10000000]
                                      [--stdin-sizes 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as c


def one_run(emu_url: str, work: Path, inp: Path, lines: int, source: str) -> dict[str, Any]:
    d = work / f"{source}-{lines}"
    d.mkdir()
    limiter = ["--rate", "1000000", "--period", "60", "--concurrency", "30"]
    if source == "stdin":
        args = c.submit_args("-", emu_url, d, *limiter, fmt="jsonl")
        r = c.run_cli(args, stdin_path=inp)
    else:
        r = c.run_cli(c.submit_args(str(inp), emu_url, d, *limiter))
    if r["exit"] != 0:
        raise SystemExit(f"submit failed ({r['exit']}):\n{r['stderr']}")
    receipts = c.count_lines(d / "receipts.jsonl")
    if receipts != lines:
        raise SystemExit(f"{receipts} receipts for {lines} lines")
    return {
        "source": source,
        "lines": lines,
        "input_mb": round(inp.stat().st_size / 2**20, 1),
        "max_rss_mb": round(r["max_rss_mb"], 1),
        "seconds": round(r["wall_s"], 1),
        "tasks_per_s": round(lines / r["wall_s"], 1),
        "cpu_us_per_task": round(r["cpu_s"] / lines * 1e6, 2),
        "ledger_mb": round((d / "ledger.sqlite").stat().st_size / 2**20, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", help="input lines, read from a file")
    parser.add_argument("--stdin-sizes", type=int, nargs="*", help="input lines, from stdin")
    args = parser.parse_args()
    q = args.quick
    sizes = args.sizes or ([10_000, 100_000] if q else [100_000, 1_000_000, 10_000_000])
    stdin_sizes = args.stdin_sizes if args.stdin_sizes is not None else [max(sizes[:2])]
    result: dict[str, Any] = {"emulator_ceiling": c.emulator_ceiling(300 if q else 2000)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="llmtasks-bench-") as tmp:
        work = Path(tmp)
        with c.EmulatorProcess() as emu:
            for source, todo in (("file", sizes), ("stdin", stdin_sizes)):
                for lines in todo:
                    inp = c.write_input(work / f"input-{lines}.jsonl", lines)
                    run = one_run(emu.url, work, inp, lines, source)
                    runs.append(run)
                    print(json.dumps(run), file=sys.stderr)
                    inp.unlink()
    result["runs"] = runs
    peaks = [r["max_rss_mb"] for r in runs]
    result["max_rss_mb_range"] = [min(peaks), max(peaks)]
    result["goal_under_100_mb"] = max(peaks) < 100
    path = c.save("memory", result, quick=q)
    print(json.dumps({**result, "saved": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
