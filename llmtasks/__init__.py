"""llmtasks: submit prompts in bulk to DataForSEO's LLM Responses task API, under the
account's rate limit, with an exact record of what became of every prompt."""

from llmtasks._errors import (
    AuthError,
    ConfigError,
    FundsError,
    InputError,
    LlmtasksError,
    ServiceError,
)
from llmtasks._input import InputLine, read_lines
from llmtasks._ledger import Ledger
from llmtasks._receipt import Receipt
from llmtasks._submit import RunStats, Submitter
from llmtasks._task import ChainMessage, Task
from llmtasks._version import __version__

__all__ = [
    "AuthError",
    "ChainMessage",
    "ConfigError",
    "FundsError",
    "InputError",
    "InputLine",
    "Ledger",
    "LlmtasksError",
    "Receipt",
    "RunStats",
    "ServiceError",
    "Submitter",
    "Task",
    "__version__",
    "read_lines",
]
