"""``llmtasks submit``: its options, and one engine's run (several engines: ``_fanout``;
``--dry-run``: ``_dry_run``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtasks._cli_options import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _positive_float,
    _positive_int,
    add_common,
    add_limiter,
    add_limits,
    add_service,
    default_path,
    log,
    read_credentials,
)
from llmtasks._dry_run import dry_run
from llmtasks._errors import ConfigError, InputError, LlmtasksError
from llmtasks._fanout import submit_fanout
from llmtasks._submit_run import (
    count_lines,
    on_signal,
    silent,
    submit_summary,
    submitter_from_args,
    task_post_throttle,
    tuned_for_a_run,
)

if TYPE_CHECKING:
    from llmtasks._progress import ProgressReporter

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


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 2/4, not {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"I/N needs 1 <= I <= N, not {text!r}")
    return i, n


def register(sub: Any) -> None:
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
    add_service(p)
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
    add_common(p)
    p.set_defaults(handler=cmd_submit)


def check_input(source: str) -> None:
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
        check_input(args.input)
        return dry_run(args)
    credentials = ("", "") if args.emulate else read_credentials(args)
    check_input(args.input)
    with tuned_for_a_run():
        return asyncio.run(_submit(args, credentials))


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


async def _submit(args: argparse.Namespace, credentials: tuple[str, str]) -> int:
    from llmtasks._input import detect_format

    fmt = detect_format(args.input, args.format)
    async with _service(args, credentials) as (base_url, login, password):
        if len(args.engines) > 1:
            return await submit_fanout(args, base_url, login, password, fmt)
        return await _submit_to(args, base_url, login, password, fmt)


async def _submit_to(
    args: argparse.Namespace, base_url: str, login: str, password: str, fmt: Any
) -> int:
    from llmtasks._input import read_lines
    from llmtasks._outputs import ReceiptStream
    from llmtasks._progress import ProgressReporter
    from llmtasks._rules import TaskRules

    part = "" if args.shard is None else f"shard-{args.shard[0]}-of-{args.shard[1]}."
    ledger_path = args.ledger or default_path(args.input, f"{part}ledger.sqlite")
    receipts_path = args.receipts or default_path(args.input, f"{part}receipts.jsonl")
    rejects_path = args.rejects or default_path(args.input, f"{part}rejects.jsonl")
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
            loop.add_signal_handler(sig, on_signal, submitter)
        try:
            total = count_lines(args.input)
            if total is not None and args.shard is not None:
                total = len(range(args.shard[0] - 1, total, args.shard[1]))
            ledger = submitter.ledger
            assert ledger is not None
            if args.input != "-" and ledger.last_line():
                # Resuming: check the whole input against the ledger before any call. Only
                # digests matter here; the rules speak when the lines are read to be sent.
                quiet = TaskRules(args.engine, warn=silent)
                await submitter.verify(
                    read_lines(args.input, fmt=fmt, default_model=args.model, rules=quiet)
                )
            if not args.no_preflight:
                await submitter.check_account(tasks_hint=total)
            async with task_post_throttle(args, login, submitter.limiter.rate) as throttle:
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
