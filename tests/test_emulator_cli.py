"""``python -m llmtasks emulate`` as a subprocess: prints its URL, serves, stops on a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import aiohttp
import orjson
import pytest

URL_LINE = re.compile(r"^llmtasks emulator listening on (http://127\.0\.0\.1:(\d+))\n$")


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtasks", "emulate", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = URL_LINE.match(line)
    if match is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"unexpected first line {line!r}; stderr: {err}")
    assert int(match.group(2)) > 0
    return proc, match.group(1)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=15)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_emulate_prints_its_url_serves_and_stops_on_signal(sig: signal.Signals) -> None:
    proc, url = start("--login", "u", "--password", "p", "--rate", "5", "--seed", "3")
    try:
        headers = {"Authorization": aiohttp.encode_basic_auth("u", "p")}
        async with aiohttp.ClientSession(headers=headers) as s:
            body = orjson.dumps([{"user_prompt": "hi", "model_name": "gpt-4o", "tag": "cli"}])
            async with s.post(
                url + "/v3/ai_optimization/chat_gpt/llm_responses/task_post", data=body
            ) as resp:
                reply = orjson.loads(await resp.read())
            assert reply["tasks"][0]["status_code"] == 20100
            async with s.get(url + "/v3/appendix/user_data") as resp:
                user = orjson.loads(await resp.read())["tasks"][0]["result"][0]
            limits = user["rates"]["limits"]["minute"]["ai_optimization"]["llm_responses"]
            assert limits["task_post"] == 5
            async with s.get(url + "/_emulator/created") as resp:
                created = orjson.loads(await resp.read())
        assert [c["tag"] for c in created] == ["cli"]
        assert created[0]["id"] == reply["tasks"][0]["id"]
    finally:
        proc.send_signal(sig)
    code, out, err = finish(proc)
    assert code == 0, err
    assert out == ""  # exactly one line was printed, and it was read above
    assert "Traceback" not in err


def test_emulate_options_reach_the_server() -> None:
    proc, url = start(
        "--no-record",
        "--fail-rate",
        "1",
        "--max-in-flight",
        "7",
        "--completion-delay",
        "2",
        "--task-get-rate",
        "300",
        "--models-rate",
        "9",
        "--total-rate",
        "4000",
        "--task-fail-rate",
        "0.25",
        "--results-ttl",
        "60",
        "--clock-offset",
        "-30",
        "--user-data-shape",
        "flat",
        "--sampling-together",
        "refuse",
        "--gemini-search-options",
        "refuse",
    )
    try:
        with urllib.request.urlopen(url + "/_emulator/config", timeout=10) as resp:  # loopback
            config = orjson.loads(resp.read())
        assert config["record"] is False
        assert config["fail_rate"] == 1.0
        assert config["max_in_flight"] == 7
        assert config["completion_delay_s"] == 2.0
        assert (config["task_get_rate"], config["models_rate"], config["total_rate"]) == (
            300,
            9,
            4000,
        )
        assert (config["task_fail_rate"], config["results_ttl_s"]) == (0.25, 60.0)
        assert config["clock_offset_s"] == -30.0 and config["user_data_shape"] == "flat"
        assert config["sampling_together"] == config["gemini_search_options"] == "refuse"
        assert config["login"] == "login" and config["password"] == "password"
    finally:
        proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 0, err


def test_emulate_rejects_a_bad_option_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmtasks", "emulate", "--port", "0", "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "fail_rate" in result.stderr
