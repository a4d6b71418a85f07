"""Memory of ``export --results`` / ``--citations``: peak RSS over ledgers of growing size.

Builds a ledger of N created and collected tasks (100k and 1M by default; ``--quick``: 2k
and 20k) whose results have the documented task_get shape: an answer of a few hundred
characters, three citations (one a gemini redirect with ``direct_url``), a reasoning item
and fan-out queries; and the JSONL input the run read. Then runs the real CLI,
``export --results`` (prompt columns read from the input) and ``export --citations``, in
CSV, JSONL and Parquet, and reads each process's peak RSS (VmHWM). Flat means: the same
peak at every size.

    python benchmarks/bench_export.py [--quick] [--sizes 100000 1000000]
                                      [--formats csv jsonl parquet] [--name export]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as c
import orjson

from llmtasks._input import record_digest
from llmtasks._ledger import Ledger, NewLine, ResultRow
from llmtasks._receipt import Receipt

_TEXT = (
    "E-bikes from Brand {i} lead the city market this year, ahead of two rivals. Prices "
    "start near 1,500 EUR, and most buyers choose mid-drive motors for hills. Service "
    "networks matter as much as range: check where repairs are made before you buy."
)


def result_json(i: int) -> str:
    text = _TEXT.format(i=i)
    return orjson.dumps(
        [
            {
                "model_name": "gpt-4.1-mini-2025-04-14",
                "input_tokens": 24,
                "output_tokens": 310,
                "reasoning_tokens": 64,
                "web_search": True,
                "money_spent": 0.0011,
                "datetime": "2026-11-25 10:03:12 +00:00",
                "fan_out_queries": [f"best e-bike brand city {i}", "e-bike prices 2026"],
                "items": [
                    {
                        "type": "reasoning",
                        "sections": [{"type": "summary_text", "text": "Brands."}],
                    },
                    {
                        "type": "message",
                        "sections": [
                            {
                                "type": "text",
                                "text": text,
                                "annotations": [
                                    {
                                        "title": "BBC",
                                        "url": f"https://www.bbc.co.uk/news/{i}",
                                        "start_index": 0,
                                        "end_index": 40,
                                    },
                                    {
                                        "title": "shop",
                                        "url": f"https://shop{i % 500}.example.com/p",
                                        "start_index": 41,
                                        "end_index": 90,
                                    },
                                    {
                                        "title": "wikipedia.org",
                                        "url": "https://vertexaisearch.cloud.google.com/r/x",
                                        "direct_url": "https://en.wikipedia.org/wiki/E-bike",
                                        "start_index": 91,
                                        "end_index": 150,
                                    },
                                ],
                            }
                        ],
                    },
                ],
            }
        ]
    ).decode()


def build(work: Path, n: int) -> tuple[Path, Path]:
    """The input and the ledger of a run of ``n`` tasks, all collected."""
    src = work / "in.jsonl"
    path = work / "in.jsonl.ledger.sqlite"
    ledger = Ledger.open(path, input_name=str(src), engine="chat_gpt")
    block = 10_000
    with open(src, "wb") as f:
        for start in range(0, n, block):
            lines = range(start + 1, min(n, start + block) + 1)
            raws = [c.task_line(i).rstrip(b"\n") for i in lines]
            f.write(b"".join(r + b"\n" for r in raws))
            ledger.add_lines(
                [
                    NewLine(i, record_digest(r), "pending", f"t{i}")
                    for i, r in zip(lines, raws, strict=True)
                ]
            )
            for b in range(0, len(lines), 100):
                part = lines[b : b + 100]
                batch = ledger.mark_sending(part)
                ledger.record(
                    batch,
                    [
                        Receipt(
                            line=i, state="created", tag=f"t{i}", task_id=f"id-{i}", cost=0.0102
                        )
                        for i in part
                    ],
                    batch_state="done",
                    attempts=1,
                )
            if start == 0:
                ledger.ensure_results()
            ledger.store_results(
                [
                    ResultRow(f"id-{i}", i, f"t{i}", True, 20000, "Ok.", result_json(i), "direct")
                    for i in lines
                ]
            )
    ledger.close()
    return src, path


def written(out: Path, fmt: str) -> int:
    """Rows in an export (the synthetic texts have no line breaks: one row, one line)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(out).metadata.num_rows)
    return c.count_lines(out) - (fmt == "csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", help="collected tasks per ledger")
    parser.add_argument("--formats", nargs="+", choices=("csv", "jsonl", "parquet"))
    parser.add_argument("--name", default="export", help="results/NAME.json (default export)")
    args = parser.parse_args()
    q = args.quick
    sizes = args.sizes or ([2_000, 20_000] if q else [100_000, 1_000_000])
    have_arrow = importlib.util.find_spec("pyarrow") is not None
    formats = args.formats or (["csv", "jsonl", "parquet"] if have_arrow else ["csv", "jsonl"])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmtasks-bench-export-") as tmp:
        for n in sizes:
            work = Path(tmp) / str(n)
            work.mkdir()
            _src, ledger = build(work, n)
            for what in ("results", "citations"):
                for fmt in formats:
                    out = work / f"{what}.{fmt}"
                    r = c.run_cli(
                        ["export", "--ledger", str(ledger), f"--{what}", "--format", fmt,
                         "--out", str(out), "-q"]
                    )  # fmt: skip
                    if r["exit"] != 0:
                        raise SystemExit(f"export failed ({r['exit']}):\n{r['stderr']}")
                    rows = n if what == "results" else 3 * n
                    if written(out, fmt) != rows:
                        raise SystemExit(f"{out}: {written(out, fmt)} rows, not {rows}")
                    runs.append(
                        {
                            "table": what,
                            "format": fmt,
                            "results": n,
                            "rows": rows,
                            "ledger_mb": round(ledger.stat().st_size / 2**20, 1),
                            "out_mb": round(out.stat().st_size / 2**20, 1),
                            "max_rss_mb": round(r["max_rss_mb"], 1),
                            "seconds": round(r["wall_s"], 1),
                            "rows_per_s": round(rows / r["wall_s"]),
                        }
                    )
                    print(json.dumps(runs[-1]), file=sys.stderr)
                    out.unlink()
            ledger.unlink()
    path = c.save(args.name, {"runs": runs}, quick=q)
    print(json.dumps({"saved": str(path), "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
