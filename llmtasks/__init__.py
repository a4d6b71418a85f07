"""llmtasks: submit prompts in bulk to DataForSEO's LLM Responses task API, under the
account's rate limit, with an exact record of what became of every prompt."""

from llmtasks._account import Account
from llmtasks._collect import Collector, Result, collect
from llmtasks._errors import (
    AuthError,
    ConfigError,
    FundsError,
    InputError,
    LlmtasksError,
    ServiceError,
    TaskRuleError,
)
from llmtasks._input import InputLine, read_lines
from llmtasks._ledger import Ledger
from llmtasks._models import ModelCatalog, ModelInfo, ModelList
from llmtasks._receipt import Receipt
from llmtasks._receiver import Receiver
from llmtasks._rules import TaskRules
from llmtasks._submit import RunStats, Submitter
from llmtasks._task import ChainMessage, Task
from llmtasks._version import __version__

__all__ = [
    "Account",
    "AuthError",
    "ChainMessage",
    "Collector",
    "ConfigError",
    "FundsError",
    "InputError",
    "InputLine",
    "Ledger",
    "LlmtasksError",
    "ModelCatalog",
    "ModelInfo",
    "ModelList",
    "Receipt",
    "Receiver",
    "Result",
    "RunStats",
    "ServiceError",
    "Submitter",
    "Task",
    "TaskRuleError",
    "TaskRules",
    "__version__",
    "collect",
    "read_lines",
]
