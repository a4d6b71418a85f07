"""llmtasks: submit prompts in bulk to DataForSEO's LLM Responses task API, under the
account's rate limit, with an exact record of what became of every prompt.

The public names are the ones in ``__all__``; every module whose name starts with an
underscore is private and may change in any release."""

from typing import TYPE_CHECKING, Any

from llmtasks._collect import collect
from llmtasks._errors import (
    AuthError,
    ConfigError,
    FundsError,
    InputError,
    LlmtasksError,
    ServiceError,
)
from llmtasks._input import read_lines
from llmtasks._receipt import Receipt
from llmtasks._results_file import Result
from llmtasks._submit import Submitter
from llmtasks._task import ChainMessage, Task
from llmtasks._version import __version__

if TYPE_CHECKING:
    from llmtasks._receiver import Receiver
    from llmtasks._shared import shared_throttle

# Loaded on first use: the receiver's aiohttp.web and the Redis client cost every command
# (and every ``import llmtasks``) tens of milliseconds that only a few ever need.
_LAZY = {"Receiver": "llmtasks._receiver", "shared_throttle": "llmtasks._shared"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmtasks' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthError",
    "ChainMessage",
    "ConfigError",
    "FundsError",
    "InputError",
    "LlmtasksError",
    "Receipt",
    "Receiver",
    "Result",
    "ServiceError",
    "Submitter",
    "Task",
    "__version__",
    "collect",
    "read_lines",
    "shared_throttle",
]
