"""Push delivery: a small aiohttp server that takes postbacks and pingbacks for one ledger.

A postback is a POST whose body is the task_get envelope of one finished task, compressed
with gzip; a pingback is a GET with ``?id=$id&tag=$tag`` after which the result is fetched
with task_get. The service gives the receiver 10 s and otherwise puts the task in
tasks_ready, so every answer here is immediate: a postback is committed to the ledger (and
appended to the results file) before the 200; a pingback is written ahead to the ledger
(``fetching``) before the 200 and fetched in the background, so a receiver that dies
leaves it for ``collect`` to fetch by id.

Tasks that are not in the ledger get 404: the service then lists them in tasks_ready, where
the ``collect`` of their own ledger finds them. While the ledger does not exist yet (the
receiver was started before ``submit``), every delivery gets 503 for the same reason.

The receiver's address is public, so every request is treated as hostile: with a secret,
a delivery must carry ``secret=...`` in its URL (403 otherwise); bodies, inflation, JSON
nesting, time and connections are bounded (``_inbound``); a task id must be in the ledger
with the same tag; nothing the sender chose reaches a log line unescaped. A refusal never
touches the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import msgspec
from aiohttp import web

from llmtasks._collect import Collector
from llmtasks._errors import ConfigError
from llmtasks._inbound import Listener, Refused, printable, read_body
from llmtasks._ledger import TaskRef
from llmtasks._results_file import result_row
from llmtasks._transport import DEFAULT_BASE_URL, is_loopback
from llmtasks._wire import decode_postback

log = logging.getLogger("llmtasks")

SECRET_ENV: Final = "LLMTASKS_RECEIVE_SECRET"
# Characters that travel in a URL query unescaped and that the service's $id/$tag
# substitution cannot touch; 16 of them are more than anyone can guess over HTTP.
_SECRET_RE: Final = re.compile(r"[A-Za-z0-9._~-]{16,256}")

DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024
DEFAULT_MAX_INFLATED_BYTES: Final = 8 * 1024 * 1024
# A task_get envelope nests about 12 deep (envelope, tasks, result, items, sections,
# annotations); 64 leaves room for what the service may add.
DEFAULT_MAX_DEPTH: Final = 64
# Arrays and objects in one body: a task's answer has tens to hundreds (its annotations).
DEFAULT_MAX_CONTAINERS: Final = 50_000
# The service gives up after 10 s; a request still busy after 30 s is not the service.
DEFAULT_REQUEST_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_REQUESTS: Final = 4
DEFAULT_MAX_CONNECTIONS: Final = 128


def check_secret(secret: str) -> str:
    if not _SECRET_RE.fullmatch(secret):
        raise ConfigError(
            f"{SECRET_ENV} must be 16 to 256 characters among A-Z a-z 0-9 . _ ~ - (make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret


def secret_from_env() -> str | None:
    """The shared secret of receive and submit, or None when the variable is not set."""
    value = os.environ.get(SECRET_ENV)
    return None if value is None else check_secret(value)


def with_secret(url: str, secret: str, *, option: str) -> str:
    """``url`` with ``secret=...`` added to its query (``$id``/``$tag`` left as they are)."""
    parts = urlsplit(url)
    if any(k == "secret" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise ConfigError(f"{option} already has a secret= parameter; {SECRET_ENV} adds it")
    query = f"{parts.query}&secret={secret}" if parts.query else f"secret={secret}"
    return urlunsplit(parts._replace(query=query))


@dataclass
class ReceiveStats:
    postbacks: int = 0
    pingbacks: int = 0
    stored: int = 0
    duplicates: int = 0
    foreign: int = 0
    refused: int = 0
    forbidden: int = 0


class Receiver:
    """``async with Receiver(ledger="run.sqlite", out="results.jsonl", port=8080) as r:``
    serves until closed; ``r.url`` is its address, ``r.done()`` tells whether every task of
    the ledger is collected. ``login``/``password`` are needed to fetch pingbacked tasks;
    without them pingbacks are only recorded, for ``collect`` to fetch.

    ``secret``: deliveries must carry ``secret=<it>`` in their query. Listening on an address
    other than loopback without one is refused unless ``no_secret=True``. The other limits
    bound what one request may cost (see docs/collecting-results.md)."""

    def __init__(
        self,
        *,
        ledger: str,
        out: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        login: str = "",
        password: str = "",
        base_url: str = DEFAULT_BASE_URL,
        secret: str | None = None,
        no_secret: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_containers: int = DEFAULT_MAX_CONTAINERS,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **collector_options: Any,
    ) -> None:
        if secret is not None:
            check_secret(secret)
            if no_secret:
                raise ConfigError(f"no_secret/--no-secret with {SECRET_ENV} set: choose one")
        elif not no_secret and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {host} without a secret: anyone who reaches it could "
                f"post results; set {SECRET_ENV} (and submit with the same), or pass "
                "--no-secret if something in front of it checks every request"
            )
        for name, value in (
            ("max body bytes", max_body_bytes),
            ("max inflated bytes", max_inflated_bytes),
            ("max depth", max_depth),
            ("max containers", max_containers),
            ("max requests", max_requests),
            ("max connections", max_connections),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1")
        if request_timeout_s <= 0:
            raise ConfigError("request timeout must be positive")
        self._ledger_path = ledger
        self._out = out
        self._host = host
        self._port = port
        self._secret = None if secret is None else secret.encode()
        self._max_body_bytes = max_body_bytes
        self._max_inflated_bytes = max_inflated_bytes
        self._max_depth = max_depth
        self._max_containers = max_containers
        self._request_timeout_s = request_timeout_s
        self._max_requests = max_requests
        self._max_connections = max_connections
        self.can_fetch = bool(login and password)
        self._collector_args: dict[str, Any] = dict(
            login=login, password=password, base_url=base_url, **collector_options
        )
        # Built now so that a bad option fails before the server starts.
        self._collector: Collector | None = None
        Collector(ledger=ledger, **self._collector_args)
        self._opening = asyncio.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._listener: Listener | None = None
        self.stats = ReceiveStats()

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def collector(self) -> Collector | None:
        return self._collector

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._max_requests)
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_post("/{tail:.*}", self._postback)
        app.router.add_get("/{tail:.*}", self._pingback)
        listener = Listener(
            app,
            host=self._host,
            port=self._port,
            max_connections=self._max_connections,
            timeout_s=self._request_timeout_s,
        )
        await listener.start()
        self._listener = listener
        self._port = listener.port
        if self._ledger_exists():
            await self._open()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        if self._fetches:
            await asyncio.gather(*self._fetches, return_exceptions=True)
        if self._collector is not None:
            await self._collector.__aexit__(None, None, None)
            self._collector = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def done(self) -> bool:
        """Submit has finished with the ledger and every created task is collected or failed."""
        c = self._collector
        if c is None or c.ledger is None or self._fetches:
            return False
        counts = c.ledger.counts()
        if counts.get("pending", 0) or counts.get("sending", 0) or counts.get("created", 0) == 0:
            return False
        return c.ledger.uncollected_count() == 0

    async def _open(self) -> Collector | None:
        if self._collector is not None:
            return self._collector
        async with self._opening:
            if self._collector is None and self._ledger_exists():
                collector = Collector(
                    ledger=self._ledger_path, out=self._out, **self._collector_args
                )
                await collector.__aenter__()
                self._collector = collector
                log.info("receiving for ledger %s", self._ledger_path)
                ledger = collector.ledger
                if ledger is not None and ledger.fanout:
                    log.warning(
                        "ledger %s is a fan-out (%s): receive records the %s deliveries "
                        "only; 'llmtasks collect' fetches the other engines' results",
                        self._ledger_path,
                        ", ".join(ledger.engines),
                        ledger.engine,
                    )
        return self._collector

    # -- handlers ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def _allowed(self, request: web.Request) -> bool:
        if self._secret is None:
            return True
        given = request.query.get("secret", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._secret)

    async def _postback(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._forbid(request)
        self.stats.postbacks += 1
        assert self._slots is not None
        try:
            async with asyncio.timeout(self._request_timeout_s), self._slots:
                body = await read_body(
                    request,
                    max_body_bytes=self._max_body_bytes,
                    max_inflated_bytes=self._max_inflated_bytes,
                    max_depth=self._max_depth,
                    max_containers=self._max_containers,
                )
            try:
                tasks = decode_postback(body).tasks
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                raise Refused(400, "body is not the task_get envelope of one task") from None
            del body
            if not tasks:
                raise Refused(400, "envelope without tasks")
        except Refused as refused:
            return self._refuse(refused.status, refused.reason, request)
        except TimeoutError:
            return self._refuse(408, "body not received in time", request)
        except (aiohttp.ClientError, OSError):
            return self._refuse(400, "connection lost while reading the body", request)
        task = tasks[0]
        task_id = task.id or request.query.get("id", "")
        tag = task.data.tag if task.data is not None else None
        collector = await self._open()
        if collector is None or collector.ledger is None:
            return self._refuse(503, "ledger not created yet", request)
        ref, problem = self._match(collector, task_id, tag, tag_required=True)
        if ref is None:
            self.stats.foreign += 1
            return self._refuse(404, f"task {printable(task_id)}: {problem}", request)
        if ref.collected:
            self.stats.duplicates += 1
            return web.Response(text="ok\n")
        try:
            row = result_row(ref, task, "postback")
        except UnicodeDecodeError:
            return self._refuse(400, "result is not valid UTF-8", request)
        self.stats.stored += collector.store([row])
        return web.Response(text="ok\n")

    async def _pingback(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._forbid(request)
        task_id = request.query.get("id", "")
        if not task_id:
            return self._refuse(400, "no id in the query", request)
        self.stats.pingbacks += 1
        collector = await self._open()
        if collector is None or collector.ledger is None:
            return self._refuse(503, "ledger not created yet", request)
        # A pingback carries no result: a forged one costs a free task_get of a task that is
        # ours, so a URL template without $tag is accepted; one with a tag must match.
        ref, problem = self._match(collector, task_id, request.query.get("tag"), tag_required=False)
        if ref is None:
            self.stats.foreign += 1
            return self._refuse(404, f"task {printable(task_id)}: {problem}", request)
        if ref.collected:
            self.stats.duplicates += 1
            return web.Response(text="ok\n")
        collector.ledger.mark_fetching([ref])
        if self.can_fetch:
            fetch = asyncio.get_running_loop().create_task(self._fetch(collector, ref))
            self._fetches.add(fetch)
            fetch.add_done_callback(self._fetches.discard)
        return web.Response(text="ok\n")

    def _match(
        self, collector: Collector, task_id: str, tag: str | None, *, tag_required: bool
    ) -> tuple[TaskRef | None, str]:
        """The ledger's line for this delivery, or None and why not."""
        ledger = collector.ledger
        assert ledger is not None
        ref = ledger.lookup_tasks([task_id], uncollected_only=False).get(task_id)
        if ref is None:
            ref = self._unrecorded(task_id, tag)
            return ref, "not in this ledger"
        if (tag is not None or tag_required) and tag != ref.tag:
            return None, "its tag does not match the ledger's"
        return ref, ""

    async def _fetch(self, collector: Collector, ref: TaskRef) -> None:
        try:
            await collector.fetch([ref], via="pingback")
        except Exception as exc:  # a background fetch must not take the server down
            log.warning("task_get %s after its pingback: %s", printable(ref.task_id), exc)
            return
        ledger = collector.ledger
        if ledger is not None:
            now = ledger.lookup_tasks([ref.task_id], uncollected_only=False).get(ref.task_id)
            if now is not None and now.collected:
                self.stats.stored += 1

    def _ledger_exists(self) -> bool:
        return os.path.exists(self._ledger_path)

    def _unrecorded(self, task_id: str, tag: str | None) -> TaskRef | None:
        """A result can arrive before submit recorded its POST's reply: match it by tag."""
        c = self._collector
        if not tag or c is None or c.ledger is None:
            return None
        line = c.ledger.lookup_unrecorded(tag)
        return None if line is None else TaskRef(task_id, line, tag)

    def _forbid(self, request: web.Request) -> web.Response:
        self.stats.forbidden += 1
        return self._refuse(403, "no valid secret in the URL", request)

    def _refuse(self, status: int, reason: str, request: web.Request) -> web.Response:
        """Every refusal: counted, logged without the body or the query (which may hold a
        secret), and the connection closed so that nothing more is read from it."""
        self.stats.refused += 1
        log.info(
            "refused a delivery (HTTP %d) from %s, %s %s: %s",
            status,
            request.remote,
            request.method,
            printable(request.path),
            reason,
        )
        response = web.Response(status=status, text=reason + "\n")
        response.force_close()
        return response


async def serve_until(receiver: Receiver, stop: asyncio.Event, *, until_done: bool) -> None:
    """Wait for ``stop`` (or, with ``until_done``, for every task to be collected)."""
    while not stop.is_set():
        if until_done and receiver.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)
