"""``llmtasks report``: one self-contained HTML page of a run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmtasks._cli_options import EXIT_OK, _positive_float, _positive_int, add_common


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run: calls, outcomes, cost, citations",
        description="Draw a run from its ledger: task_post calls per minute against the limit, "
        "outcomes and cost by engine and model, time from submit to result, and per engine "
        "the share of answers that searched the web, citations per answer and the top cited "
        "domains. The page has no external script, font or image: it opens offline. Needs "
        "matplotlib: pip install 'llmtasks[report]'.",
        epilog="example:\n  llmtasks report --ledger prompts.jsonl.ledger.sqlite --out report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ledger", required=True, help="the ledger of the run")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument(
        "--rate", type=_positive_int, default=2000, help="the limit drawn: calls per period (2000)"
    )
    p.add_argument("--period", type=_positive_float, default=60.0, help="seconds (default 60)")
    add_common(p)
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from llmtasks._ledger import Ledger
    from llmtasks._report import write_report

    ledger = Ledger.open_existing(args.ledger)
    try:
        facts = write_report(ledger, args.out, limit_per_minute=args.rate * 60 / args.period)
    finally:
        ledger.close()
    if not args.quiet:
        answers = sum(f.answers for f in facts.engines.values())
        print(
            f"llmtasks: report of {len(facts.calls)} calls and {answers} answers written to "
            f"{args.out}",
            file=sys.stderr,
        )
    return EXIT_OK
