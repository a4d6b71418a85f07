"""``llmtasks status``: what a ledger says, as text or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmtasks._cli_options import EXIT_OK, add_common


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="what a ledger says: counts by state and code, cost, what is left",
        description="Counts by state and by status code, cost, first and last call, each "
        "run, and the commands that continue the job.",
        epilog="examples:\n  llmtasks status --ledger prompts.jsonl.ledger.sqlite\n"
        "  llmtasks status --ledger prompts.jsonl.ledger.sqlite --json | jq .states",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ledger", required=True, help="the ledger of the run")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    add_common(p)
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    import orjson

    from llmtasks._ledger import Ledger
    from llmtasks._status import format_status, ledger_status

    ledger = Ledger.open_existing(args.ledger)
    try:
        status = ledger_status(ledger)
    finally:
        ledger.close()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(status, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_status(status))
    return EXIT_OK
