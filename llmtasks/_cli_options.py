"""What every command shares: exit statuses, credentials, and the option groups (service URL,
the account's limits, ``--limiter``, verbosity) with the settings they turn into."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from llmtasks._errors import ConfigError

log = logging.getLogger("llmtasks")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130
LOGIN_ENV = "DATAFORSEO_LOGIN"
PASSWORD_ENV = "DATAFORSEO_PASSWORD"
BASE_URL_ENV = "LLMTASKS_BASE_URL"
#: The documented task_post limit per minute, when the account's own cannot be read.
DOCUMENTED_PER_MINUTE = 2000


def read_credentials(args: argparse.Namespace) -> tuple[str, str]:
    login = os.environ.get(LOGIN_ENV, "")
    password = os.environ.get(PASSWORD_ENV, "")
    if not login or not password:
        raise ConfigError(
            f"no credentials: set {LOGIN_ENV} and {PASSWORD_ENV} (the API login and password "
            "from https://app.dataforseo.com/api-access), or use --emulate to try the emulator"
        )
    return login, password


def default_path(source: str, suffix: str) -> str:
    base = "stdin" if source == "-" else source
    return f"{base}.{suffix}"


# The option types keep their names: argparse prints them ("invalid _positive_int value").


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


def add_tasks_ready_rate(p: argparse.ArgumentParser) -> None:
    """collect and reconcile both call tasks_ready, whose limit is its own."""
    p.add_argument(
        "--tasks-ready-rate",
        type=_positive_int,
        default=20,
        help="tasks_ready calls per minute (default 20, the service's limit)",
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


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def add_service(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        default=os.environ.get(BASE_URL_ENV, "https://api.dataforseo.com"),
        help=f"service URL (env {BASE_URL_ENV}; default https://api.dataforseo.com)",
    )
    p.add_argument(
        "--allow-insecure", action="store_true", help="allow a plain-http URL that is not loopback"
    )


def service_limits(args: argparse.Namespace, rate: int | None = None) -> dict[str, Any]:
    """The keyword arguments of ``add_limits``'s options (collect, receive)."""
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


def fleet_throttle(
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
