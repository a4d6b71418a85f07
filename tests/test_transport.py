"""Reply classification: for every reply, could the call have created tasks? Only what
certainly created nothing is ``retry``; a reply lost or garbled after the request left is
``unknown``; auth, funds and not-found stop the run."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from llmtasks._errors import AuthError, ConfigError, FundsError, ServiceError
from llmtasks._models import load_models
from llmtasks._transport import (
    MemoryTransport,
    Reply,
    Transport,
    check_base_url,
    classify,
    describe_code,
    is_loopback,
    parse_http_date,
    stop_error,
)


def _envelope(code: int, tasks: object = None, message: str = "msg") -> bytes:
    return orjson.dumps(
        {"status_code": code, "status_message": message, "cost": 0.5, "tasks": tasks}
    )


@pytest.mark.parametrize(
    ("http", "code", "kind"),
    [
        (200, 20000, "ok"),
        (200, 40202, "retry"),  # rate limit: nothing created
        (200, 40209, "retry"),  # too many simultaneous requests: nothing created
        (429, 20000, "retry"),
        (200, 40100, "auth"),
        (200, 40101, "auth"),
        (200, 40104, "auth"),
        (401, 20000, "auth"),
        (200, 40200, "funds"),
        (200, 40210, "funds"),
        (200, 40203, "funds"),  # the account's daily cost limit
        (402, 20000, "funds"),
        (200, 40400, "fatal"),
        (404, 20000, "fatal"),
        (200, 50000, "unknown"),  # internal error: may have created the tasks
        (200, 50001, "unknown"),
        (500, 20000, "unknown"),
        (502, 20000, "unknown"),
        (200, 49999, "ok"),  # any other code: the per-task codes decide
        (200, 40501, "ok"),  # a bad task is the task's outcome, not the call's
        (499, 20000, "ok"),
    ],
)
def test_classify_an_envelope(http: int, code: int, kind: str) -> None:
    reply = classify(http, _envelope(code, message="said"))
    assert (reply.kind, reply.http_status, reply.status_code, reply.message) == (
        kind,
        http,
        code,
        "said",
    )
    assert reply.envelope is not None and reply.envelope.status_code == code
    assert reply.body == (_envelope(code, message="said") if kind == "ok" else b"")


def test_the_reply_keeps_the_tasks() -> None:
    tasks = [{"status_code": 20100, "id": "x", "cost": 0.01, "data": {"tag": "t1"}}]
    reply = classify(200, _envelope(20000, tasks))
    assert reply.envelope is not None and reply.envelope.tasks is not None
    [task] = reply.envelope.tasks
    assert (task.status_code, task.id, task.cost, task.data) == (20100, "x", 0.01, task.data)
    assert task.data is not None and task.data.tag == "t1"
    assert reply.envelope.cost == 0.5


@pytest.mark.parametrize(
    ("http", "kind", "message"),
    [
        (429, "retry", "HTTP 429 Too Many Requests"),
        (401, "auth", "HTTP 401 Unauthorized"),
        (402, "funds", "HTTP 402 Payment Required"),
        (404, "fatal", "HTTP 404 Not Found"),
        (500, "unknown", "HTTP 500 without an API envelope"),
        (200, "unknown", "HTTP 200 without an API envelope"),  # garbled: may have created
    ],
)
@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b'{"status_code": "x"}'])
def test_classify_without_an_envelope(http: int, kind: str, message: str, body: bytes) -> None:
    assert classify(http, body) == Reply(kind, http, None, message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "allow_insecure", "expected"),
    [
        ("https://api.dataforseo.com/", False, "https://api.dataforseo.com"),
        ("https://api.dataforseo.com/sandboX/", False, "https://api.dataforseo.com/sandboX"),
        ("http://127.0.0.1:8080", False, "http://127.0.0.1:8080"),
        ("http://localhost:1/", False, "http://localhost:1"),
        ("http://[::1]:5", False, "http://[::1]:5"),
        ("http://example.com", True, "http://example.com"),
    ],
)
def test_base_url_accepted(url: str, allow_insecure: bool, expected: str) -> None:
    assert check_base_url(url, allow_insecure=allow_insecure) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com", "must be an http"),
        ("https://", "must be an http"),
        ("http://example.com", "refusing plain http to example.com"),
        ("http://10.0.0.1", "refusing plain http"),
        ("https://user:secret@example.com", "must not contain credentials"),
        ("https://user@example.com", "must not contain credentials"),
    ],
)
def test_base_url_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_base_url(url)
    assert "secret" not in str(info.value)


def test_base_url_default_refuses_insecure() -> None:
    with pytest.raises(ConfigError):
        check_base_url("http://example.com")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_describe_code() -> None:
    assert describe_code(Reply("auth", 401, 40100, "")) == "status 40100, HTTP 401"
    assert describe_code(Reply("auth", None, 40100, "")) == "status 40100"
    assert describe_code(Reply("auth", 401, None, "")) == "HTTP 401"
    assert describe_code(Reply("unknown", None, None, "")) == "no reply"


def test_stop_errors_say_what_happened() -> None:
    auth = Reply("auth", 401, 40100, "Not authorized")
    first = stop_error(auth, 0)
    assert isinstance(first, AuthError)
    assert (
        str(first) == "the service refused the credentials: Not authorized (status 40100, HTTP 401)"
    )
    later = stop_error(auth, 3)
    assert isinstance(later, AuthError)
    assert str(later).startswith("the service stopped accepting the credentials: Not auth")
    funds = stop_error(Reply("funds", 200, 40210, "Balance too low"), 1)
    assert isinstance(funds, FundsError)
    assert (
        str(funds)
        == "the account cannot pay for more tasks: Balance too low (status 40210, HTTP 200)"
    )
    fatal = stop_error(Reply("fatal", 404, None, "HTTP 404 Not Found"), 1)
    assert type(fatal) is ServiceError
    assert str(fatal) == "the service refused the call: HTTP 404 Not Found (HTTP 404)"


# --- the transport against a real server on loopback ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _serve(handler: object) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_sends_basic_auth_and_json_and_classifies_the_reply() -> None:
    seen: list[tuple[str, str, str | None, str | None, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            (
                request.method,
                request.path,
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                body,
            )
        )
        return web.Response(body=_envelope(20000), content_type="application/json")

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url + "/", login="me", password="pw") as t:
            posted = await t.post("/v3/x", b"[1]")
            got = await t.get("/v3/y")
        assert posted.kind == got.kind == "ok"
        assert seen == [
            ("POST", "/v3/x", "Basic bWU6cHc=", "application/json", b"[1]"),
            ("GET", "/v3/y", "Basic bWU6cHc=", "application/json", b""),
        ]
    finally:
        await runner.cleanup()


async def test_a_refused_connection_created_nothing_and_is_retried() -> None:
    async with Transport(base_url=f"http://127.0.0.1:{_free_port()}", login="a", password="b") as t:
        reply = await t.post("/v3/x", b"[]")
    assert reply.kind == "retry" and reply.http_status is None
    assert reply.message.startswith("cannot connect: ")


async def test_a_connection_lost_after_sending_is_unknown() -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()  # the request arrived; the reply never leaves
        await asyncio.sleep(1)
        return web.Response()

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b") as t:
            reply = await t.post("/v3/x", b"[]")
        assert reply.kind == "unknown" and reply.message.startswith("connection lost: ")
    finally:
        await runner.cleanup()


async def test_no_reply_before_the_timeout_is_unknown() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b", timeout_s=0.3) as t:
            reply = await t.post("/v3/x", b"[]")
        assert reply == Reply("unknown", None, None, "no reply before the timeout")
    finally:
        await runner.cleanup()


# --- from the survivors of mutation testing (docs/testing.md) -------------------------------


def test_transport_defaults() -> None:
    """60 s per call, 10 s to connect, 30 connections (the service's cap on simultaneous
    requests), and plain http refused except to loopback."""
    t = Transport(base_url="https://api.dataforseo.com", login="a", password="b")
    assert (t._timeout.total, t._timeout.sock_connect, t._max_connections) == (60.0, 10.0, 30)
    with pytest.raises(ConfigError, match="refusing plain http"):
        Transport(base_url="http://example.com", login="a", password="b")
    insecure = Transport(
        base_url="http://example.com/", login="a", password="b", allow_insecure=True
    )
    assert insecure.base_url == "http://example.com"


async def test_a_memory_transport_names_its_service_like_any_transport(tmp_path: Path) -> None:
    """``base_url`` keys the models cache: a transport in memory has one of its own, so a
    list it answered is read back from the cache, and never taken for another service's."""
    models = {"model_name": "gpt-4o", "reasoning": False, "task_post_supported": True}
    task = {"status_code": 20000, "result": [models]}
    listed = classify(200, orjson.dumps({"status_code": 20000, "tasks": [task]}))
    first = MemoryTransport([listed])
    assert first.base_url == "memory:"
    got = await load_models(first, "chat_gpt", cache_dir=tmp_path)
    assert got.source == "service" and len(first.requests) == 1
    again = MemoryTransport([])  # would fail if asked
    assert (await load_models(again, "chat_gpt", cache_dir=tmp_path)).source == "cache"
    other = MemoryTransport([listed], base_url="http://127.0.0.1:9")
    assert other.base_url == "http://127.0.0.1:9"
    assert (await load_models(other, "chat_gpt", cache_dir=tmp_path)).source == "service"


