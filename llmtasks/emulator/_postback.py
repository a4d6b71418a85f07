"""Push delivery: postbacks and pingbacks sent when a task with such a URL completes.

As documented: once the task is done the service POSTs its result, the task_get envelope
compressed with gzip, to ``postback_url``, or GETs ``pingback_url``; ``$id`` and ``$tag`` in
the URL are replaced by the task id and the url-encoded tag. The receiver has 10 s to answer;
when delivery fails (timeout, connection error, a status other than 2xx) the task goes to
tasks_ready instead. A delivered postback task never appears in tasks_ready; a pingback task
is listed there until fetched (as documented). task_get works for both.

Completion in the emulator is lazy (readiness is worked out on read), so pushing needs an
active sender: one background task that sleeps until the next completion time, and exists
only while some created task still has something to deliver. The emulator never talks to
the network: URLs whose host is not a loopback address count as failed deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import heapq
import time
from collections.abc import Callable
from typing import Final, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from llmtasks._transport import is_loopback
from llmtasks.emulator._state import CreatedTask

#: What the service gives a receiver before it gives up on it.
DELIVERY_TIMEOUT_S: Final = 10.0
MAX_CONCURRENT_DELIVERIES: Final = 64


class Delivery(msgspec.Struct, frozen=True):
    """One postback or pingback attempt, for inspection."""

    task_id: str
    kind: Literal["postback", "pingback"]
    url: str
    at: float  # unix seconds when the attempt started
    http_status: int  # 0 when no HTTP answer came
    ok: bool
    error: str | None = None


def push_url(task: CreatedTask) -> tuple[Literal["postback", "pingback"], str] | None:
    """The delivery a task asked for (a postback wins over a pingback), or None."""
    data = task.data
    for kind, key in (("postback", "postback_url"), ("pingback", "pingback_url")):
        url = data.get(key)
        if isinstance(url, str) and url:
            return kind, url  # type: ignore[return-value]
    return None


def substitute(url: str, task_id: str, tag: str | None) -> str:
    return url.replace("$id", task_id).replace("$tag", quote(tag or "", safe=""))


def _is_loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


class PushSender:
    """Delivers pushes at completion time. ``schedule`` is called for every created task that
    has a postback or pingback URL; ``result_body(index)`` builds its task_get envelope;
    ``release(index)`` puts a task whose delivery failed into tasks_ready."""

    def __init__(
        self,
        *,
        done_mono: Callable[[int], float],
        task_at: Callable[[int], CreatedTask],
        result_body: Callable[[int], bytes],
        release: Callable[[int], None],
        timeout_s: float = DELIVERY_TIMEOUT_S,
    ) -> None:
        self._done_mono = done_mono
        self._task_at = task_at
        self._result_body = result_body
        self._release = release
        self._timeout_s = timeout_s
        self._heap: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.deliveries: list[Delivery] = []

    @property
    def waiting(self) -> int:
        """Tasks whose push is not sent yet."""
        return len(self._heap)

    def schedule(self, index: int) -> None:
        if self._closed:
            return
        when = self._done_mono(index)
        heapq.heappush(self._heap, (when, index))
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        elif self._heap[0][1] == index:
            self._wake.set()  # earlier than what the runner sleeps towards

    def rescheduled(self) -> None:
        """Completion times changed (complete_all): re-read them and wake up."""
        self._heap = [(self._done_mono(i), i) for _, i in self._heap]
        heapq.heapify(self._heap)
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._runner, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        try:
            while self._heap:
                when, index = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
                    continue
                heapq.heappop(self._heap)
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._deliver(index))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        finally:
            self._runner = None

    async def _deliver(self, index: int) -> None:
        try:
            task = self._task_at(index)
            push = push_url(task)
            if push is None:
                return
            kind, template = push
            url = substitute(template, task.id, task.tag)
            started = time.time()
            status, error = 0, None
            if not _is_loopback(url):
                error = "not delivered: the emulator only sends to loopback addresses"
            else:
                try:
                    status = await self._send(kind, url, index)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
            ok = 200 <= status < 300
            if not ok:
                self._release(index)
                if error is None:
                    error = f"HTTP {status}"
            self.deliveries.append(
                Delivery(task.id, kind, url, started, status, ok, None if ok else error)
            )
        finally:
            self._slots.release()

    async def _send(self, kind: str, url: str, index: int) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            )
        if kind == "postback":
            body = gzip.compress(self._result_body(index), compresslevel=5)
            request = self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            )
        else:
            request = self._session.get(url)
        async with request as resp:
            await resp.read()
            return resp.status
