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
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from llmtasks._collect import Collector, decode_got, result_row
from llmtasks._ledger import TaskRef
from llmtasks._transport import DEFAULT_BASE_URL

log = logging.getLogger("llmtasks")

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ReceiveStats:
    postbacks: int = 0
    pingbacks: int = 0
    stored: int = 0
    duplicates: int = 0
    foreign: int = 0
    refused: int = 0


class Receiver:
    """``async with Receiver(ledger="run.sqlite", out="results.jsonl", port=8080) as r:``
    serves until closed; ``r.url`` is its address, ``r.done()`` tells whether every task of
    the ledger is collected. ``login``/``password`` are needed to fetch pingbacked tasks;
    without them pingbacks are only recorded, for ``collect`` to fetch."""

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
        **collector_options: Any,
    ) -> None:
        self._ledger_path = ledger
        self._out = out
        self._host = host
        self._port = port
        self.can_fetch = bool(login and password)
        self._collector_args: dict[str, Any] = dict(
            login=login, password=password, base_url=base_url, **collector_options
        )
        # Built now so that a bad option fails before the server starts.
        self._collector: Collector | None = None
        Collector(ledger=ledger, **self._collector_args)
        self._opening = asyncio.Lock()
        self._fetches: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.stats = ReceiveStats()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def collector(self) -> Collector | None:
        return self._collector

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self._health)
        app.router.add_post("/{tail:.*}", self._postback)
        app.router.add_get("/{tail:.*}", self._pingback)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        if self._ledger_exists():
            await self._open()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
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
        return self._collector

    # -- handlers ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _postback(self, request: web.Request) -> web.Response:
        self.stats.postbacks += 1
        body = await request.read()
        if body[:2] == _GZIP_MAGIC:
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return self._refuse(400, "body is not valid gzip")
        try:
            tasks = decode_got(body).tasks or []
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._refuse(400, "body is not a task_get envelope")
        if not tasks:
            return self._refuse(400, "envelope without tasks")
        collector = await self._open()
        if collector is None or collector.ledger is None:
            return self._refuse(503, "ledger not created yet")
        ledger = collector.ledger
        ids = [t.id or request.query.get("id", "") for t in tasks]
        refs = ledger.lookup_tasks(ids, uncollected_only=False)
        rows = []
        for task_id, task in zip(ids, tasks, strict=True):
            ref = refs.get(task_id) or self._unrecorded(
                task_id, task.data.tag if task.data else None
            )
            if ref is None:
                continue
            if ref.collected:
                self.stats.duplicates += 1
                continue
            rows.append(result_row(ref, task, "postback"))
        if not rows and len(refs) < len(ids):
            self.stats.foreign += 1
            return self._refuse(404, "task not in this ledger")
        self.stats.stored += collector.store(rows)
        return web.Response(text="ok\n")

    async def _pingback(self, request: web.Request) -> web.Response:
        task_id = request.query.get("id", "")
        if not task_id:
            return self._refuse(400, "no id in the query")
        self.stats.pingbacks += 1
        collector = await self._open()
        if collector is None or collector.ledger is None:
            return self._refuse(503, "ledger not created yet")
        ref = collector.ledger.lookup_tasks([task_id], uncollected_only=False).get(
            task_id
        ) or self._unrecorded(task_id, request.query.get("tag"))
        if ref is None:
            self.stats.foreign += 1
            return self._refuse(404, "task not in this ledger")
        if ref.collected:
            self.stats.duplicates += 1
            return web.Response(text="ok\n")
        collector.ledger.mark_fetching([ref])
        if self.can_fetch:
            fetch = asyncio.get_running_loop().create_task(self._fetch(collector, ref))
            self._fetches.add(fetch)
            fetch.add_done_callback(self._fetches.discard)
        return web.Response(text="ok\n")

    async def _fetch(self, collector: Collector, ref: TaskRef) -> None:
        try:
            await collector.fetch([ref], via="pingback")
        except Exception as exc:  # a background fetch must not take the server down
            log.warning("task_get %s after its pingback: %s", ref.task_id, exc)
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
        return None if line is None else TaskRef(task_id, line, tag, 0)

    def _refuse(self, status: int, reason: str) -> web.Response:
        self.stats.refused += 1
        log.info("refused a delivery (HTTP %d): %s", status, reason)
        return web.Response(status=status, text=reason + "\n")


async def serve_until(receiver: Receiver, stop: asyncio.Event, *, until_done: bool) -> None:
    """Wait for ``stop`` (or, with ``until_done``, for every task to be collected)."""
    while not stop.is_set():
        if until_done and receiver.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)
