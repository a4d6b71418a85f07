"""``llmtasks receive``: serve the service's postbacks and pingbacks against a ledger."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from llmtasks._cli_options import (
    DOCUMENTED_PER_MINUTE,
    EXIT_INCOMPLETE,
    EXIT_OK,
    add_common,
    add_limiter,
    add_limits,
    add_service,
    fleet_throttle,
    read_credentials,
    service_limits,
)
from llmtasks._cmd_collect import results_where
from llmtasks._errors import ConfigError
from llmtasks._words import count

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
    add_service(p)
    add_limits(p, calls="task_get calls", retried="a failed call", function="task_get")
    add_limiter(p)
    add_common(p)
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
        login, password = read_credentials(args)
    except ConfigError:
        # Postbacks carry their result; only pingbacks need task_get.
        login, password = "", ""
    return asyncio.run(_receive(args, login, password))


async def _receive(args: argparse.Namespace, login: str, password: str) -> int:
    # A pingback's task_get takes its token from the fleet's task_get budget with --limiter.
    rate = args.rate or DOCUMENTED_PER_MINUTE
    async with fleet_throttle(args, login, "task_get", rate, args.period, args.margin) as throttle:
        return await _receive_with(args, login, password, throttle)


async def _receive_with(args: argparse.Namespace, login: str, password: str, throttle: Any) -> int:
    from llmtasks._receiver import Receiver, secret_from_env, serve_until
    from llmtasks._results_file import default_out

    out = args.out or default_out(args.ledger)
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
        **service_limits(args),
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


def receive_line(s: Any, out: str) -> str:
    return (
        f"llmtasks: receive: {count(s.postbacks, 'postback')}, {count(s.pingbacks, 'pingback')}, "
        f"{count(s.stored, 'result')} stored, {count(s.duplicates, 'duplicate')}, "
        f"{s.foreign:,} not in the ledger, {s.forbidden:,} without the secret, "
        f"{s.refused:,} refused in all; {results_where(out)[len('llmtasks: ') :]}"
    )
