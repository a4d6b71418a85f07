"""``llmtasks reconcile``: look up the lines left unknown (sent, no reply) on the service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from llmtasks._cli_options import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    _positive_int,
    add_common,
    add_limiter,
    add_service,
    add_tasks_ready_rate,
    fleet_throttle,
    read_credentials,
)
from llmtasks._words import count, verb


def register(sub: Any) -> None:
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
    add_service(p)
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
    add_tasks_ready_rate(p)
    add_limiter(p)
    add_common(p)
    p.set_defaults(handler=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    login, password = read_credentials(args)
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
    from llmtasks._transport import Transport

    async with (
        Transport(
            base_url=args.base_url,
            login=login,
            password=password,
            allow_insecure=args.allow_insecure,
        ) as transport,
        fleet_throttle(args, login, "id_list", max(2, args.id_list_rate), 60.0) as id_list_throttle,
        fleet_throttle(
            args, login, "tasks_ready", max(2, args.tasks_ready_rate), 60.0
        ) as ready_throttle,
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
