"""Open a page in headless Chromium and report what a person would see go wrong.

A tiny client of the DevTools protocol over aiohttp's websocket: it loads the page, waits for
its load event, runs one expression in it, and returns that with every console error,
uncaught exception, log error and network request the page made. Chromium listens on a
free loopback port only, with every background service off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageRun:
    value: Any = None
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def open_page(path: Path, expression: str, *, timeout_s: float = 60.0) -> PageRun:
    exe = find_chromium()
    assert exe is not None, "no chromium"
    # Chromium's helper processes can still write to the profile for a moment after the
    # browser exits: the whole session is stopped, then the directory removed with retries.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        log_path = Path(profile) / "stderr.txt"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    exe,
                    *FLAGS,
                    f"--user-data-dir={profile}/data",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "--window-size=1200,1600",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        try:
            browser_ws = _devtools_url(log_path, proc)
            port = int(re.search(r":(\d+)/", browser_ws).group(1))  # type: ignore[union-attr]
            url = path.resolve().as_uri()
            return asyncio.run(asyncio.wait_for(_visit(port, url, expression), timeout_s))
        finally:
            _stop_session(proc)
            _remove(Path(profile) / "data")


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # The helpers (zygote, renderer, crash handler) share the session; none may outlive it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _remove(path: Path) -> None:
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)


def _devtools_url(log_path: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        m = re.search(r"DevTools listening on (ws://\S+)", text)
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited ({proc.returncode}): {text[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("chromium did not start its DevTools endpoint")


async def _visit(port: int, url: str, expression: str) -> PageRun:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = json.loads(await resp.text())
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with http.ws_connect(page_ws, max_msg_size=0) as ws:
            return await _drive(ws, url, expression)


async def _drive(ws: aiohttp.ClientWebSocketResponse, url: str, expression: str) -> PageRun:
    run = PageRun()
    ids = iter(range(1, 1_000_000))
    replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
    loaded = asyncio.Event()

    async def reader() -> None:
        async for msg in ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = replies.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Page.loadEventFired":
                loaded.set()
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                run.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                run.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                run.errors.append(
                    f"log: {params['entry'].get('text')} {params['entry'].get('url')}"
                )
            elif method == "Network.requestWillBeSent":
                run.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                run.errors.append(f"load failed: {params.get('errorText')}")

    async def call(method: str, **params: Any) -> dict[str, Any]:
        n = next(ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        replies[n] = fut
        await ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        reply = await fut
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    task = asyncio.create_task(reader())
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=url)
        await loaded.wait()
        await asyncio.sleep(0.5)  # late errors (fonts, images) land after the load event
        result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"expression failed: {result['exceptionDetails']}")
        run.value = result["result"].get("value")
        return run
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
