"""docs/img/report.png: the ``report`` page of an emulated run, as headless Chromium draws it.

Runs an emulator whose tasks finish 20 s after they are created, submits 1,200 prompts (a
few invalid, a third with web search) at 60 calls per minute in batches of 10, so the run
lasts about two minutes and the calls chart has something to show, collects every result,
writes the report and screenshots it.
Needs the report extra (matplotlib) and Debian's chromium.

    python benchmarks/report_png.py [--out docs/img/report.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as c
import orjson

CITIES = ("Amsterdam", "Berlin", "Lisbon", "Seattle", "Lyon", "Osaka", "Austin", "Oslo")
TOPICS = (
    "Which brands lead the market for electric bikes in {city}?",
    "Recommend three coffee roasters in {city}.",
    "Which hotel booking sites show the lowest prices in {city}?",
    "What are the best-known amusement parks near {city}?",
    "Which banks offer the best savings rates in {city}?",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def write_prompts(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            if i % 97 == 13:
                f.write(orjson.dumps({"user_prompt": "too hot", "temperature": 7}) + b"\n")
                continue
            city = CITIES[i % len(CITIES)]
            task = {"user_prompt": TOPICS[(i // len(CITIES)) % len(TOPICS)].format(city=city)}
            if i % 3 == 0:
                task["web_search"] = True
            f.write(orjson.dumps(task) + b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=c.IMG / "report.png")
    parser.add_argument("--lines", type=int, default=1200)
    parser.add_argument("--keep", type=Path, help="also keep the run (input, ledger, html) here")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="llmtasks-report-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = work / "prompts.jsonl"
        write_prompts(src, args.lines)
        ledger = work / "prompts.jsonl.ledger.sqlite"
        with c.EmulatorProcess("--completion-delay", "20", record=True) as emu:
            steps = [
                ["submit", str(src), "--base-url", emu.url, "--model", "gpt-4.1-mini",
                 "--rate", "60", "--period", "60", "--batch-size", "10", "--no-preflight", "-q"],
                ["collect", "--ledger", str(ledger), "--base-url", emu.url, "--wait",
                 "--poll-interval", "2", "--max-poll-interval", "5", "-q"],
                ["report", "--ledger", str(ledger), "--out", str(work / "report.html"),
                 "--rate", "60", "--period", "60"],
            ]  # fmt: skip
            for step in steps:
                r = c.run_cli(step)
                if r["exit"] not in (0, 1):  # 1: the invalid lines were rejected, as meant
                    raise SystemExit(f"{step[0]} failed ({r['exit']}):\n{r['stderr']}")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1100,2350",
                 f"--screenshot={args.out.resolve()}", (work / "report.html").resolve().as_uri()],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
