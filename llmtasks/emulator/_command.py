"""``python -m llmtasks emulate``: run the emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from llmtasks.emulator._config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT_S,
    EmulatorConfig,
)

_DEFAULTS = EmulatorConfig()


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emulate",
        help="run a local emulator of the LLM Responses API",
        description="Run a local emulator of DataForSEO's LLM Responses task API. "
        "Every fault is off by default.",
        epilog="examples:\n"
        "  llmtasks emulate --port 8765 --rate 2000 --completion-delay 5\n"
        "  llmtasks emulate --port 0 --fail-rate 0.05 --drop-rate 0.02 --seed 1\n"
        "  llmtasks submit prompts.jsonl --base-url http://127.0.0.1:8765   "
        "(credentials login / password)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = _DEFAULTS
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    p.add_argument("--login", default=d.login, help=f"Basic auth login (default {d.login!r})")
    p.add_argument(
        "--password", default=d.password, help=f"Basic auth password (default {d.password!r})"
    )
    p.add_argument(
        "--rate",
        type=int,
        default=None,
        help="task_post calls allowed per --period (default: no limit)",
    )
    p.add_argument(
        "--task-get-rate",
        type=int,
        default=None,
        help="task_get calls allowed per --period, a budget of its own (default: no limit)",
    )
    p.add_argument(
        "--models-rate",
        type=int,
        default=None,
        help="models calls allowed per --period (default: no limit)",
    )
    p.add_argument(
        "--total-rate",
        type=int,
        default=None,
        help="all limited calls per minute together (default: no limit)",
    )
    p.add_argument("--period", type=float, default=d.period_s, help="rate window, seconds (60)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=d.max_in_flight,
        help=f"simultaneous requests before 40209 (default {d.max_in_flight})",
    )
    p.add_argument(
        "--tasks-ready-rate",
        type=int,
        default=d.tasks_ready_rate,
        help=f"tasks_ready calls per minute (default {d.tasks_ready_rate})",
    )
    p.add_argument(
        "--id-list-rate",
        type=int,
        default=d.id_list_rate,
        help=f"id_list calls per minute (default {d.id_list_rate})",
    )
    p.add_argument(
        "--completion-delay",
        type=float,
        default=d.completion_delay_s,
        help="seconds until a created task is done (default 0)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=d.latency_ms,
        help=(
            "every API call is answered this long after it arrived, the emulator's own "
            "work on it included (default 0)"
        ),
    )
    p.add_argument(
        "--fail-rate",
        type=float,
        default=d.fail_rate,
        help="fraction of calls answered HTTP 500, nothing created (default 0)",
    )
    p.add_argument(
        "--drop-rate",
        type=float,
        default=d.drop_rate,
        help="fraction of calls whose reply is dropped after creating tasks (default 0)",
    )
    p.add_argument(
        "--funds-usd",
        type=float,
        default=d.funds_usd,
        help="starting balance; 40210 once spent (default: unlimited)",
    )
    p.add_argument(
        "--task-cost-usd",
        type=float,
        default=d.task_cost_usd,
        help=f"charge per created task (default {d.task_cost_usd})",
    )
    p.add_argument(
        "--spurious-401-rate",
        type=float,
        default=d.spurious_401_rate,
        help="fraction of calls answered 401 despite right credentials (default 0)",
    )
    p.add_argument(
        "--task-fail-rate",
        type=float,
        default=d.task_fail_rate,
        help="fraction of created tasks that fail on the service, refunded (default 0)",
    )
    p.add_argument(
        "--results-ttl",
        type=float,
        default=d.results_ttl_s,
        help="seconds a done task's result stays available, then 40403 (default 30 days)",
    )
    p.add_argument(
        "--clock-offset",
        type=float,
        default=d.clock_offset_s,
        help="seconds the service's clock is ahead of this machine's (default 0)",
    )
    p.add_argument(
        "--user-data-shape",
        choices=("nested", "flat"),
        default=d.user_data_shape,
        help="user_data limits as documented in 2026 (nested) or an older account's (flat)",
    )
    p.add_argument(
        "--sampling-together",
        choices=("accept", "refuse"),
        default=d.sampling_together,
        help="chat_gpt/claude temperature with top_p, unsettled in the docs (default accept)",
    )
    p.add_argument(
        "--gemini-search-options",
        choices=("accept", "refuse"),
        default=d.gemini_search_options,
        help="gemini force_web_search/country/city, unsettled in the docs (default accept)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connections open at once; the next get 503 (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="seconds a connection may spend on one request or idle, then it is cut "
        "(default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for faults, ids and results")
    p.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=d.record,
        help="keep every created task and call for inspection (default on)",
    )
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        login=args.login,
        password=args.password,
        rate=args.rate,
        task_get_rate=args.task_get_rate,
        models_rate=args.models_rate,
        total_rate=args.total_rate,
        period_s=args.period,
        max_in_flight=args.max_in_flight,
        tasks_ready_rate=args.tasks_ready_rate,
        id_list_rate=args.id_list_rate,
        completion_delay_s=args.completion_delay,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        drop_rate=args.drop_rate,
        funds_usd=args.funds_usd,
        task_cost_usd=args.task_cost_usd,
        spurious_401_rate=args.spurious_401_rate,
        task_fail_rate=args.task_fail_rate,
        results_ttl_s=args.results_ttl,
        clock_offset_s=args.clock_offset,
        user_data_shape=args.user_data_shape,
        sampling_together=args.sampling_together,
        gemini_search_options=args.gemini_search_options,
        seed=args.seed,
        record=args.record,
    )


async def serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> None:
    # The server (aiohttp.web) only when it runs: every command builds this one's parser.
    from llmtasks.emulator._server import Emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    emulator = Emulator(
        config,
        host=host,
        port=port,
        max_connections=max_connections,
        request_timeout_s=request_timeout_s,
    )
    async with emulator as emu:
        sys.stdout.write(f"llmtasks emulator listening on {emu.base_url}\n")
        sys.stdout.flush()
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if args.max_connections < 1:
            raise ValueError("--max-connections must be >= 1")
        if not args.request_timeout > 0:
            raise ValueError("--request-timeout must be > 0")
    except ValueError as exc:
        print(f"llmtasks emulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve(
                config,
                args.host,
                args.port,
                max_connections=args.max_connections,
                request_timeout_s=args.request_timeout,
            )
        )
    except OSError as exc:  # port taken, address not available
        print(f"llmtasks emulate: error: {exc}", file=sys.stderr)
        return 2
    return 0
