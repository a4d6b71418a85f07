"""``llmtasks export``: receipts, results or citations as JSONL, CSV or Parquet."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal

from llmtasks._cli_options import EXIT_OK, add_common, log
from llmtasks._errors import ConfigError
from llmtasks._receipt import STATES
from llmtasks._words import count


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="receipts, or the collected results and their citations, as tables",
        description="Write one receipt per input line, in input order, from the ledger; with "
        "--results one row per collected task (answer, tokens, cost, citations count, cited "
        "domains, and the prompt from the input file); with --citations one row per citation.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ledger", required=True, help="the ledger of the run")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--results", action="store_true", help="one row per collected task, failed ones too"
    )
    what.add_argument("--citations", action="store_true", help="one row per citation")
    p.add_argument(
        "--format",
        choices=("jsonl", "csv", "parquet"),
        default="jsonl",
        help="parquet: --results/--citations only, needs pip install 'llmtasks[parquet]'",
    )
    p.add_argument("--out", default="-", help="file to write (default: stdout)")
    p.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="receipts: only lines in this state (repeatable)",
    )
    p.add_argument(
        "--input",
        metavar="PATH",
        help="--results: the input the run read, for the prompt columns (default: the path "
        "the run recorded)",
    )
    p.add_argument(
        "--input-format", choices=("jsonl", "csv", "text"), help="of --input (default: suffix)"
    )
    p.add_argument(
        "--no-input", action="store_true", help="--results: leave the prompt columns empty"
    )
    add_common(p)
    p.set_defaults(handler=cmd_export)


EXPORT_EPILOG = """\
examples:
  llmtasks export --ledger run.sqlite --format csv --out receipts.csv
  llmtasks export --ledger run.sqlite --state created | wc -l
  llmtasks export --ledger run.sqlite --results --format csv --out results.csv
  llmtasks export --ledger run.sqlite --citations --format parquet --out citations.parquet
"""


def cmd_export(args: argparse.Namespace) -> int:
    from llmtasks._ledger import Ledger

    table: Literal["results", "citations"] | None = (
        "results" if args.results else "citations" if args.citations else None
    )
    if table is None and args.format == "parquet":
        raise ConfigError("--format parquet is for --results or --citations")
    if table != "results" and (args.input or args.no_input or args.input_format):
        raise ConfigError("--input, --input-format and --no-input go with --results")
    if table is not None and args.state:
        raise ConfigError("--state goes with receipts, not --results/--citations")
    ledger = Ledger.open_existing(args.ledger)
    try:
        if table is None:
            from llmtasks._outputs import write_csv, write_jsonl

            states = set(args.state) if args.state else None
            write = write_csv if args.format == "csv" else write_jsonl
            n = write(args.out, ledger, states=states)
            noun = "receipt"
        else:
            from llmtasks._export import export_table

            def warn(message: str) -> None:
                log.warning("%s", message)

            n = export_table(
                table,
                ledger,
                args.out,
                fmt=args.format,
                input_path=args.input,
                no_input=args.no_input,
                input_format=args.input_format,
                warn=warn,
            )
            noun = "result row" if table == "results" else "citation"
    finally:
        ledger.close()
    if args.out != "-" and not args.quiet:
        print(f"llmtasks: {count(n, noun)} written to {args.out}", file=sys.stderr)
    return EXIT_OK
