"""A local emulator of DataForSEO's LLM Responses task API, for tests, benchmarks and demos.

``Emulator`` is a real aiohttp server on 127.0.0.1: Basic auth, the documented envelope,
per-task validation, rate and concurrency limits, task life cycle and switchable faults.
See docs/emulator.md.
"""

from llmtasks.emulator._config import DEFAULT_LOGIN, DEFAULT_PASSWORD, EmulatorConfig
from llmtasks.emulator._models import CATALOGUE, Model
from llmtasks.emulator._server import Emulator
from llmtasks.emulator._state import CallRecord, CreatedTask

__all__ = [
    "CATALOGUE",
    "DEFAULT_LOGIN",
    "DEFAULT_PASSWORD",
    "CallRecord",
    "CreatedTask",
    "Emulator",
    "EmulatorConfig",
    "Model",
]
