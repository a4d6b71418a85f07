"""The ``collect``, ``models`` and ``receive`` subcommands (registered by ``_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from llmtasks._cli import (
    DOCUMENTED_PER_MINUTE,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _add_common,
    _add_service,
    _credentials,
    _positive_float,
    _positive_int,
    add_limiter,
    add_limits,
    choose_rate,
    log,
    read_account_or_none,
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

RECEIVE_EPILOG = """\
example:
  export LLMTASKS_RECEIVE_SECRET="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
  llmtasks receive --port 8080 --ledger prompts.jsonl.ledger.sqlite --out results.jsonl
  # and, with the same variable set:
  llmtasks submit prompts.jsonl --postback-url 'https://your.host/postback?id=$id&tag=$tag'

with LLMTASKS_RECEIVE_SECRET set, a delivery must carry secret=<it> in its URL (403
otherwise); submit adds it to --postback-url/--pingback-url. Listening on an address other
than loopback without it is refused unless --no-secret. See docs/collecting-results.md.

prints one line "llmtasks receiver listening on http://HOST:PORT" on stdout, then serves
until Ctrl-C / SIGTERM (or, with --until-done, until every created task is collected).
"""


def register(sub: Any) -> None:
    _add_collect(sub)
    _add_models(sub)
    _add_receive(sub)
    _add_report(sub)


def _limits(args: argparse.Namespace, rate: int | None = None) -> dict[str, Any]:
    if args.concurrency is not None and args.concurrency > 30:
        raise ConfigError("--concurrency must be at most 30 (the service allows 30 per account)")
    return {
        "rate": rate or args.rate or DOCUMENTED_PER_MINUTE,
        "period_s": args.period,
        "margin_s": args.margin,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "max_attempts": args.max_attempts,
        "allow_insecure": args.allow_insecure,
    }


def _shared(
    args: argparse.Namespace,
    login: str,
    function: str,
    rate: int,
    period_s: float,
    margin_s: float | None = None,
) -> Any:
    """The fleet's budget for ``function`` on ``--limiter``: a started RedisThrottle, or
    None without --limiter (or without credentials: nothing to call)."""
    from llmtasks._shared import shared_throttle

    return shared_throttle(
        args.limiter if login else None,
        login=login,
        rate=rate,
        period_s=period_s,
        margin_s=margin_s,
        # Simultaneous calls are counted per account across functions: the account's cap.
        max_in_flight=getattr(args, "concurrency", None) or 30,
        function=function,
    )


def _default_out(ledger: str) -> str:
    from llmtasks._collect import default_out

    return default_out(ledger)


# -- collect --------------------------------------------------------------------------------


def _add_collect(sub: Any) -> None:
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
    _add_service(p)
    add_limits(p, calls="task_get calls", retried="a failed call", function="task_get")
    p.add_argument(
        "--tasks-ready-rate",
        type=_positive_int,
        default=20,
        help="tasks_ready calls per minute (default 20, the service's limit)",
    )
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
    _add_common(p)
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    if args.max_poll_interval < args.poll_interval:
        raise ConfigError("--max-poll-interval must be at least --poll-interval")
    login, password = _credentials(args)
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


def receive_line(s: Any, out: str) -> str:
    return (
        f"llmtasks: receive: {count(s.postbacks, 'postback')}, {count(s.pingbacks, 'pingback')}, "
        f"{count(s.stored, 'result')} stored, {count(s.duplicates, 'duplicate')}, "
        f"{s.foreign:,} not in the ledger, {s.forbidden:,} without the secret, "
        f"{s.refused:,} refused in all; {_results_where(out)[len('llmtasks: ') :]}"
    )


def _results_where(out: str) -> str:
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

    out = args.out or _default_out(args.ledger)
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
        **_limits(args),
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
                    _shared(
                        args, login, "task_get", collector.limiter.rate, args.period, args.margin
                    )
                ),
                await stack.enter_async_context(
                    _shared(args, login, "tasks_ready", args.tasks_ready_rate, 60.0)
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
            print(_results_where(out), file=sys.stderr)
            for note in collect_notes(counts, states):
                print(note, file=sys.stderr)
    if stop_error is not None:
        raise stop_error
    if interrupted:
        print("llmtasks: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if counts["waiting"] == 0 and counts["failed"] == 0 else EXIT_INCOMPLETE


# -- models ---------------------------------------------------------------------------------


def _add_models(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list an engine's models and whether task_post takes them",
        description="Print the models endpoint of an engine as a table (or JSON).",
        epilog="examples:\n  llmtasks models --engine claude\n"
        "  llmtasks models --engine chat_gpt --json | jq -r '.[].model_name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engine", choices=ENGINES, default="chat_gpt")
    p.add_argument("--json", action="store_true", help="a JSON array of the model objects")
    _add_service(p)
    p.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds to wait for a reply (60)"
    )
    add_limiter(p)
    _add_common(p)
    p.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    login, password = _credentials(args)
    return asyncio.run(_models(args, login, password))


async def _models(args: argparse.Namespace, login: str, password: str) -> int:
    import msgspec

    from llmtasks._models import ModelCatalog, format_table
    from llmtasks._transport import Transport

    async with (
        Transport(
            base_url=args.base_url,
            login=login,
            password=password,
            timeout_s=args.timeout,
            allow_insecure=args.allow_insecure,
        ) as transport,
        _shared(args, login, "models", DOCUMENTED_PER_MINUTE, 60.0) as throttle,
    ):
        if throttle is None:
            models = await ModelCatalog(transport).models(args.engine)
        else:
            # One call, at the documented per-minute default (the models budget of a fleet).
            async with throttle.slot():
                models = await ModelCatalog(transport).models(args.engine)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(models)) + b"\n")
    else:
        print(format_table(models, args.engine))
    return EXIT_OK


# -- receive --------------------------------------------------------------------------------


def _add_receive(sub: Any) -> None:
    p = sub.add_parser(
        "receive",
        help="serve postbacks and pingbacks and store the results against a ledger",
        description="A small HTTP server for the service's push delivery: gzip postbacks "
        "(POST) are stored at once; after a pingback (GET ?id=&tag=) the result is fetched "
        "with task_get. Tasks not in the ledger get 404, so the service lists them in "
        "tasks_ready instead.",
        epilog=RECEIVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8080, help="TCP port (0: any free one; 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--ledger", required=True, help="the ledger of the submit run")
    p.add_argument("--out", help="results JSONL (default as for collect)")
    p.add_argument(
        "--until-done",
        action="store_true",
        help="exit once submit is done with the ledger and every created task is collected",
    )
    p.add_argument(
        "--no-secret",
        action="store_true",
        help="listen on a non-loopback address without LLMTASKS_RECEIVE_SECRET (only behind "
        "something that checks every request)",
    )
    p.add_argument(
        "--max-body",
        type=_size,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help="largest request body accepted as sent, e.g. 4M (default 4M; 413 above); "
        "inflated it may be twice that",
    )
    _add_service(p)
    add_limits(p, calls="task_get calls", retried="a failed call", function="task_get")
    add_limiter(p)
    _add_common(p)
    p.set_defaults(handler=cmd_receive)


DEFAULT_MAX_BODY = 4 * 1024 * 1024
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(text: str) -> int:
    """``4194304``, ``512K``, ``4M``: a number of bytes."""
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    try:
        n = float(text[: len(text) - len(unit)]) * _UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4194304, 512K, 4M)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte: {text!r}")
    return int(n)


def cmd_receive(args: argparse.Namespace) -> int:
    try:
        login, password = _credentials(args)
    except ConfigError:
        # Postbacks carry their result; only pingbacks need task_get.
        login, password = "", ""
    return asyncio.run(_receive(args, login, password))


async def _receive(args: argparse.Namespace, login: str, password: str) -> int:
    # A pingback's task_get takes its token from the fleet's task_get budget with --limiter.
    rate = args.rate or DOCUMENTED_PER_MINUTE
    async with _shared(args, login, "task_get", rate, args.period, args.margin) as throttle:
        return await _receive_with(args, login, password, throttle)


async def _receive_with(args: argparse.Namespace, login: str, password: str, throttle: Any) -> int:
    from llmtasks._receiver import Receiver, secret_from_env, serve_until

    out = args.out or _default_out(args.ledger)
    secret = secret_from_env()
    receiver = Receiver(
        ledger=args.ledger,
        out=out,
        host=args.host,
        port=args.port,
        login=login,
        password=password,
        base_url=args.base_url,
        secret=secret,
        no_secret=args.no_secret,
        max_body_bytes=args.max_body,
        max_inflated_bytes=2 * args.max_body,
        throttle=throttle,
        **_limits(args),
    )
    if secret is None and not args.quiet:
        print(
            "llmtasks: warning: no LLMTASKS_RECEIVE_SECRET: any delivery to this address "
            "is accepted (fine on loopback; see docs/collecting-results.md)",
            file=sys.stderr,
        )
    if not receiver.can_fetch:
        print(
            "llmtasks: warning: no credentials (DATAFORSEO_LOGIN/PASSWORD): pingbacks are "
            "recorded but not fetched; run 'llmtasks collect' later to fetch them",
            file=sys.stderr,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await receiver.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        print(f"llmtasks receiver listening on {receiver.url}", flush=True)
        await serve_until(receiver, stop, until_done=args.until_done)
        done = receiver.done()
    finally:
        await receiver.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    s = receiver.stats
    if not args.quiet:
        print(receive_line(s, out), file=sys.stderr)
    return EXIT_OK if done or not args.until_done else EXIT_INCOMPLETE


# -- report ---------------------------------------------------------------------------------


def _add_report(sub: Any) -> None:
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
    _add_common(p)
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
