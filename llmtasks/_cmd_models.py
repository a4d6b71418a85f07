"""``llmtasks models``: an engine's models and whether task_post takes them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from llmtasks._cli_options import (
    DOCUMENTED_PER_MINUTE,
    EXIT_OK,
    _positive_float,
    add_common,
    add_limiter,
    add_service,
    fleet_throttle,
    read_credentials,
)
from llmtasks._task import ENGINES


def register(sub: Any) -> None:
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
    add_service(p)
    p.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds to wait for a reply (60)"
    )
    add_limiter(p)
    add_common(p)
    p.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    login, password = read_credentials(args)
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
        fleet_throttle(args, login, "models", DOCUMENTED_PER_MINUTE, 60.0) as throttle,
    ):
        # Without --limiter, throttle is None: one call needs no local budget.
        models = await ModelCatalog(transport, throttle=throttle).models(args.engine)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(models)) + b"\n")
    else:
        print(format_table(models, args.engine))
    return EXIT_OK
