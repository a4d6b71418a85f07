"""receive: the emulator sends real postbacks and pingbacks to a real receiver process."""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import _OUTPUTS, cli_env, read_jsonl, run_cli


class ReceiverProcess:
    def __init__(self, *args: str) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finish())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmtasks", "receive", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=cli_env(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.finish(10)
            raise RuntimeError(f"receiver did not start: {line!r} {self.stderr!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        self.stderr = ""

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            rc = self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.seek(0)
        self.stderr = self._stderr.read().decode("utf-8", "replace")
        _OUTPUTS.append(self.stderr)
        self._stderr.close()
        return rc


@pytest.fixture
def receiver() -> Iterator[Any]:
    started: list[ReceiverProcess] = []

    def start(*args: str) -> ReceiverProcess:
        r = ReceiverProcess(*args)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.terminate()
            r.finish(10)


def _write(path: Path, n: int, **fields: str) -> None:
    with path.open("wb") as f:
        for i in range(n):
            task = {"user_prompt": f"prompt number {i}: which brands lead?", **fields}
            f.write(orjson.dumps(task) + b"\n")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:  # loopback only
        return orjson.loads(resp.read())


def _check_matched(results: list[dict[str, Any]], created: list[dict[str, Any]]) -> None:
    assert len(results) == len(created)
    by_id = {r["task_id"]: r for r in results}
    assert set(by_id) == {t["id"] for t in created}
    for task in created:
        r = by_id[task["id"]]
        assert r["tag"] == task["tag"] and r["status_code"] == 20000
        assert task["user_prompt"] == f"prompt number {r['line'] - 1}: which brands lead?"
        assert task["user_prompt"] in r["result"][0]["items"][0]["sections"][0]["text"]


@pytest.mark.parametrize(("kind", "n"), [("postback", 300), ("pingback", 120)])
def test_pushed_results_reach_the_ledger_once_per_task(
    emulator: Any, receiver: Any, tmp_path: Path, kind: str, n: int
) -> None:
    emu = emulator("--completion-delay", "1")
    ledger = tmp_path / "run.sqlite"
    out = tmp_path / "results.jsonl"
    # Started before submit: the ledger does not exist yet.
    recv = receiver(
        "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url,
        "--rate", "20000", "--until-done",
    )  # fmt: skip
    src = tmp_path / "in.jsonl"
    _write(
        src, n, model_name="gpt-4.1-mini", **{f"{kind}_url": f"{recv.url}/{kind}?id=$id&tag=$tag"}
    )
    sub = run_cli("submit", str(src), "--base-url", emu.url, "--ledger", str(ledger), "-q")
    assert sub.returncode == 0, sub.stderr
    assert recv.finish(120) == 0, recv.stderr
    created = emu.created()
    _check_matched(read_jsonl(out), created)
    deliveries = _get(emu.url + "/_emulator/deliveries")
    assert len(deliveries) == n and all(d["ok"] and d["kind"] == kind for d in deliveries)
    tag = created[0]["tag"]
    assert deliveries[0]["url"].endswith(urllib.parse.quote(tag, safe=""))  # $tag url-encoded
    gets = [c for c in emu.calls() if "/task_get/" in c["path"]]
    assert len(gets) == (n if kind == "pingback" else 0)
    # Delivered tasks are not listed in tasks_ready; collect finds nothing more to do.
    result = run_cli("collect", "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url)
    assert result.returncode == 0, result.stderr
    assert f"{n} of {n} created tasks collected" in result.stderr
    assert len(read_jsonl(out)) == n
    assert f"{n} results stored" in recv.stderr


def test_failed_deliveries_go_to_tasks_ready_for_collect(emulator: Any, tmp_path: Path) -> None:
    emu = emulator("--completion-delay", "0.5")
    src = tmp_path / "in.jsonl"
    # Nothing listens on port 9 of the loopback: every delivery fails.
    _write(src, 60, model_name="gpt-4.1-mini", postback_url="http://127.0.0.1:9/p?id=$id")
    sub = run_cli("submit", str(src), "--base-url", emu.url, "-q")
    assert sub.returncode == 0, sub.stderr
    ledger = f"{src}.ledger.sqlite"
    result = run_cli(
        "collect", "--ledger", ledger, "--base-url", emu.url, "--wait", "--rate", "20000",
        "--poll-interval", "0.3", "--max-poll-interval", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _check_matched(read_jsonl(tmp_path / "in.jsonl.results.jsonl"), emu.created())
    deliveries = _get(emu.url + "/_emulator/deliveries")
    assert len(deliveries) == 60 and not any(d["ok"] for d in deliveries)


def test_receiver_answers_foreign_and_broken_deliveries(
    emulator: Any, receiver: Any, tmp_path: Path
) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    _write(src, 3, model_name="gpt-4.1-mini")
    sub = run_cli("submit", str(src), "--base-url", emu.url, "-q")
    assert sub.returncode == 0, sub.stderr
    ledger = f"{src}.ledger.sqlite"
    out = tmp_path / "r.jsonl"
    recv = receiver("--ledger", ledger, "--out", str(out), "--base-url", emu.url)

    def status(req: urllib.request.Request | str) -> int:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    def post(body: bytes) -> int:
        return status(urllib.request.Request(recv.url + "/postback", data=body, method="POST"))

    assert status(recv.url + "/healthz") == 200
    assert status(recv.url + "/pingback?id=07151610-0696-0613-0000-b2366402ce99") == 404
    assert status(recv.url + "/pingback") == 400
    assert post(gzip.compress(b"not json")) == 400
    assert post(b"\x1f\x8b broken gzip") == 400
    envelope = {"status_code": 20000, "tasks": [{"id": "nope", "status_code": 20000, "result": []}]}
    assert post(gzip.compress(orjson.dumps(envelope))) == 404  # not ours: tasks_ready
    # A real one, fetched from the emulator and posted as the service would, twice.
    task_id = emu.created()[1]["id"]
    req = urllib.request.Request(
        f"{emu.url}/v3/ai_optimization/chat_gpt/llm_responses/task_get/{task_id}",
        headers={"Authorization": "Basic " + __import__("base64").b64encode(
            f"{cli_env()['DATAFORSEO_LOGIN']}:{cli_env()['DATAFORSEO_PASSWORD']}".encode()
        ).decode()},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        body = resp.read()
    assert post(gzip.compress(body)) == 200
    assert post(body) == 200  # plain JSON is accepted too; the duplicate is not stored again
    recv.proc.terminate()
    assert recv.finish(30) == 0
    results = read_jsonl(out)
    assert [(r["line"], r["task_id"]) for r in results] == [(2, task_id)]
    assert "1 result stored, 1 duplicate, 2 not in the ledger" in recv.stderr
