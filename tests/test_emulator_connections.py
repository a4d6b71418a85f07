"""The emulator caps the connections open at once and cuts one that stalls: a slow or
abandoned client cannot hold the server (the receiver's protections, issue 13)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
import pytest

from llmtasks.emulator import Emulator
from tests.conftest import LOGIN, PASSWORD

AUTH = {"Authorization": aiohttp.encode_basic_auth("login", "password")}
USER_DATA = b"GET /v3/appendix/user_data HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n" % (
    AUTH["Authorization"].encode()
)


async def _first_line(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line


async def _stall(port: int, start: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)
    await writer.drain()
    return reader, writer


async def test_connections_over_the_cap_get_503_and_stalled_ones_are_cut() -> None:
    async with Emulator(max_connections=2, request_timeout_s=1.0) as emu:
        task_post = b"POST /v3/ai_optimization/chat_gpt/llm_responses/task_post HTTP/1.1\r\n"
        slow = [
            await _stall(emu.port, b"GET /v3/appendix/user_data HTTP/1.1\r\nHost: x\r\nAuth"),
            # A body announced and never sent.
            await _stall(emu.port, task_post + b"Host: x\r\nContent-Length: 100\r\n\r\n[{"),
        ]
        await asyncio.sleep(0.2)
        assert (await _first_line(emu.port, USER_DATA)).startswith(b"HTTP/1.1 503")
        assert emu.connections_turned_away == 1
        for reader, writer in slow:
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
            writer.close()
        # The body that never came is cut by the emulator (the headers that never ended may
        # be closed by aiohttp's own keep-alive timeout first, which is the same bound).
        assert emu.connections_cut_off >= 1
        await asyncio.sleep(0.1)
        # The slots are free again, and the service is as it was.
        assert (await _first_line(emu.port, USER_DATA)).startswith(b"HTTP/1.1 200")
        assert emu.created == [] and emu.tasks_created == 0


async def test_a_kept_alive_connection_in_use_is_not_cut() -> None:
    async with (
        Emulator(max_connections=1, request_timeout_s=1.5) as emu,
        aiohttp.ClientSession(headers=AUTH, connector=aiohttp.TCPConnector(limit=1)) as http,
    ):
        # Five calls on one connection over about 2 s: each answer restarts its clock.
        for _ in range(5):
            async with http.get(emu.base_url + "/v3/appendix/user_data") as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read())["status_code"] == 20000
            await asyncio.sleep(0.4)
        assert emu.connections_cut_off == 0 and emu.connections_turned_away == 0
        assert emu.calls_count == 5


def test_the_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Emulator(max_connections=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        Emulator(request_timeout_s=0.0)
    for option in ("--max-connections=0", "--request-timeout=0"):
        cmd = [sys.executable, "-m", "llmtasks", "emulate", "--port", "0", option]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and option.split("=")[0] in done.stderr


async def test_emulate_takes_the_bounds_from_the_command_line(emulator: Any) -> None:
    emu = emulator("--max-connections", "1", "--request-timeout", "1")
    port = int(emu.url.rsplit(":", 1)[1])
    user_data = USER_DATA.replace(
        AUTH["Authorization"].encode(), aiohttp.encode_basic_auth(LOGIN, PASSWORD).encode()
    )
    reader, writer = await _stall(port, b"GET /v3/appendix/user_data HTTP/1.1\r\n")
    await asyncio.sleep(0.2)
    assert (await _first_line(port, user_data)).startswith(b"HTTP/1.1 503")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await asyncio.sleep(0.1)
    assert (await _first_line(port, user_data)).startswith(b"HTTP/1.1 200")
    assert emu.proc.poll() is None
