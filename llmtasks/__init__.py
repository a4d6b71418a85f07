"""llmtasks: submit prompts in bulk to DataForSEO's LLM Responses task API, under the
account's rate limit, with an exact record of what became of every prompt.

The public names are the ones in ``__all__``; every module whose name starts with an
underscore is private and may change in any release."""

from llmtasks._collect import Result, collect
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
from llmtasks._receiver import Receiver
from llmtasks._shared import shared_throttle
from llmtasks._submit import Submitter
from llmtasks._task import ChainMessage, Task
from llmtasks._version import __version__

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
