"""Client CPU per input line of ``read_lines`` (reading, decoding, checking one JSONL task).

The same 300,000-line JSONL file as bench_throughput.py's (``_common.write_input``) is read
to the end, best of ``--repeat`` runs, CPU time of the reading process only. With
``--against REF`` the ``llmtasks`` package of git commit REF is measured in the same run,
the two alternating run by run in fresh processes, so both see the same machine and load.

    python benchmarks/bench_input.py [--lines N] [--repeat R] [--against REF]

Prints one JSON object (also to ``--out FILE`` when given); nothing is written to results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c


def worker(path: str) -> dict[str, Any]:
    import llmtasks
    from llmtasks._input import read_lines

    start = time.process_time()
    lines = tasks = 0
    for il in read_lines(path):
        lines += 1
        tasks += il.task is not None
    cpu = time.process_time() - start
    return {
        "package": str(Path(llmtasks.__file__).parent),
        "lines": lines,
        "tasks": tasks,
        "cpu_s": cpu,
    }


def _run(src: Path, path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    if Path(result["package"]).resolve() != (src / "llmtasks").resolve():
        raise SystemExit(f"measured {result['package']}, not {src}/llmtasks")
    return result


def _export(ref: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(c.ROOT), "archive", ref, "llmtasks"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--against", metavar="REF", help="also measure llmtasks at git commit REF")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    with tempfile.TemporaryDirectory(prefix="llmtasks-bench-input-") as tmp:
        work = Path(tmp)
        path = c.write_input(work / "input.jsonl", args.lines)
        variants = {"this tree": c.ROOT}
        if args.against:
            variants[args.against] = work / "against"
            variants[args.against].mkdir()
            _export(args.against, variants[args.against])
        load_before = os.getloadavg()
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, src in variants.items():
                r = _run(src, path)
                if r["lines"] != args.lines:
                    raise SystemExit(f"{name}: read {r['lines']} lines of {args.lines}")
                best[name] = min(best.get(name, float("inf")), r["cpu_s"])
        result = {
            "bench": "input",
            "commit": c._git_head(),
            "dirty": c.git_dirty(),
            "lines": args.lines,
            "repeat": args.repeat,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "us_per_line": {name: round(s / args.lines * 1e6, 3) for name, s in best.items()},
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
