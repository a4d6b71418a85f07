"""Command line: ``python -m llmtasks COMMAND``. ``main(argv)`` returns the exit status.

Exit status: 0 every line created (blank lines skipped); 1 the run finished but some lines
were rejected, failed, unknown or left pending; 2 usage, configuration, credentials or
unreadable input; 3 no funds (40200/40210/40203 or --max-cost-usd spent); 4 the service
refused the call (bad path); 130 interrupted (in-flight calls drained and recorded first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtasks._errors import ConfigError, InputError, LlmtasksError
from llmtasks._receipt import STATES
from llmtasks._version import __version__
from llmtasks._words import count, verb

if TYPE_CHECKING:
    from llmtasks._progress import ProgressReporter
    from llmtasks._submit import Submitter

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("llmtasks")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130
LOGIN_ENV = "DATAFORSEO_LOGIN"
PASSWORD_ENV = "DATAFORSEO_PASSWORD"
BASE_URL_ENV = "LLMTASKS_BASE_URL"
#: The documented task_post limit per minute, when the account's own cannot be read.
DOCUMENTED_PER_MINUTE = 2000

SUBMIT_EPILOG = """\
examples:
  llmtasks submit prompts.jsonl --emulate            try it against the built-in emulator
  llmtasks submit prompts.txt --model gpt-4.1-mini   one prompt per line
  cat prompts.jsonl | llmtasks submit - --ledger run.sqlite
  llmtasks submit prompts.csv --dry-run              validate, count, show the worst-case cost

