"""Serving HTTP to strangers: bounded bodies, bounded inflation, bounded nesting, and a
listener that caps the connections open at once and how long any of them may stay busy.

Every limit here is a number of bytes or seconds that an anonymous sender cannot raise: a
body is read chunk by chunk and refused as soon as it is longer than allowed, a compressed
body is inflated at most ``max_inflated_bytes + 1`` bytes at a time (so a 1 MB gzip of
1 GB of zeros costs no more than the limit), and JSON nesting is measured at C speed
before any decoder recurses into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from array import array
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from llmtasks._errors import LlmtasksError

GZIP_MAGIC: Final = b"\x1f\x8b"
_READ_CHUNK: Final = 64 * 1024
# wbits: 16 + MAX_WBITS reads a gzip wrapper, 32 + MAX_WBITS detects zlib or gzip.
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
_DEFLATE_WBITS: Final = 32 + zlib.MAX_WBITS

_ESCAPED_BACKSLASH: Final = b"\\\\"
_ESCAPED_QUOTE: Final = b'\\"'
_SIGNS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1, -1
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")


class Refused(LlmtasksError):
    """A request refused with an HTTP status. Never leaves a handler: it becomes the answer.
    An ``LlmtasksError`` like every exception of the package, so that one escaping by a bug
    is still caught by ``except LlmtasksError``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_within(data: bytes, *, max_depth: int, max_containers: int) -> str | None:
    """Why the JSON text ``data`` is refused, or None: more than ``max_containers`` arrays
    and objects, or as many strings, or nesting deeper than ``max_depth``.

    Counts are taken over the raw bytes (brackets and quotes inside strings included), in C.
    The depth is measured outside strings only: escapes are dropped, the text is split at
    its quotes and every other piece kept, then every byte but brackets is dropped and the
    running sum of +1/-1 over what is left (at most ``2 * max_containers`` bytes) is taken
    in C. So 200,000 nested brackets, or 8 MB of quotes, cost a count, never a recursion.
    """
    containers = data.count(b"[") + data.count(b"{")
    if containers > max_containers:
        return f"more than {max_containers} JSON arrays and objects"
    if containers <= max_depth:
        return None
    if data.count(b'"') > 2 * max_containers:
        return f"more than {max_containers} JSON strings"
    if b"\\" in data:
        data = data.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    outside = b"".join(data.split(b'"')[::2])
    signs = array("b", outside.translate(_SIGNS, _NOT_BRACKETS))
    if max(accumulate(signs), default=0) > max_depth:
        return f"JSON nested deeper than {max_depth} levels"
    return None


class _Inflater:
    """Collects a body as it arrives, inflating it when it is gzip (or deflate)."""

    def __init__(self, encoding: str, *, max_inflated_bytes: int, sniff_gzip: bool) -> None:
        self._limit = max_inflated_bytes
        self._out = bytearray()
        self._head = b""
        self._z: zlib._Decompress | None = None
        self._decided = not sniff_gzip
        if encoding in _WBITS:
            self._z = zlib.decompressobj(_WBITS[encoding])
            self._decided = True
        elif encoding == "deflate":
            self._z = zlib.decompressobj(_DEFLATE_WBITS)
            self._decided = True

    def feed(self, chunk: bytes) -> None:
        if not self._decided:
            # No Content-Encoding: the service's postbacks are gzip all the same; sniff it.
            self._head += chunk
            if len(self._head) < len(GZIP_MAGIC):
                return
            chunk, self._head = self._head, b""
            if chunk.startswith(GZIP_MAGIC):
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._decided = True
        if self._z is None:
            self._append(chunk)
            return
        z = self._z
        data = chunk
        while data:
            if z.eof:
                raise Refused(400, "data after the end of the compressed body")
            try:
                # Never more than one byte past the limit per call: a bomb stops here.
                piece = z.decompress(data, self._limit - len(self._out) + 1)
            except zlib.error:
                raise Refused(400, "body is not valid gzip") from None
            self._append(piece)
            data = z.unconsumed_tail or z.unused_data

    def _append(self, piece: bytes) -> None:
        if len(self._out) + len(piece) > self._limit:
            raise Refused(413, f"body inflates to more than {self._limit} bytes")
        self._out += piece

    def finish(self) -> bytes:
        if self._head:
            self._append(self._head)
        if self._z is not None and not self._z.eof:
            raise Refused(400, "compressed body is truncated")
        return bytes(self._out)


