"""Every benchmark, one after the other, then the tables of docs/benchmarks.md from the results.

    python benchmarks/run_all.py            # the published figures: about 15-20 minutes
    python benchmarks/run_all.py --quick    # a smoke run: tiny sizes, results/*-quick.json,
                                            # docs untouched
    python benchmarks/run_all.py --only throughput latency

Each script writes benchmarks/results/NAME.json with the commit, whether the work tree had
uncommitted changes ("dirty"), the machine, its load and the command. Run it on a clean
checkout of the commit you publish, on a machine doing nothing else: the scripts measure
ratios in the same run, but two shared cores still move every figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, full-run arguments): sizes chosen so the whole run stays near 15 minutes.
PLAN: list[tuple[str, list[str]]] = [
    ("throughput", []),
    ("latency", ["--duration", "25"]),
    ("rate", ["--duration", "40"]),
    ("memory", ["--sizes", "30000", "1000000", "10000000", "--stdin-sizes", "1000000"]),
    ("fleet", ["--windows", "3"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; docs left as they are")
    parser.add_argument("--only", nargs="+", choices=[n for n, _ in PLAN], help="these only")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs tables")
    parser.add_argument(
        "--no-official", action="store_true", help="throughput without dataforseo-client"
    )
    args = parser.parse_args()
    started = time.monotonic()
    for name, extra in PLAN:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(HERE / f"bench_{name}.py")]
        cmd += ["--quick"] if args.quick else extra
        if name == "throughput" and args.no_official:
            cmd.append("--no-official")
        print(f"run_all: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        out = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        if out.returncode != 0:
            print(f"run_all: bench_{name}.py failed ({out.returncode})", file=sys.stderr)
            return 1
        print(f"run_all: {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if not args.quick and not args.no_docs:
        sys.path.insert(0, str(HERE))
        import tables

        tables.update()
        print(f"run_all: tables in {tables.DOCS} regenerated", file=sys.stderr)
    print(f"run_all: finished in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
