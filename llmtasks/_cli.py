"""Command line: ``python -m llmtasks COMMAND``. ``main(argv)`` returns the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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
    from llmtasks.emulator import _command as emulate_command

    emulate_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except LlmtasksError as exc:
        print(f"llmtasks: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
