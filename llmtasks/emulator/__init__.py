"""A local emulator of DataForSEO's LLM Responses task API, for tests, benchmarks and demos.

``Emulator`` is a real aiohttp server on 127.0.0.1: Basic auth, the documented envelope,
per-task validation, rate and concurrency limits, task life cycle and switchable faults.
See docs/emulator.md.
"""

from typing import TYPE_CHECKING, Any

from llmtasks.emulator._config import DEFAULT_LOGIN, DEFAULT_PASSWORD, EmulatorConfig
from llmtasks.emulator._models import CATALOGUE, Model
from llmtasks.emulator._state import CallRecord, CreatedTask

if TYPE_CHECKING:
    from llmtasks.emulator._server import Emulator


def __getattr__(name: str) -> Any:
    # The server (aiohttp.web) on first use: ``python -m llmtasks`` registers the emulate
    # command on every run, and only that command serves.
    if name != "Emulator":
        raise AttributeError(f"module 'llmtasks.emulator' has no attribute {name!r}")
    from llmtasks.emulator._server import Emulator

    globals()["Emulator"] = Emulator
    return Emulator


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
