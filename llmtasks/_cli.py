"""Command line: ``python -m llmtasks COMMAND``. ``main(argv)`` returns the exit status.

Exit status: 0 every line created (blank lines skipped); 1 the run finished but some lines
were rejected, failed, unknown or left pending; 2 usage, configuration, credentials or
unreadable input; 3 no funds (40200/40210/40203 or --max-cost-usd spent); 4 the service
refused the call (bad path); 130 interrupted (in-flight calls drained and recorded first).

Each command is one module (``_cmd_*``) with its ``register(subparsers)``; the options they
share are in ``_cli_options``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from llmtasks import (
    _cmd_collect,
    _cmd_export,
    _cmd_models,
    _cmd_receive,
    _cmd_reconcile,
    _cmd_report,
    _cmd_status,
    _cmd_submit,
)
from llmtasks._cli_options import EXIT_INTERRUPTED, log
from llmtasks._errors import LlmtasksError
from llmtasks._version import __version__

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtasks",
        description="Submit prompts in bulk to DataForSEO's LLM Responses task API.",
    )
    parser.add_argument("--version", action="version", version=f"llmtasks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (
        _cmd_submit,
        _cmd_reconcile,
        _cmd_status,
        _cmd_export,
        _cmd_collect,
        _cmd_models,
        _cmd_receive,
        _cmd_report,
    ):
        command.register(sub)
    from llmtasks.emulator import _command as emulate_command

    emulate_command.register(sub)
    return parser


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