def test_error_descriptions_are_one_short_line() -> None:
    from llmtasks._transport import _describe

    assert _describe(OSError("first line\nsecond line")) == "first line"
    assert _describe(TimeoutError()) == "TimeoutError"
    assert _describe(OSError("x" * 300)) == "x" * 200


async def test_http_error_statuses_are_read_not_raised() -> None:
    statuses = iter([401, 500, 402])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=next(statuses), body=_envelope(20000))

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b") as t:
            kinds = [(await t.get("/v3/x")).kind for _ in range(3)]
        assert kinds == ["auth", "unknown", "funds"]
    finally:
        await runner.cleanup()


async def test_at_most_30_connections_at_once() -> None:
    inside, peak = 0, 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.3)
        inside -= 1
        return web.Response(body=_envelope(20000))

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b") as t:
            replies = await asyncio.gather(*(t.get("/v3/x") for _ in range(40)))
        assert {r.kind for r in replies} == {"ok"}
        assert peak == 30
    finally:
        await runner.cleanup()


async def test_outside_its_context_the_transport_refuses_to_call() -> None:
    t = Transport(base_url="http://127.0.0.1:1", login="a", password="b")
    with pytest.raises(AssertionError, match=r"^use 'async with Transport\(...\)'$"):
        await t.get("/v3/x")
    async with t:
        pass
    with pytest.raises(AssertionError, match=r"^use 'async with Transport\(...\)'$"):
        await t.post("/v3/x", b"[]")


