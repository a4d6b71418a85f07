"""``/_emulator/*``: what a test or benchmark in another process reads and changes.

They serve the ``Emulator``'s own public surface over HTTP (``created``, ``calls``,
``deliveries``, the counters, ``config``, ``reconfigure``, ``complete_all``). They take no
auth and count against no limit: they are not part of the emulated service.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import msgspec
from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._postback import Delivery
from llmtasks.emulator._state import CallRecord, CreatedTask

_ANY: Final = msgspec.json.Decoder()
_ENCODE: Final = w.encoder.encode


class Inspected(Protocol):
    """What the endpoints read and change: the ``Emulator``'s public surface."""

    @property
    def created(self) -> list[CreatedTask]: ...
    @property
    def calls(self) -> list[CallRecord]: ...
    @property
    def deliveries(self) -> list[Delivery]: ...
    @property
    def tasks_created(self) -> int: ...
    @property
    def calls_count(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def balance_usd(self) -> float | None: ...
    @property
    def spent_usd(self) -> float: ...
    @property
    def config(self) -> EmulatorConfig: ...
    def reconfigure(self, **changes: Any) -> EmulatorConfig: ...
    def complete_all(self) -> None: ...


def _offset(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("offset", "0")))
    except ValueError:
        return 0


def _json(value: object) -> web.Response:
    return web.Response(body=_ENCODE(value), content_type="application/json")


class Inspection:
    """The inspection and test-control endpoints of one ``Emulator``."""

    def __init__(self, emulator: Inspected) -> None:
        self._emu = emulator

    async def created(self, request: web.Request) -> web.Response:
        return _json(self._emu.created[_offset(request) :])

    async def calls(self, request: web.Request) -> web.Response:
        return _json(self._emu.calls[_offset(request) :])

    async def deliveries(self, request: web.Request) -> web.Response:
        return _json(self._emu.deliveries[_offset(request) :])

    async def stats(self, request: web.Request) -> web.Response:
        emu = self._emu
        return _json(
            {
                "tasks_created": emu.tasks_created,
                "calls": emu.calls_count,
                "in_flight": emu.in_flight,
                "balance_usd": emu.balance_usd,
                "spent_usd": emu.spent_usd,
            }
        )

    async def config(self, request: web.Request) -> web.Response:
        return _json(self._emu.config)

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = _ANY.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            new = self._emu.reconfigure(**changes)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError) as err:
            return web.Response(status=400, text=str(err))
        return _json(new)

    async def complete(self, request: web.Request) -> web.Response:
        self._emu.complete_all()
        return web.Response(body=b"{}", content_type="application/json")
