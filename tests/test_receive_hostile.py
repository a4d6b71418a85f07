"""Hostile requests to a running receiver process, and to a running emulator: gzip bombs,
truncated gzip, deep nesting, huge bodies and arrays, wrong types, invalid UTF-8, oversized
headers, forged ids and tags, no secret. Each is refused; afterwards the server is alive,
its peak memory (VmHWM of its own process) is bounded, the ledger is unchanged, and a
genuine delivery is stored at once.
"""

from __future__ import annotations

import base64
import gzip
import select
import socket
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import LOGIN, PASSWORD, RECEIVE_SECRET, cli_env, read_jsonl, run_cli
from tests.test_receive import ReceiverProcess, _write

MB = 1 << 20
PEAK_LIMIT_KB = 300 * 1024


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A valid gzip of 1 GiB of zeros, about 1 MB, built without ever holding 1 GiB: after a
    full flush deflate starts afresh, so one compressed MiB repeats; the trailer's CRC is
    computed over the zeros a MiB at a time."""
    zeros = bytes(MB)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    bomb = header + block * 1024 + end + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)
    assert len(bomb) < 1.1 * MB
    # It is what it claims: the first 64 MiB inflate to zeros (all of it would take seconds).
    assert zlib.decompressobj(31).decompress(bomb, 64 * MB) == bytes(64 * MB)
    return bomb


def exchange(port: int, head: bytes, parts: Iterable[bytes] = ()) -> int | None:
    """Send a request as written, its body in parts, stopping as soon as an answer comes;
    the answer's HTTP status, or None when the connection closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head)
            for part in parts:
                if select.select([s], [], [], 0)[0]:
                    break  # answered already: the rest is not needed
                s.sendall(part)
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n" not in data and (chunk := s.recv(4096)):
                data += chunk
        except OSError:
            pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def request(
    port: int,
    path: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> int | None:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    parts = [] if body is None else [body[i : i + MB] for i in range(0, len(body), MB)]
    return exchange(port, head, parts)


def chunked(total: int, piece: bytes) -> Iterator[bytes]:
    """A Transfer-Encoding: chunked body of ``total`` bytes, a MiB per chunk, no length."""
    block = piece * (MB // len(piece))
    for _ in range(total // MB):
        yield b"%x\r\n%s\r\n" % (len(block), block)
    yield b"0\r\n\r\n"


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def snapshot(ledger: str) -> dict[str, list[Any]]:
    """Every row of every table of the ledger, read-only."""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        db.close()


def _auth() -> dict[str, str]:
    token = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _task_get_body(emu_url: str, task_id: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(
        f"{emu_url}/v3/ai_optimization/chat_gpt/llm_responses/task_get/{task_id}",
        headers=_auth(),
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        body: bytes = resp.read()
    return body


def test_hostile_deliveries_are_refused_and_a_genuine_one_lands(
    emulator: Any, tmp_path: Path, gzip_bomb: bytes
) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    _write(src, 3, model_name="gpt-4.1-mini")
    sub = run_cli("submit", str(src), "--base-url", emu.url, "-q")
    assert sub.returncode == 0, sub.stderr
    ledger = f"{src}.ledger.sqlite"
    out = tmp_path / "results.jsonl"
    created = emu.created()
    genuine = _task_get_body(emu.url, created[1]["id"])
    envelope = orjson.loads(genuine)
    task = envelope["tasks"][0]
    assert task["data"]["tag"] == created[1]["tag"]
    env = cli_env(LLMTASKS_RECEIVE_SECRET=RECEIVE_SECRET)
    recv = ReceiverProcess(
        "--ledger", ledger, "--out", str(out), "--base-url", emu.url, "-v", env=env
    )
    try:
        port = int(recv.url.rsplit(":", 1)[1])
        pid = recv.proc.pid
        before = snapshot(ledger)
        ok = f"/postback?id=$id&secret={RECEIVE_SECRET}"
        gz = {"Content-Type": "application/json"}

        def envelope_with(**fields: Any) -> bytes:
            return orjson.dumps({**envelope, "tasks": [{**task, **fields}]})

        # No secret, a wrong one, a forged path: 403 whatever the body, before reading it.
        forged_path = "/p%0Dllmtasks:%20info:%20stored%1b[31m"
        wrong = "x" * len(RECEIVE_SECRET)
        assert request(port, "/postback", gzip.compress(genuine)) == 403
        assert request(port, f"/postback?secret={wrong}", gzip.compress(genuine)) == 403
        assert request(port, f"{forged_path}?secret=", gzip.compress(genuine)) == 403
        assert request(port, f"/pingback?id={task['id']}", method="GET") == 403
        assert request(port, f"/pingback?id={task['id']}&secret={wrong}", method="GET") == 403

        refusals: list[tuple[str, int | None, int | None]] = [
            # 1 MB of gzip that inflates to 1 GiB, sniffed and declared.
            ("gzip bomb", request(port, ok, gzip_bomb, headers=gz), 413),
            (
                "declared gzip bomb",
                request(port, ok, gzip_bomb, headers={"Content-Encoding": "gzip"}),
                413,
            ),
            ("truncated gzip", request(port, ok, gzip.compress(genuine)[:-40]), 400),
            ("gzip then garbage", request(port, ok, gzip.compress(genuine) + b"junk"), 400),
            ("200,000 nested", request(port, ok, b"[" * 200_000 + b"]" * 200_000), 400),
            ("gzip 200,000 nested", request(port, ok, gzip.compress(b"[" * 200_000)), 400),
            ("10,000 nested objects", request(port, ok, b'{"a":' * 10_000 + b"1"), 400),
            # 80 MB as sent: announced (refused before reading) and chunked (refused at 4 MiB).
            ("80 MB plain", request(port, ok, b"x" * (80 * MB)), 413),
            (
                "80 MB chunked",
                exchange(
                    port,
                    f"POST {ok} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode(),
                    chunked(80 * MB, b'{"tasks": [1, 2, 3]}'),
                ),
                413,
            ),
            (
                "400,000 tasks",
                request(
                    port,
                    ok,
                    gzip.compress(b'{"tasks":[' + b'{"status_code":1},' * 400_000 + b"{}]}"),
                ),
                400,
            ),
            (
                "huge result, wrong tag",
                request(
                    port,
                    ok,
                    gzip.compress(
                        envelope_with(data={"tag": "not-the-tag"}, result=[0] * 3_000_000)
                    ),
                ),
                404,
            ),
            ("no tag", request(port, ok, gzip.compress(envelope_with(data=None))), 404),
            (
                "forged id",
                request(port, ok, gzip.compress(envelope_with(id="evil\n\x1b[31mllmtasks: x"))),
                404,
            ),
            ("tasks a string", request(port, ok, b'{"tasks": "x"}'), 400),
            ("status a string", request(port, ok, b'{"tasks": [{"status_code": "1"}]}'), 400),
            ("an array", request(port, ok, b"[]"), 400),
            ("null", request(port, ok, b"null"), 400),
            ("no tasks", request(port, ok, b'{"tasks": []}'), 400),
            ("two tasks", request(port, ok, orjson.dumps({"tasks": [task, task]})), 400),
            ("huge number", request(port, ok, b'{"status_code": 1' + b"0" * 5000 + b"}"), 400),
            ("not JSON", request(port, ok, gzip.compress(b"\x00\xff" * 1000)), 400),
            (
                "invalid UTF-8 in the id",
                request(port, ok, b'{"tasks": [{"status_code": 20000, "id": "\xff\xfe"}]}'),
                400,
            ),
            (
                "invalid UTF-8 in the result of a genuine task",
                request(
                    port,
                    ok,
                    gzip.compress(
                        envelope_with(result=None).replace(b'"result":null', b'"result":"\xff"')
                    ),
                ),
                400,
            ),
            (
                "brotli",
                request(port, ok, b"x", headers={"Content-Encoding": "br"}),
                415,
            ),
            ("100 KB header", request(port, ok, b"{}", headers={"X-Big": "a" * 100_000}), 400),
            (
                "500 headers",
                request(port, ok, b"{}", headers={f"X-H{i}": "v" for i in range(500)}),
                400,
            ),
            (
                "pingback, wrong tag",
                request(port, f"/pingback?id={task['id']}&tag=other&{ok[10:]}", method="GET"),
                404,
            ),
        ]
        # Many at once: each waits its turn or is read within the same bounds.
        with ThreadPoolExecutor(12) as pool:
            bodies = [gzip_bomb] * 6 + [b"[" * (3 * MB)] * 6
            burst = list(pool.map(lambda b: request(port, ok, b, headers=gz), bodies))
        assert sorted(burst) == [400] * 6 + [413] * 6, burst
        wrong_answers = [(name, got, want) for name, got, want in refusals if got != want]
        # Headers over aiohttp's limits: its parser answers 400 and closes, and the close
        # (with our unread body in its buffer) may reset the connection before we read it.
        wrong_answers = [w for w in wrong_answers if not ("header" in w[0] and w[1] is None)]
        assert not wrong_answers, wrong_answers
        assert recv.proc.poll() is None, "the receiver died"
        assert request(port, "/healthz", method="GET") == 200
        assert snapshot(ledger) == before
        assert not out.exists() or out.stat().st_size == 0
        peak = peak_kb(pid)
        assert peak < PEAK_LIMIT_KB, f"receiver peak memory {peak} kB"
        # The genuine postback, with the secret, is stored at once.
        assert request(port, ok, gzip.compress(genuine), headers=gz) == 200
        rows = read_jsonl(out)
        assert [(r["line"], r["task_id"], r["tag"]) for r in rows] == [
            (2, task["id"], task["data"]["tag"])
        ]
        assert rows[0]["result"] == task["result"]
    finally:
        recv.proc.terminate()
        assert recv.finish(30) == 0, recv.stderr
    assert "1 result stored" in recv.stderr and "5 without the secret" in recv.stderr
    # Logged without bodies, and with what the sender chose escaped: no forged log line, no
    # terminal escape, no secret.
    assert "\x1b" not in recv.stderr and "Traceback" not in recv.stderr
    assert "refused a malformed request (LineTooLong, HTTP 400)" in recv.stderr
    assert not any(line.startswith("llmtasks: info: stored") for line in recv.stderr.splitlines())
    assert not any(line.startswith("llmtasks: x") for line in recv.stderr.splitlines())
    assert "refused a delivery (HTTP 403)" in recv.stderr and "'evil\\n" in recv.stderr
    assert RECEIVE_SECRET not in recv.stderr


def test_the_emulator_answers_hostile_bodies_cleanly(emulator: Any, gzip_bomb: bytes) -> None:
    emu = emulator()
    port = int(emu.url.rsplit(":", 1)[1])
    post = "/v3/ai_optimization/chat_gpt/llm_responses/task_post"
    id_list = "/v3/ai_optimization/id_list"
    auth = _auth()
    declared = {**auth, "Content-Encoding": "gzip"}
    answers = {
        "gzip bomb": request(port, post, gzip_bomb, headers=declared),
        "truncated gzip": request(port, post, gzip.compress(b"[{}]")[:-4], headers=declared),
        "80 MB": request(port, post, b"x" * (80 * MB), headers=auth),
        "200,000 nested": request(port, post, b"[" * 200_000 + b"]" * 200_000, headers=auth),
        "10,000 nested": request(port, id_list, b'[{"a":' * 10_000, headers=auth),
        "a million objects": request(port, post, b"[" + b"{}," * 1_000_000 + b"{}]", headers=auth),
        "invalid UTF-8": request(port, post, b'[{"user_prompt": "\xff"}]', headers=auth),
        "wrong types": request(port, post, b'{"user_prompt": 1}', headers=auth),
        "wrong types, id_list": request(port, id_list, b'[{"limit": "x"}]', headers=auth),
        "100 KB header": request(port, post, b"[]", headers={**auth, "X-Big": "a" * 100_000}),
    }
    # (An oversized header may see the connection reset before the 400 is read: None.)
    bad = {k: v for k, v in answers.items() if (v is None and "header" not in k) or (v or 0) >= 500}
    assert not bad, answers
    assert answers["gzip bomb"] == 413 and answers["80 MB"] == 413
    assert emu.proc.poll() is None, "the emulator died"
    peak = peak_kb(emu.proc.pid)
    assert peak < PEAK_LIMIT_KB, f"emulator peak memory {peak} kB"
    # Still serving: a genuine task is created.
    import urllib.request

    task = [{"user_prompt": "still there?", "model_name": "gpt-4.1-mini"}]
    req = urllib.request.Request(emu.url + post, data=orjson.dumps(task), headers=auth)
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        assert orjson.loads(resp.read())["tasks"][0]["status_code"] == 20100
