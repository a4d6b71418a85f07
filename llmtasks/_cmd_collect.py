"""``llmtasks collect``: fetch the results of a ledger's tasks (tasks_ready, task_get)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from llmtasks._cli_options import (
    DOCUMENTED_PER_MINUTE,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _positive_float,
    add_common,
    add_limiter,
    add_limits,
    add_service,
    add_tasks_ready_rate,
    fleet_throttle,
    log,
    read_credentials,
    service_limits,
)
from llmtasks._errors import ConfigError, LlmtasksError
from llmtasks._task import ENGINES
from llmtasks._words import count, verb

COLLECT_EPILOG = """\
examples:
  llmtasks collect --ledger prompts.jsonl.ledger.sqlite             what is ready now
  llmtasks collect --ledger prompts.jsonl.ledger.sqlite --wait      until every task is done
  llmtasks collect --ledger run.sqlite --out answers.jsonl --direct   ask for each task by id

each output line: {"line", "tag", "task_id", "status_code", "status_message", "result"}.
the rate: without --rate, the account's own task_get limit as user_data reports it
(rates.limits.minute.ai_optimization.llm_responses.task_get, else minute.total); 2000 per 60 s
when the account cannot be read; a --rate above the account's limit is warned about.
re-running continues: results already written are not fetched or written again.
polling: tasks_ready at most 20 times a minute; with --wait, after a poll that found nothing,
wait --poll-interval seconds, doubling up to --max-poll-interval (defaults 5 and 120).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "collect",
        help="fetch the results of a ledger's tasks into a JSONL file",
        description="Poll tasks_ready, fetch every finished task of this ledger with "
        "task_get, append one JSON line per task to --out and record it in the ledger.",
        epilog=COLLECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ledger", required=True, help="the ledger of the submit run")
    p.add_argument(
        "--out",
        help="results JSONL, appended to (default: LEDGER without .ledger.sqlite + .results.jsonl)",
    )
    p.add_argument("--engine", choices=ENGINES, help="must match the ledger (default: its engine)")
    add_service(p)
    add_limits(p, calls="task_get calls", retried="a failed call", function="task_get")
    add_tasks_ready_rate(p)
    add_limiter(p)
    p.add_argument(
        "--wait", action="store_true", help="keep polling until every created task is collected"
    )
    p.add_argument("--max-wait", type=_positive_float, help="with --wait: give up after SECONDS")
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=5.0,
        help="seconds after an empty poll, doubling each time (default 5)",
    )
    p.add_argument(
        "--max-poll-interval",
        type=_positive_float,
        default=120.0,
        help="longest wait between polls (default 120)",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="first ask task_get for every uncollected task by id (for tasks older than "
        "tasks_ready's 3 days, or collected by another client)",
    )
    p.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=30.0,
        help="seconds between progress lines (default 30)",
    )
    add_common(p)
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    if args.max_poll_interval < args.poll_interval:
        raise ConfigError("--max-poll-interval must be at least --poll-interval")
    login, password = read_credentials(args)
    return asyncio.run(_collect(args, login, password))


def _progress_line(c: Any, elapsed_s: float) -> str:
    return collect_line(c.counts(), c.stats, elapsed_s)


def collect_line(counts: dict[str, int], s: Any, elapsed_s: float) -> str:
    nxt = f"; next poll in {s.next_poll_s:.0f} s" if s.next_poll_s else ""
    return (
        f"llmtasks: collect: {counts['collected']:,} of {count(counts['created'], 'created task')} "
        f"collected, {counts['failed']:,} failed, {counts['waiting']:,} waiting; "
        f"{count(s.polls, 'poll')}, {count(s.calls, 'task_get call')} in {elapsed_s:.0f} s{nxt}"
    )