credentials come from DATAFORSEO_LOGIN and DATAFORSEO_PASSWORD (never from the command line).
re-running the same command with the same ledger sends only what is still pending.
the rate: without --rate, the account's own task_post limit as the free user_data call reports
it (rates.limits.minute.ai_optimization.llm_responses.task_post, else minute.total); 2000 per
60 s when the account cannot be read. A --rate above the account's limit is warned about.
lines are checked against the --engine's documented rules and its models list (fetched once,
cached for a day; the built-in table offline): only what the service certainly refuses is
rejected before sending; unsettled rules are warned about once and left to the service.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtasks",
        description="Submit prompts in bulk to DataForSEO's LLM Responses task API.",
    )
    parser.add_argument("--version", action="version", version=f"llmtasks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_submit(sub)
    _add_reconcile(sub)
    _add_status(sub)
    _add_export(sub)
    from llmtasks import _cli_results

    _cli_results.register(sub)
    from llmtasks.emulator import _command as emulate_command

    emulate_command.register(sub)
    return parser


def _engine_list(text: str) -> tuple[str, ...]:
    engines = tuple(e.strip() for e in text.split(","))
    for e in engines:
        if e not in ("chat_gpt", "claude", "gemini"):
            raise argparse.ArgumentTypeError(
                f"unknown engine {e!r}: choose from chat_gpt, claude, gemini (comma-separated)"
            )
    if len(set(engines)) != len(engines):
        raise argparse.ArgumentTypeError(f"an engine is named twice in {text!r}")
    return engines


def engine_models(engines: Sequence[str], given: Sequence[str] | None) -> dict[str, str | None]:
    """Each engine's default model from the ``--model`` options: ``NAME`` (one engine) or
    ``ENGINE=NAME``."""
    out: dict[str, str | None] = dict.fromkeys(engines)
    plain: str | None = None
    for item in given or ():
        engine, sep, name = item.partition("=")
        if not sep:
            if plain is not None:
                raise ConfigError(f"--model given twice ({plain!r}, {item!r})")
            plain = item
            continue
        if engine not in engines:
            raise ConfigError(
                f"--model {item}: {engine!r} is not an engine of this run "
                f"({', '.join(engines)}); add it to --engine"
            )
        if not name:
            raise ConfigError(f"--model {item}: no model name after '='")
        if out[engine] is not None:
            raise ConfigError(f"--model given twice for {engine}")
        out[engine] = name
    if plain is not None:
        if len(engines) > 1:
            raise ConfigError(
                f"--model {plain}: with several engines, say whose: --model ENGINE=NAME"
            )
        if out[engines[0]] is None:
            out[engines[0]] = plain
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 2/4, not {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"I/N needs 1 <= I <= N, not {text!r}")
    return i, n


def add_limits(p: argparse.ArgumentParser, *, calls: str, retried: str, function: str) -> None:
    """The account's limits and the retry budget: the same options on every command that
    calls the service under the account's rate."""
    p.add_argument(
        "--rate",
        type=_positive_int,
        help=f"{calls} per period (default: the account's {function} limit from user_data, "
        "else 2000 per 60 s)",
    )
    p.add_argument("--period", type=_positive_float, default=60.0, help="seconds (default 60)")
    p.add_argument(
        "--margin", type=float, help="seconds added to the period for safety (default 1%% of it)"
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        help="simultaneous calls, at most 30 (default: enough for the rate)",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds to wait for a reply (60)"
    )
    p.add_argument(
        "--max-attempts", type=_positive_int, default=8, help=f"tries of {retried} (default 8)"
    )


def add_limiter(p: argparse.ArgumentParser) -> None:
    """--limiter on every command that calls the service: one Redis for a whole fleet."""
    p.add_argument(
        "--limiter",
        metavar="URL",
        default=os.environ.get("LLMTASKS_LIMITER"),
        help="share one account's limits with other processes through Redis, "
        "redis://HOST:PORT/DB; each published limit (task_post, task_get, tasks_ready, "
        "id_list, models) is its own budget (env LLMTASKS_LIMITER; see docs/fleet.md)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def _add_submit(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="submit the prompts of a file (or stdin) as tasks",
        description="Validate, batch and submit every line of INPUT under the rate limit, "
        "recording the outcome of each line in a ledger.",
        epilog=SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", metavar="INPUT", help="a .jsonl/.ndjson, .csv or .txt file, or - for stdin"
    )
    p.add_argument(
        "--format", choices=("jsonl", "csv", "text"), help="default: from the suffix; stdin: jsonl"
    )
    p.add_argument(
        "--engine",
        dest="engines",
        type=_engine_list,
        default=("chat_gpt",),
        metavar="ENGINE[,ENGINE...]",
        help="chat_gpt, claude or gemini (default chat_gpt); several, comma-separated, send "
        "every line to each (a fan-out: one outcome per line and engine, one ledger)",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="[ENGINE=]NAME",
        help="model_name for tasks that do not name one; ENGINE=NAME for one engine of a "
        "fan-out (repeat it for each)",
    )
    _add_service(p)
    add_limits(
        p, calls="calls", retried="a call that certainly created nothing", function="task_post"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=100, help="tasks per call, 1..100 (default 100)"
    )
    p.add_argument("--ledger", help="SQLite ledger (default: INPUT.ledger.sqlite)")
    p.add_argument(
        "--receipts",
        help="JSONL, one line per input line (default: INPUT.receipts.jsonl; not written for "
        "an input with no lines)",
    )
    p.add_argument(
        "--rejects",
        help="JSONL of the lines that were not sent and why (default: INPUT.rejects.jsonl; "
        "not written, and an earlier one removed, when no line was rejected)",
    )
    p.add_argument("--max-cost-usd", type=float, help="never let this run's charges exceed this")
    p.add_argument(
        "--max-task-cost-usd",
        type=float,
        default=0.0102,
        help="worst case per task for budgets and --dry-run (default 0.0102)",
    )
    p.add_argument(
        "--resend-unknown",
        action="store_true",
        help="resend lines whose earlier call got no reply: may pay twice",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the free account check before the first call",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read and validate everything, print counts and the worst-case cost, send nothing",
    )
    p.add_argument(
        "--postback-url",
        help="the service POSTs each result here when done; '$id' and '$tag' are filled in "
        "(quote them: '...?id=$id'); with LLMTASKS_RECEIVE_SECRET set, secret=... is added; "
        "see 'llmtasks receive'",
    )
    p.add_argument(
        "--pingback-url",
        help="the service GETs this when a task is done ('$id', '$tag'; secret=... as above)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="submit only lines I, I+N, I+2N, ... (for N processes on one input; each shard "
        "has its own ledger, INPUT.shard-I-of-N.ledger.sqlite by default)",
    )
    add_limiter(p)
    p.add_argument(
        "--progress-interval",
        type=_positive_float,
        help="seconds between progress updates (default: 0.25 on a terminal, else 30); the "
        "pace shown is the calls made in the last --period seconds, against --rate",
    )
    p.add_argument(
        "--emulate",
        action="store_true",
        help="start the built-in emulator in-process and submit to it",
    )
    _add_common(p)
    p.set_defaults(handler=cmd_submit)


def _add_service(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        default=os.environ.get(BASE_URL_ENV, "https://api.dataforseo.com"),
        help=f"service URL (env {BASE_URL_ENV}; default https://api.dataforseo.com)",
    )
    p.add_argument(
        "--allow-insecure", action="store_true", help="allow a plain-http URL that is not loopback"
    )


def _add_reconcile(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile",
        help="look up unknown lines on the service: created, or pending again",
        description="For every line left 'unknown' (sent, no reply), look for its task on the "
        "service with id_list (by tag and prompt, over the time window of its POST). Found: "
        "'created' with its real task id. Not found: 'pending', so the next submit sends it. "
        "Windows end at the service's own clock (the Date of its reply) and reach back one "
        "month at most (id_list's metadata); a line outside that stays 'unknown'.",
        epilog="example:\n  llmtasks reconcile --ledger prompts.jsonl.ledger.sqlite\n"
        "  llmtasks submit prompts.jsonl          # then sends what is pending again",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ledger", required=True, help="the ledger of the run")
    _add_service(p)
    p.add_argument(
        "--min-age",
        type=float,
        default=120.0,
        help="seconds: leave lines sent more recently than this unknown (a POST that timed out "
        "may still be running on the service; default 120)",
    )
    p.add_argument(
        "--id-list-rate", type=_positive_int, default=10, help="id_list calls per minute (10)"
    )
    p.add_argument(
        "--tasks-ready-rate",
        type=_positive_int,
        default=20,
        help="tasks_ready calls per minute (default 20, the service's limit)",
    )
    add_limiter(p)
    _add_common(p)
    p.set_defaults(handler=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    login, password = _credentials(args)
    from llmtasks._ledger import Ledger

    ledger = Ledger.open_existing(args.ledger)
    try:
        if len(ledger.engines) == 1:
            return asyncio.run(_reconcile(args, ledger, login, password))
        # A fan-out ledger: each engine's unknown lines (id_list is shared: matched by the
        # path in each item's url and by tag; tasks_ready is each engine's own).
        worst = EXIT_OK
        for engine in ledger.engines:
            view = ledger if engine == ledger.engine else ledger.for_engine(engine)
            try:
                print(f"llmtasks: reconcile: {engine}", file=sys.stderr)
                worst = max(worst, asyncio.run(_reconcile(args, view, login, password)))
            finally:
                if view is not ledger:
                    view.close()
        return worst
    finally:
        ledger.close()


async def _reconcile(args: argparse.Namespace, ledger: Any, login: str, password: str) -> int:
    from llmtasks._reconcile import reconcile
    from llmtasks._shared import shared_throttle
    from llmtasks._transport import Transport

    def shared(function: str, rate: int) -> Any:
        return shared_throttle(
            args.limiter,
            login=login,
            rate=rate,
            period_s=60.0,
            margin_s=None,
            max_in_flight=30,
            function=function,
        )

    async with (
        Transport(
            base_url=args.base_url,
            login=login,
            password=password,
            allow_insecure=args.allow_insecure,
        ) as transport,
        shared("id_list", max(2, args.id_list_rate)) as id_list_throttle,
        shared("tasks_ready", max(2, args.tasks_ready_rate)) as ready_throttle,
    ):
        report = await reconcile(
            ledger,
            transport,
            min_age_s=args.min_age,
            id_list_rate=args.id_list_rate,
            tasks_ready_rate=args.tasks_ready_rate,
            id_list_throttle=id_list_throttle,
            tasks_ready_throttle=ready_throttle,
        )
    print(reconcile_summary(report), file=sys.stderr)
    return EXIT_OK if report.too_recent == 0 and report.unsearchable == 0 else EXIT_INCOMPLETE


def reconcile_summary(report: Any) -> str:
    out = [
        f"llmtasks: reconcile: {report.unknown:,} unknown: {report.found:,} found (created), "
        f"{report.not_found:,} not found (pending again), {report.too_recent:,} too recent to "
        f"tell; {count(report.calls, 'id_list call')}"
    ]
    if report.duplicates:
        out.append(
            f"llmtasks: warning: {count(report.duplicates, 'task')} "
            f"{verb(report.duplicates, 'exists', 'exist')} twice on the service (sent again "
            "earlier): each copy was charged"
        )
    if getattr(report, "unsearchable", 0):
        out.append(
            f"llmtasks: {count(report.unsearchable, 'unknown line')} could not be looked up: "
            "outside what id_list can search (the month it keeps tags for, up to the service's "
            "now); still unknown, the reason is in each receipt"
        )
    if report.not_found:
        out.append("llmtasks: run the same submit command again to send the pending lines")
    return "\n".join(out)


def _add_status(sub: Any) -> None:
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
    _add_common(p)
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


def _add_export(sub: Any) -> None:
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
    _add_common(p)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    handler: Handler = args.handler
    try:
        return handler(args)
    except LlmtasksError as exc:
        print(f"llmtasks: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llmtasks: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    sys.exit(main())


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"llmtasks: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


# -- submit ---------------------------------------------------------------------------------


def _default_path(source: str, suffix: str) -> str:
    base = "stdin" if source == "-" else source
    return f"{base}.{suffix}"


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    login = os.environ.get(LOGIN_ENV, "")
    password = os.environ.get(PASSWORD_ENV, "")
    if not login or not password:
        raise ConfigError(
            f"no credentials: set {LOGIN_ENV} and {PASSWORD_ENV} (the API login and password "
            "from https://app.dataforseo.com/api-access), or use --emulate to try the emulator"
        )
    return login, password


def _check_input(source: str) -> None:
    if source == "-":
        return
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file")
    if path.is_dir():
        raise InputError(f"{source}: is a directory")
    if not os.access(path, os.R_OK):
        raise InputError(f"{source}: permission denied")


def cmd_submit(args: argparse.Namespace) -> int:
    # The first engine stands for the run where one is enough (a single-engine run: the one).
    args.engine = args.engines[0]
    args.model_by_engine = engine_models(args.engines, args.models)
    args.model = args.model_by_engine[args.engine]
    if args.batch_size > 100:
        raise ConfigError(
            "--batch-size must be 1..100 (the service refuses more than 100 per call)"
        )
    if args.concurrency is not None and args.concurrency > 30:
        raise ConfigError("--concurrency must be at most 30 (the service allows 30 per account)")
    if args.dry_run:
        _check_input(args.input)
        return _dry_run(args)
    credentials = ("", "") if args.emulate else _credentials(args)
    _check_input(args.input)
    return asyncio.run(_submit(args, credentials))


def _dry_run(args: argparse.Namespace) -> int:
    from llmtasks._input import BLANK, detect_format, read_lines
    from llmtasks._rules import TaskRules

    fmt = detect_format(args.input, args.format)
    total = {"valid": 0, "rejected": 0, "skipped": 0, "routed": 0}
    all_calls = 0
    for engine in args.engines:
        counts = {"valid": 0, "rejected": 0, "skipped": 0}
        shown = 0
        # A dry run sends nothing, not even the models call: the built-in table stands in.
        rules = TaskRules(engine)
        model = args.model_by_engine[engine]
        lines = read_lines(
            args.input, fmt=fmt, default_model=model, rules=rules, engines=args.engines
        )
        for il in lines:
            if il.skipped and il.reason != BLANK:
                counts["routed"] = counts.get("routed", 0) + 1
            elif il.skipped:
                counts["skipped"] += 1
            elif il.task is None:
                counts["rejected"] += 1
                if shown < 20:
                    where = f" field {il.field}:" if il.field else ""
                    who = f" {engine}:" if len(args.engines) > 1 else ""
                    print(f"{args.input}:{il.line}:{who}{where} {il.reason}", file=sys.stderr)
                    shown += 1
            else:
                counts["valid"] += 1
        calls = -(-counts["valid"] // args.batch_size)
        all_calls += calls
        for k, n in counts.items():
            total[k] = total.get(k, 0) + n
        summary = dry_run_summary(args, counts, calls)
        if len(args.engines) > 1:
            summary = summary.replace("dry run of", f"dry run ({engine}) of", 1)
        print(summary, file=sys.stderr)
    if len(args.engines) > 1:
        worst = total["valid"] * args.max_task_cost_usd
        print(
            f"llmtasks: dry run, all {len(args.engines)} engines: {total['valid']:,} tasks "
            f"valid, {total['rejected']:,} rejected; {count(all_calls, 'call')} under the one "
            f"account limit; worst-case cost ${worst:.4f}; nothing sent",
            file=sys.stderr,
        )
    print(
        f"llmtasks: models checked against the built-in {', '.join(args.engines)} "
        f"table{'s' if len(args.engines) > 1 else ''} (offline: a dry run makes no call)",
        file=sys.stderr,
    )
    return EXIT_OK if total["rejected"] == 0 else EXIT_INCOMPLETE


def dry_run_summary(args: argparse.Namespace, counts: dict[str, int], calls: int) -> str:
    lines = sum(counts.values())
    worst = counts["valid"] * args.max_task_cost_usd
    rate = args.rate or round(DOCUMENTED_PER_MINUTE * args.period / 60)
    whose = "" if args.rate else ", the documented default: a run takes the account's own"
    minutes = calls / rate * args.period / 60
    return (
        f"llmtasks: dry run of {args.input}: {count(lines, 'line')}, {counts['valid']:,} valid, "
        f"{counts['rejected']:,} rejected, {counts['skipped']:,} blank"
        + (f", {counts['routed']:,} for other engines" if counts.get("routed") else "")
        + "; "
        f"{count(calls, 'call')} (at least {minutes:.1f} min at {rate:,} per "
        f"{args.period:g} s{whose}); worst-case cost ${worst:.4f} at ${args.max_task_cost_usd} "
        "per task; nothing sent"
    )


def _count_lines(source: str) -> int | None:
    if source == "-":
        return None
    n, last = 0, b"\n"
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")  # a last line without its newline is a line too


@contextlib.asynccontextmanager
async def _service(
    args: argparse.Namespace, credentials: tuple[str, str]
) -> AsyncIterator[tuple[str, str, str]]:
    """Yield (base_url, login, password): the real service, or an in-process emulator."""
    if not args.emulate:
        yield args.base_url, credentials[0], credentials[1]
        return
    from llmtasks.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(rate=args.rate, period_s=args.period, max_in_flight=30)
    async with Emulator(config) as emu:
        log.info("emulator listening on %s", emu.base_url)
        yield emu.base_url, config.login, config.password


async def read_account_or_none(
    args: argparse.Namespace, base_url: str, login: str, password: str
) -> Any:
    """user_data before anything else (its limits set the rate); None when it does not
    answer (the run goes on at the documented default). Wrong credentials stop here."""
    from llmtasks._account import AccountUnavailable, read_account
    from llmtasks._transport import Transport

    async with Transport(
        base_url=base_url,
        login=login,
        password=password,
        timeout_s=args.timeout,
        allow_insecure=args.allow_insecure,
    ) as transport:
        try:
            return await read_account(transport)
        except AccountUnavailable as exc:
            log.warning("%s; going on at the documented %d calls per minute", exc, 2000)
            return None


def choose_rate(
    args: argparse.Namespace, account: Any, function: str, *, warn: bool = False
) -> tuple[int, str]:
    """(calls per --period, where that number comes from). ``warn``: say so when --rate is
    above the account's limit for ``function``."""
    limit = account.calls_per_minute(function) if account is not None else None
    if args.rate is not None:
        ours = args.rate * 60 / args.period
        if warn and limit is not None and ours > limit:
            log.warning(
                "--rate is %.0f calls per minute but the account allows %d for %s (%s): expect "
                "40202 answers and a slowed-down run; lower --rate or leave it out",
                ours,
                limit,
                function,
                account.source(function),
            )
        return args.rate, "--rate"
    if limit is None:
        rate = round(DOCUMENTED_PER_MINUTE * args.period / 60)
        return max(2, rate), "the documented default; the account's limit was not available"
    rate = max(2, round(limit * args.period / 60))
    return rate, f"the account's limit, {account.source(function)}"


async def _submit(args: argparse.Namespace, credentials: tuple[str, str]) -> int:
    from llmtasks._input import detect_format

    fmt = detect_format(args.input, args.format)
    async with _service(args, credentials) as (base_url, login, password):
        if len(args.engines) > 1:
            from llmtasks._fanout import submit_fanout

            return await submit_fanout(args, base_url, login, password, fmt)
        return await _submit_to(args, base_url, login, password, fmt)


async def _submit_to(
    args: argparse.Namespace, base_url: str, login: str, password: str, fmt: Any
) -> int:
    from llmtasks._input import read_lines
    from llmtasks._outputs import ReceiptStream
    from llmtasks._progress import ProgressReporter
    from llmtasks._rules import TaskRules
    from llmtasks._shared import shared_throttle

    part = "" if args.shard is None else f"shard-{args.shard[0]}-of-{args.shard[1]}."
    ledger_path = args.ledger or _default_path(args.input, f"{part}ledger.sqlite")
    receipts_path = args.receipts or _default_path(args.input, f"{part}receipts.jsonl")
    rejects_path = args.rejects or _default_path(args.input, f"{part}rejects.jsonl")
    loop = asyncio.get_running_loop()
    stop_error: LlmtasksError | None = None
    progress: ProgressReporter | None = None
    stream: ReceiptStream | None = None
    # The rate is settled by the account check (without --rate: the account's own limit),
    # after the resume check, which must refuse a changed input before any call.
    submitter = submitter_from_args(
        args,
        base_url=base_url,
        login=login,
        password=password,
        engine=args.engine,
        ledger=ledger_path,
        default_model=args.model,
        shard=args.shard,
    )
    async with submitter:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, submitter)
        try:
            total = _count_lines(args.input)
            if total is not None and args.shard is not None:
                total = len(range(args.shard[0] - 1, total, args.shard[1]))
            ledger = submitter.ledger
            assert ledger is not None
            if args.input != "-" and ledger.last_line():
                # Resuming: check the whole input against the ledger before any call. Only
                # digests matter here; the rules speak when the lines are read to be sent.
                quiet = TaskRules(args.engine, warn=_silent)
                await submitter.verify(
                    read_lines(args.input, fmt=fmt, default_model=args.model, rules=quiet)
                )
            if not args.no_preflight:
                await submitter.check_account(tasks_hint=total)
            async with shared_throttle(
                args.limiter,
                login=login,
                rate=submitter.limiter.rate,
                period_s=args.period,
                margin_s=args.margin,
                max_in_flight=args.concurrency,
                function="task_post",
            ) as throttle:
                if throttle is not None:
                    submitter.throttle = throttle
                await submitter.load_models()
                lines = read_lines(
                    args.input, fmt=fmt, default_model=args.model, rules=submitter.rules
                )
                if not args.quiet:
                    progress = ProgressReporter(
                        submitter.stats,
                        total_lines=total,
                        interval_s=args.progress_interval,
                    )
                    progress.start()
                # Receipts are written as outcomes arrive; see ReceiptStream for resumed runs.
                stream = ReceiptStream(
                    receipts_path,
                    rejects_path,
                    first_line=1 if args.shard is None else args.shard[0],
                    step=1 if args.shard is None else args.shard[1],
                )
                try:
                    async for receipts in submitter.submit_lines_batched(lines):
                        stream.add(receipts)
                except BaseException:
                    if not isinstance(sys.exc_info()[1], LlmtasksError):
                        stream.abort()
                    raise
        except LlmtasksError as exc:
            stop_error = exc
        finally:
            if progress is not None:
                await progress.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        ledger = submitter.ledger
        assert ledger is not None
        if stream is None:
            # Stopped before the run began (input changed, account check): rebuilt as before.
            stream = ReceiptStream(receipts_path, rejects_path)
        # No empty files: a run with nothing rejected leaves no rejects file.
        stream.finish(ledger)
        if not stream.receipts:
            receipts_path = ""
        n_rejects = stream.rejects
        counts = ledger.counts()
        if not args.quiet:
            text = submit_summary(
                args,
                submitter.stats,
                counts,
                receipts_path,
                rejects_path,
                n_rejects,
                ledger.path,
                rate_source=submitter.rate_source,
                models=submitter.models,
                warned=submitter.rules.warned,
            )
            print(text, file=sys.stderr)
    if stop_error is not None:
        raise stop_error
    if submitter.interrupted:
        print("llmtasks: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    unfinished = sum(n for state, n in counts.items() if state not in ("created", "skipped"))
    return EXIT_OK if unfinished == 0 else EXIT_INCOMPLETE


def _silent(message: str) -> None:
    pass


def submitter_from_args(
    args: argparse.Namespace,
    *,
    base_url: str,
    login: str,
    password: str,
    engine: str,
    ledger: Any,
    default_model: str | None,
    shard: tuple[int, int] | None = None,
) -> Submitter:
    """One engine's Submitter with the run's options (one per engine in a fan-out)."""
    from llmtasks._submit import Submitter

    return Submitter(
        login=login,
        password=password,
        engine=engine,
        base_url=base_url,
        rate=args.rate,
        period_s=args.period,
        margin_s=args.margin,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        ledger=ledger,
        input_name=args.input,
        default_model=default_model,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        max_cost_usd=args.max_cost_usd,
        max_task_cost_usd=args.max_task_cost_usd,
        resend_unknown=args.resend_unknown,
        allow_insecure=args.allow_insecure,
        postback_url=_push_url(args.postback_url, "--postback-url"),
        pingback_url=_push_url(args.pingback_url, "--pingback-url"),
        shard=shard,
    )


def _push_url(url: str | None, option: str) -> str | None:
    """With LLMTASKS_RECEIVE_SECRET set, the URL the service calls carries it for ``receive``."""
    from llmtasks._receiver import secret_from_env, with_secret

    secret = secret_from_env()
    if url is None or secret is None:
        return url
    return with_secret(url, secret, option=option)


def _on_signal(submitter: Any) -> None:
    if submitter.interrupted:
        # A second Ctrl-C: the user means it. In-flight calls are lost to 'unknown' on resume.
        raise KeyboardInterrupt
    print(
        "llmtasks: stopping: finishing the calls in flight (Ctrl-C again to abort)", file=sys.stderr
    )
    submitter.stop()


def submit_summary(
    args: argparse.Namespace,
    stats: Any,
    counts: dict[str, int],
    receipts_path: str,
    rejects_path: str,
    n_rejects: int,
    ledger_path: str,
    *,
    rate_source: str = "",
    models: Any = None,
    warned: dict[str, int] | None = None,
) -> str:
    """What ``submit`` prints at the end: counts, calls against the limit (and where that
    limit came from), where things are, and what was checked how."""
    from llmtasks._pace import summary_pace

    s = stats
    total = sum(counts.values())
    parts = [
        f"{counts.get(k, 0):,} {k}" for k in ("created", "rejected", "failed", "unknown", "pending")
    ]
    if counts.get("skipped"):
        parts.append(f"{counts['skipped']:,} blank")
    earlier = f" ({s.already_done:,} done by earlier runs)" if s.already_done else ""
    pace = summary_pace(
        s.window, calls=s.calls, retries=s.retries, elapsed_s=s.elapsed_s, now=s.ended
    )
    where = (
        f"llmtasks: receipts in {receipts_path}"
        if receipts_path
        else "llmtasks: no receipts: the input has no lines"
    )
    if n_rejects:
        where += f", {count(n_rejects, 'reject')} in {rejects_path}"
    out = [
        f"llmtasks: {count(s.lines_read, 'line')} read{earlier}; ledger holds "
        f"{count(total, 'line')}: {', '.join(parts)}",
        f"llmtasks: {pace}; cost reported by the service ${s.cost_usd:.4f}"
        + (f"; the limit is {rate_source}" if rate_source else ""),
        where,
    ]
    if models is not None and models.source == "built-in":
        out.append(
            f"llmtasks: models checked against the built-in {models.engine} table, not the "
            f"service's list ({models.note})"
        )
    if warned:
        kinds = ", ".join(f"{k} ({count(n, 'line')})" for k, n in warned.items())
        out.append(f"llmtasks: sent for the service to judge: {kinds}")
    if counts.get("unknown"):
        out.append(
            f"llmtasks: {count(counts['unknown'], 'line')} unknown (sent, no reply): run "
            f"'llmtasks reconcile --ledger {ledger_path}' before sending "
            f"{'it' if counts['unknown'] == 1 else 'them'} again"
        )
    return "\n".join(out)