async def read_body(
    request: web.BaseRequest,
    *,
    max_body_bytes: int,
    max_inflated_bytes: int,
    max_depth: int,
    max_containers: int,
    sniff_gzip: bool = True,
) -> bytes:
    """The request's body, inflated, or ``Refused``: 413 for more than ``max_body_bytes`` on
    the wire or ``max_inflated_bytes`` inflated, 400 for broken compression or JSON beyond
    ``json_within``'s bounds, 415 for an encoding other than gzip or deflate. With
    ``sniff_gzip`` a body that starts like gzip is inflated without a Content-Encoding."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise Refused(413, f"body larger than {max_body_bytes} bytes")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "deflate", *_WBITS):
        raise Refused(415, "unsupported Content-Encoding")
    inflater = _Inflater(encoding, max_inflated_bytes=max_inflated_bytes, sniff_gzip=sniff_gzip)
    received = 0
    while chunk := await request.content.read(_READ_CHUNK):
        received += len(chunk)
        if received > max_body_bytes:
            raise Refused(413, f"body larger than {max_body_bytes} bytes")
        inflater.feed(chunk)
    body = inflater.finish()
    problem = json_within(body, max_depth=max_depth, max_containers=max_containers)
    if problem is not None:
        raise Refused(400, problem)
    return body


def printable(text: str, *, limit: int = 80) -> str:
    """A sender's string as it may appear in a log line: quoted, escaped, cut short."""
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse as an error with a traceback quoting the
    sender's bytes: on a public port that is anyone's to fill. Those become one info line
    (shown with -v) naming the kind of error; anything else keeps its level."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = (
            "refused a malformed request (%s, HTTP %d)",
            (
                type(exc).__name__,
                exc.code,
            ),
        )
        record.exc_info = record.exc_text = None
        return _HTTP_LOG.isEnabledFor(logging.INFO)


# A child of "llmtasks": the CLI's handler and level apply to it.
_HTTP_LOG: Final = logging.getLogger("llmtasks.http")
_HTTP_LOG.addFilter(_MalformedRequests())


class Listener:
    """Serves ``app`` on ``host:port`` to clients that may be hostile.

    At most ``max_connections`` are open at once (the next ones get 503 and are closed at
    once); a connection busy with one request (or idle between two) for longer than
    ``timeout_s`` is cut, so a client that sends its headers or body a byte at a time cannot
    hold a slot. Header lines are limited to 8 KiB by aiohttp; an idle keep-alive
    connection is closed after ``keepalive_s``. Bodies are never inflated by aiohttp:
    readers use ``read_body``.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        max_connections: int,
        timeout_s: float,
        keepalive_s: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.turned_away = 0
        self.cut_off = 0
        app.middlewares.append(self._touch)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=2.0,
            handle_signals=False,
            keepalive_timeout=min(keepalive_s, timeout_s),
            lingering_time=1.0,
            read_bufsize=_READ_CHUNK,
            auto_decompress=False,
            logger=_HTTP_LOG,
        )
        self._busy_since: dict[object, float] = {}
        self._tcp: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._tcp = await loop.create_server(self._protocol, self._host, self._port)
        except BaseException:
            await self._runner.cleanup()
            raise
        self._port = int(self._tcp.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())

    async def close(self) -> None:
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            tcp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._runner.cleanup()

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self.max_connections:
            self.turned_away += 1
            return _TurnAway()
        handler = server()
        self._busy_since[handler] = asyncio.get_running_loop().time()
        return handler

    @web.middleware
    async def _touch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            # The clock of a kept-alive connection starts again after each answer.
            if request.protocol in self._busy_since:
                self._busy_since[request.protocol] = asyncio.get_running_loop().time()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        while True:
            await asyncio.sleep(min(1.0, self.timeout_s / 4))
            live = set(server.connections)
            now = loop.time()
            for handler, since in list(self._busy_since.items()):
                if handler not in live:
                    del self._busy_since[handler]
                elif now - since > self.timeout_s:
                    del self._busy_since[handler]
                    transport = getattr(handler, "transport", None)
                    if transport is not None:
                        self.cut_off += 1
                        transport.abort()


class _TurnAway(asyncio.Protocol):
    """What a connection over the cap gets: a 503 and the door."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        transport.close()
