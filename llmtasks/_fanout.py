"""``submit --engine chat_gpt,claude,gemini``: every line to each engine, one ledger.

One ``Submitter`` per engine, each over its own view of the one ledger (``Ledger.for_engine``:
its lines are that engine's, its generated tags name the engine, its batches go to that
engine's path only) and its own writer thread, so each keeps the write-ahead discipline of
a single-engine run unchanged. They share one throttle (the account's one limit and its 30
simultaneous calls) and one set of counters, and read the input once each: every engine
checks every line by its own rules and models list.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from llmtasks._cli_options import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, default_path
from llmtasks._errors import ConfigError, LlmtasksError
from llmtasks._ledger import Ledger
from llmtasks._submit import Submitter
from llmtasks._submit_run import (
    count_lines,
    on_signal,
    silent,
    submit_summary,
    submitter_from_args,
    task_post_throttle,
)


class _Group:
    """The submitters of one run, stopped together (Ctrl-C)."""

    def __init__(self, members: list[Submitter]) -> None:
        self.members = members

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.members)

    def stop(self) -> None:
        for s in self.members:
            s.stop()


async def submit_fanout(
    args: argparse.Namespace, base_url: str, login: str, password: str, fmt: Any
) -> int:
    from llmtasks._input import read_lines
    from llmtasks._outputs import ReceiptStream
    from llmtasks._progress import ProgressReporter
    from llmtasks._rules import TaskRules

    if args.shard is not None:
        raise ConfigError("--shard works with one --engine at a time")
    if args.input == "-":
        # Each engine reads the input on its own: stdin can be read only once.
        raise ConfigError("several --engine read the input once each: give a file, not -")
    engines: tuple[str, ...] = args.engines
    ledger_path = args.ledger or default_path(args.input, "ledger.sqlite")
    receipts_path = args.receipts or default_path(args.input, "receipts.jsonl")
    rejects_path = args.rejects or default_path(args.input, "rejects.jsonl")
    main = Ledger.open(ledger_path, input_name=args.input, engine=engines[0], engines=engines)
    views: list[Ledger] = []
    try:
        main.lock()
        views = [main] + [main.for_engine(e) for e in engines[1:]]
        subs = [
            submitter_from_args(
                args,
                base_url=base_url,
                login=login,
                password=password,
                engine=view.engine,
                ledger=view,
                default_model=args.model_by_engine[view.engine],
            )
            for view in views
        ]
        first = subs[0]
        group = _Group(subs)
        stop_error: LlmtasksError | None = None
        progress: ProgressReporter | None = None
        loop = asyncio.get_running_loop()
        entered: list[Submitter] = []
        try:
            for s in subs:
                await s.__aenter__()
                entered.append(s)
            for view in views[1:]:
                view.join_session(main.session_id or 0)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, group)
            try:
                total = count_lines(args.input)
                for s, view in zip(subs, views, strict=True):
                    if args.input != "-" and view.last_line():
                        quiet = TaskRules(view.engine, warn=silent)
                        await s.verify(
                            read_lines(
                                args.input,
                                fmt=fmt,
                                default_model=args.model_by_engine[view.engine],
                                rules=quiet,
                                engines=engines,
                            )
                        )
                if not args.no_preflight:
                    hint = None if total is None else total * len(engines)
                    account = await first.check_account(tasks_hint=hint)
                    for s in subs[1:]:
                        if account is not None:
                            s.apply_account(account)
                async with task_post_throttle(args, login, first.limiter.rate) as throttle:
                    # One account, one limit: every engine's calls take the same tokens and
                    # slots, and count in the same counters.
                    for s in subs:
                        s.throttle = throttle if throttle is not None else first.throttle
                        s.stats = first.stats
                    for s in subs:
                        await s.load_models()
                    if not args.quiet:
                        progress = ProgressReporter(
                            first.stats,
                            total_lines=None if total is None else total * len(engines),
                            interval_s=args.progress_interval,
                        )
                        progress.start()
                    outcomes = await asyncio.gather(
                        *(
                            _drive(
                                group,
                                s,
                                read_lines(
                                    args.input,
                                    fmt=fmt,
                                    default_model=s.default_model,
                                    rules=s.rules,
                                    engines=engines,
                                ),
                            )
                            for s in subs
                        ),
                        return_exceptions=True,
                    )
                    for outcome in outcomes:
                        if isinstance(outcome, BaseException):
                            raise outcome
            except LlmtasksError as exc:
                stop_error = exc
            finally:
                if progress is not None:
                    await progress.stop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        finally:
            for s in reversed(entered):
                await s.__aexit__(None, None, None)
        # Every (line, engine) in input order, from the ledger: the engines finish their
        # lines at different times, so the file is written once they are all recorded.
        stream = ReceiptStream(receipts_path, rejects_path)
        stream.finish(main)
        counts = main.counts(all_engines=True)
        if not args.quiet:
            text = submit_summary(
                args,
                first.stats,
                counts,
                receipts_path if stream.receipts else "",
                rejects_path,
                stream.rejects,
                main.path,
                rate_source=first.rate_source,
                models=next((s.models for s in subs if _builtin(s)), None),
                warned=_merged_warnings(subs),
            )
            per_engine = main.counts_by_engine()
            text += "\n" + "\n".join(
                f"llmtasks: {e}: "
                + ", ".join(f"{n:,} {state}" for state, n in sorted(per_engine.get(e, {}).items()))
                for e in engines
            )
            print(text.replace("line", "(line, engine) pair", 2), file=sys.stderr)
    finally:
        for view in views[1:]:
            view.close()
        main.close()
    if stop_error is not None:
        raise stop_error
    if group.interrupted:
        print("llmtasks: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    unfinished = sum(n for state, n in counts.items() if state not in ("created", "skipped"))
    return EXIT_OK if unfinished == 0 else EXIT_INCOMPLETE


def _builtin(s: Submitter) -> bool:
    return s.models is not None and s.models.source == "built-in"


def _merged_warnings(subs: list[Submitter]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in subs:
        for k, n in s.rules.warned.items():
            out[k] = out.get(k, 0) + n
    return out


async def _drive(group: _Group, s: Submitter, lines: Any) -> None:
    """One engine's run to its end; its receipts are in the ledger (read back at the end).
    An error that stops one engine (funds, credentials, a changed input) stops them all."""
    try:
        async for _ in s.submit_lines_batched(lines):
            pass
    except BaseException:
        group.stop()
        raise
