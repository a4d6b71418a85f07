"""Hostile bodies get a clean answer: the emulator is also a server people run.

One middleware in front of every route reads the body itself, a chunk at a time, with the
same bounds as ``llmtasks receive`` (``_inbound.read_body``: size as sent, size inflated,
JSON nesting and count of arrays and objects), and refuses what breaks them before any
decoder sees it: 413 for too large, and for the rest what the service answers to JSON it
cannot read, 40503 "Invalid POST data.". aiohttp's own inflating is turned off (see
``Emulator.start``): its buffers are not bounded the same way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from llmtasks._inbound import Refused, read_body
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
            body = await read_body(
                request,
                max_body_bytes=MAX_BODY_BYTES,
                max_inflated_bytes=MAX_BODY_BYTES,
                max_depth=MAX_DEPTH,
                max_containers=MAX_CONTAINERS,
                sniff_gzip=False,
            )
            body.decode("utf-8")
        except Refused as refused:
            if refused.status == 400:
                return _invalid(started)
            return web.Response(status=refused.status, text=refused.reason + "\n")
        except UnicodeDecodeError:
            return _invalid(started)
        except (aiohttp.ClientError, OSError):
            return web.Response(status=400, text="connection lost while reading the body\n")
        # What request.read() returns from now on: the handlers read the body as before.
        request._read_bytes = body
    return await handler(request)


def _invalid(started: float) -> web.Response:
    return web.Response(body=w.envelope(w.INVALID_POST, started), content_type="application/json")
