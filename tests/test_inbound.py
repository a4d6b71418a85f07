"""_inbound: the bounds every listening socket puts on strangers, checked in-process.

The hostile-delivery tests against a receiver process are in test_receive_hostile.py; here
are the pieces that need a clock or a connection count set small: the depth measure, the
connection cap and the cut-off of slow clients.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from llmtasks import ConfigError, Receiver
from llmtasks._inbound import json_within


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"[" * 64 + b"]" * 64, None),
        (b"[" * 65 + b"]" * 65, "nested deeper"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper"),
        (b"[" * 200_000 + b"]" * 200_000, "more than"),
        (b"[" * 200_000, "more than"),  # truncated: still refused, no recursion
        (b"[" + b"{}," * 60_000 + b"{}]", "more than"),  # wide, not deep
        (b"[" * 70, "nested deeper"),
        (b"[" * 100 + b'"' * 8_000_000, "JSON strings"),  # 8 MB of quotes: counted, not parsed
        (b"[" * 100 + b'\\"' * 200_000, "JSON strings"),
        # Brackets inside strings, escaped quotes and backslashes are not nesting.
        (json.dumps(["[" * 100, {"k": '\\"]]]]' * 30}, "{" * 90]).encode(), None),
        (b'["\\\\", [[[["\\"[[[[[["]]]]]', None),
    ],
)
def test_json_within_measures_nesting_outside_strings(text: bytes, problem: str | None) -> None:
    found = json_within(text, max_depth=64, max_containers=50_000)
    assert found is None if problem is None else problem in (found or "")


def test_a_genuine_envelope_is_within_the_receivers_bounds() -> None:
    annotation = {"title": "t [1]", "url": "https://x.example/{a}", "start_index": 0}
    section = {"type": "text", "text": "answer {with} [brackets]", "annotations": [annotation]}
    result = [{"items": [{"type": "message", "sections": [section] * 50}], "fan_out_queries": []}]
    body = json.dumps({"tasks": [{"id": "x", "status_code": 20000, "result": result}]}).encode()
    assert json_within(body, max_depth=64, max_containers=50_000) is None


def test_without_a_secret_only_loopback_is_allowed(tmp_path: Path) -> None:
    ledger = str(tmp_path / "l.sqlite")
    with pytest.raises(ConfigError, match="without a secret"):
        Receiver(ledger=ledger, host="0.0.0.0")
    Receiver(ledger=ledger, host="0.0.0.0", no_secret=True)
    Receiver(ledger=ledger, host="0.0.0.0", secret="s" * 16)
    with pytest.raises(ConfigError, match="16 to 256"):
        Receiver(ledger=ledger, secret="short")
    with pytest.raises(ConfigError, match="16 to 256"):
        Receiver(ledger=ledger, secret="has a space in it, 16+")
    with pytest.raises(ConfigError, match="choose one"):
        Receiver(ledger=ledger, secret="s" * 16, no_secret=True)


async def _status(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line


async def test_connections_are_capped_and_slow_clients_cut_off(tmp_path: Path) -> None:
    receiver = Receiver(
        ledger=str(tmp_path / "none-yet.sqlite"), max_connections=2, request_timeout_s=1.0
    )
    async with receiver:
        port = int(receiver.url.rsplit(":", 1)[1])
        slow = []
        for _ in range(2):  # headers that never end, and a body that never comes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /postback HTTP/1.1\r\nHost: x\r\nContent-Le")
            await writer.drain()
            slow.append((reader, writer))
        await asyncio.sleep(0.2)
        assert (await _status(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 503"
        )
        # Within a few seconds both slow clients are cut off, and the slots are free again.
        for reader, writer in slow:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        await asyncio.sleep(0.1)
        assert (await _status(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        # A body sent a byte at a time is cut off too (408 or the connection closed).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = gzip.compress(b"{}")
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body[:1])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        writer.close()
    assert receiver.stats.stored == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p?id=$id&tag=$tag", "https://h/p?id=$id&tag=$tag&secret=S3cr3t-0123456789"),
        ("https://h/p", "https://h/p?secret=S3cr3t-0123456789"),
        ("http://h:8080/p?id=$id#frag", "http://h:8080/p?id=$id&secret=S3cr3t-0123456789#frag"),
    ],
)
def test_submit_adds_the_secret_to_the_query(url: str, expected: str) -> None:
    from llmtasks._receiver import with_secret

    assert with_secret(url, "S3cr3t-0123456789", option="--postback-url") == expected
