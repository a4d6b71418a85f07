"""Hostile bodies get a clean answer: the emulator is also a server people run.

One middleware in front of every route reads the body (aiohttp stops at ``client_max_size``,
inflated size included, and answers 413), then refuses, as the service does for JSON it
cannot read (40503 "Invalid POST data."), a body that is not UTF-8 or that nests beyond
what any endpoint takes, before a decoder can recurse into it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from llmtasks._inbound import json_within
from llmtasks.emulator import _wire as w

# 100 tasks of 500-character fields, message chains of 10 and \u escapes stay far below.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# A task_post body nests 4 deep (array, task, message_chain, message).
MAX_DEPTH: Final = 32
MAX_CONTAINERS: Final = 100_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists:
        started = time.perf_counter()
        try:
            body = await request.read()  # cached: the handler's read() gets the same bytes
        except aiohttp.ClientPayloadError:  # broken gzip or chunking
            return _invalid(started, 400)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return _invalid(started)
        if json_within(body, max_depth=MAX_DEPTH, max_containers=MAX_CONTAINERS) is not None:
            return _invalid(started)
    return await handler(request)


def _invalid(started: float, http_status: int = 200) -> web.Response:
    return web.Response(
        status=http_status,
        body=w.envelope(w.INVALID_POST, started),
        content_type="application/json",
    )