async def test_a_refused_connection_names_the_address() -> None:
    port = _free_port()
    async with Transport(base_url=f"http://127.0.0.1:{port}", login="a", password="b") as t:
        reply = await t.get("/v3/x")
    assert reply.kind == "retry" and f"127.0.0.1:{port}" in reply.message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "--base-url must be an http(s) URL such as https://api.dataforseo.com"),
        (
            "https://u:p@x",
            "--base-url must not contain credentials; use DATAFORSEO_LOGIN/PASSWORD",
        ),
        (
            "http://example.com",
            "refusing plain http to example.com: credentials would travel unencrypted; "
            "use https, or pass --allow-insecure if you really mean it",
        ),
    ],
)
def test_base_url_errors_word_for_word(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_base_url(url)
    assert str(info.value) == message


async def test_a_lost_connection_says_what_happened() -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b") as t:
            reply = await t.get("/v3/x")
        assert reply.kind == "unknown"
        assert reply.message == "connection lost: Server disconnected"
    finally:
        await runner.cleanup()


async def test_the_memory_transport_answers_in_turn_and_records_each_request() -> None:
    from llmtasks._transport import MemoryTransport

    first, second = Reply("ok", 200, 20000, "Ok."), Reply("retry", 200, 40202, "Later.")
    memory = MemoryTransport([first, second])
    assert await memory.post("/a", b"[1]") is first
    assert await memory.get("/b") is second
    assert memory.requests == [("POST", "/a", b"[1]"), ("GET", "/b", None)]
    with pytest.raises(AssertionError, match=r"^no reply left for GET /c$"):
        await memory.get("/c")
    assert memory.requests[-1] == ("GET", "/c", None)


async def test_the_memory_transport_can_answer_by_request() -> None:
    from llmtasks._transport import MemoryTransport

    seen: list[tuple[str, str, bytes | None]] = []

    def answer(method: str, path: str, body: bytes | None) -> Reply:
        seen.append((method, path, body))
        return Reply("ok", 200, 20000, f"{method} {path}")

    memory = MemoryTransport(answer)
    assert (await memory.post("/p", b"x")).message == "POST /p"
    assert (await memory.get("/g")).message == "GET /g"
    assert seen == memory.requests == [("POST", "/p", b"x"), ("GET", "/g", None)]


# --- the service's clock: its Date header ------------------------------------------------------

# 2026-12-01 02:00:00 UTC
TWO_AM_UTC = 1796090400.0


@pytest.fixture
def new_york() -> Iterator[None]:
    """This machine's local time is not UTC (a naive datetime would be read as New York's)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        mp.undo()
        time.tzset()


@pytest.mark.parametrize(
    "value",
    [
        "Tue, 01 Dec 2026 02:00:00 GMT",
        "Tue, 01 Dec 2026 04:00:00 +0200",
        "Mon, 30 Nov 2026 21:00:00 -0500",
        # RFC 5322's "-0000": UTC, with no zone of its own (naive); never local time.
        "Tue, 01 Dec 2026 02:00:00 -0000",
    ],
)
def test_a_date_header_is_read_as_the_instant_it_names(value: str, new_york: None) -> None:
    assert time.localtime(TWO_AM_UTC).tm_hour != 2  # the fixture took effect
    assert parse_http_date(value) == TWO_AM_UTC


@pytest.mark.parametrize("value", [None, "", "yesterday", "Tue, 99 Foo 2026"])
def test_no_date_or_an_unreadable_one_is_no_clock(value: str | None) -> None:
    assert parse_http_date(value) is None


async def test_a_reply_carries_the_services_clock_from_its_date_header() -> None:
    dates = ["Tue, 01 Dec 2026 04:00:00 +0200", "not a date"]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=_envelope(20000), content_type="application/json", headers={"Date": dates.pop(0)}
        )

    runner, url = await _serve(handler)
    try:
        async with Transport(base_url=url, login="a", password="b", allow_insecure=True) as t:
            dated = await t.get("/v3/y")
            undated = await t.get("/v3/y")
    finally:
        await runner.cleanup()
    assert dated.kind == "ok" and dated.server_time == TWO_AM_UTC
    assert undated.kind == "ok" and undated.server_time is None