def collect_notes(counts: dict[str, int], states: dict[str, int]) -> list[str]:
    """What the end of ``collect`` adds under its last progress line."""
    out = []
    if counts["failed"]:
        out.append(
            f"llmtasks: {count(counts['failed'], 'task')} failed on the service side (their "
            "lines have a status_code other than 20000 and no result; 40401 not found and "
            "40403 expired are final; any other failed task is refunded)"
        )
    not_created = sum(n for s, n in states.items() if s in ("pending", "sending", "unknown"))
    if not_created:
        out.append(
            f"llmtasks: {count(not_created, 'line')} of the ledger "
            f"{verb(not_created, 'is not a created task', 'are not created tasks')} yet "
            "(pending or unknown): collect does not wait for "
            f"{verb(not_created, 'it', 'them')}"
        )
    return out


def results_where(out: str) -> str:
    # The results file is created with its first result: say so rather than name no file.
    if os.path.exists(out):
        return f"llmtasks: results in {out}"
    return f"llmtasks: no results yet (none written to {out})"


async def _collect(args: argparse.Namespace, login: str, password: str) -> int:
    from llmtasks._ledger import Ledger

    ledger = Ledger.open_existing(args.ledger)
    engines = ledger.engines
    ledger.close()
    if args.engine is not None or len(engines) == 1:
        return await _collect_engine(args, login, password, args.engine)
    # A fan-out ledger: each engine's tasks from its own path, one engine after the other
    # (one at a time stays under the account's task_get limit).
    worst = EXIT_OK
    for engine in engines:
        if not args.quiet:
            print(f"llmtasks: collect: {engine}", file=sys.stderr)
        code = await _collect_engine(args, login, password, engine)
        if code == EXIT_INTERRUPTED:
            return code
        worst = max(worst, code)
    return worst


async def _collect_engine(
    args: argparse.Namespace, login: str, password: str, engine: str | None
) -> int:
    from llmtasks._collect import Collector
    from llmtasks._results_file import default_out

    out = args.out or default_out(args.ledger)
    collector = Collector(
        login=login,
        password=password,
        ledger=args.ledger,
        base_url=args.base_url,
        engine=engine,
        out=out,
        tasks_ready_rate=args.tasks_ready_rate,
        poll_interval_s=args.poll_interval,
        max_poll_interval_s=args.max_poll_interval,
        **service_limits(args),
    )
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        print("llmtasks: stopping: finishing the calls in flight", file=sys.stderr)
        collector.stop()

    started = time.monotonic()
    stop_error: LlmtasksError | None = None
    async with collector, contextlib.AsyncExitStack() as stack:
        ledger = collector.ledger
        assert ledger is not None
        if ledger.uncollected_count() or ledger.fetching():
            # task_get's own limit from user_data; nothing to fetch, no call at all.
            account = await read_account_or_none(args, args.base_url, login, password)
            rate, rate_source = choose_rate(args, account, "task_get", warn=True)
            collector.use_rate(rate, args.period)
            log.info("task_get at %d per %g s (%s)", rate, args.period, rate_source)
        if args.limiter:
            # The fleet's budgets: task_get at the rate just chosen, tasks_ready at its own.
            collector.share(
                await stack.enter_async_context(
                    fleet_throttle(
                        args, login, "task_get", collector.limiter.rate, args.period, args.margin
                    )
                ),
                await stack.enter_async_context(
                    fleet_throttle(args, login, "tasks_ready", args.tasks_ready_rate, 60.0)
                ),
            )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)

        async def progress() -> None:
            while True:
                await asyncio.sleep(args.progress_interval)
                print(_progress_line(collector, time.monotonic() - started), file=sys.stderr)

        reporter = None if args.quiet else asyncio.create_task(progress())
        try:
            async for _ in collector.collect(
                wait=args.wait, max_wait_s=args.max_wait, direct=args.direct
            ):
                pass
        except LlmtasksError as exc:
            stop_error = exc
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        counts = collector.counts()
        states = ledger.counts()
        if not args.quiet:
            print(_progress_line(collector, time.monotonic() - started), file=sys.stderr)
            print(results_where(out), file=sys.stderr)
            for note in collect_notes(counts, states):
                print(note, file=sys.stderr)
    if stop_error is not None:
        raise stop_error
    if interrupted:
        print("llmtasks: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if counts["waiting"] == 0 and counts["failed"] == 0 else EXIT_INCOMPLETE


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
