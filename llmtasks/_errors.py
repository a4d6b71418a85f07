"""Errors that stop a run. A failed *task* is never an exception: it is a receipt."""

from __future__ import annotations


class LlmtasksError(Exception):
    """Base of every error that stops a run. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(LlmtasksError):
    """Bad option, missing credentials, refused base URL."""


class InputError(LlmtasksError):
    """The input cannot be read at all (missing file, input changed under the ledger)."""


class TaskRuleError(LlmtasksError, ValueError):
    """A task breaks a rule the service certainly enforces; ``field`` names the field to blame.

    Also a ``ValueError``: raised while a ``Task`` is decoded, msgspec turns it into a
    ``ValidationError`` (how a bad line becomes a reject naming its field), and code that
    caught ``ValueError`` before keeps working. ``TaskRules.check`` raises it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class AuthError(LlmtasksError):
    """The service refused the credentials (40100, 40101, 40104)."""


class FundsError(LlmtasksError):
    """The account cannot pay: 40200, 40210, 40203 (daily cost limit), or --max-cost-usd spent."""

    exit_code = 3


class ServiceError(LlmtasksError):
    """The service answered in a way that makes going on pointless (404 path, 40400)."""

    exit_code = 4
