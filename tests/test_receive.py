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
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finish())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmtasks", "receive", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=cli_env() if env is None else env,
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

    def start(*args: str, env: dict[str, str] | None = None) -> ReceiverProcess:
        r = ReceiverProcess(*args, env=env)
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


def test_submit_and_receive_share_a_secret(emulator: Any, receiver: Any, tmp_path: Path) -> None:
    from tests.conftest import RECEIVE_SECRET

    emu = emulator("--completion-delay", "0.5")
    ledger = tmp_path / "run.sqlite"
    out = tmp_path / "results.jsonl"
    env = cli_env(LLMTASKS_RECEIVE_SECRET=RECEIVE_SECRET)
    recv = receiver(
        "--ledger", str(ledger), "--out", str(out), "--base-url", emu.url, "--until-done",
        env=env,
    )  # fmt: skip
    src = tmp_path / "in.jsonl"
    _write(src, 20, model_name="gpt-4.1-mini")
    url = f"{recv.url}/postback?id=$id&tag=$tag"
    sub = run_cli(
        "submit", str(src), "--base-url", emu.url, "--ledger", str(ledger), "--postback-url", url,
        env=env,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    assert recv.finish(120) == 0, recv.stderr
    _check_matched(read_jsonl(out), emu.created())
    # The service was given the URL with the secret added, and nobody else saw it.
    deliveries = _get(emu.url + "/_emulator/deliveries")
    assert len(deliveries) == 20 and all(d["ok"] for d in deliveries)
    assert all(d["url"].endswith(f"&secret={RECEIVE_SECRET}") for d in deliveries)
    assert "20 results stored" in recv.stderr and "0 without the secret" in recv.stderr
    assert RECEIVE_SECRET not in sub.stdout + sub.stderr + recv.stderr


def test_secret_settings_that_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    _write(src, 1, model_name="gpt-4.1-mini")
    ledger = str(tmp_path / "l.sqlite")
    short = "short-secret"
    for args, env, message in [
        (["receive", "--ledger", ledger, "--host", "0.0.0.0"], {}, "without a secret"),
        (["receive", "--ledger", ledger], {"LLMTASKS_RECEIVE_SECRET": short}, "16 to 256"),
        (
            ["receive", "--ledger", ledger, "--no-secret"],
            {"LLMTASKS_RECEIVE_SECRET": "s" * 20},
            "choose one",
        ),
        (
            ["submit", str(src), "--emulate", "--postback-url", "http://127.0.0.1:1/p?id=$id"],
            {"LLMTASKS_RECEIVE_SECRET": short},
            "16 to 256",
        ),
        (
            ["submit", str(src), "--emulate", "--postback-url", "http://h/p?secret=x&id=$id"],
            {"LLMTASKS_RECEIVE_SECRET": "s" * 20},
            "already has a secret",
        ),
    ]:
        result = run_cli(*args, env=cli_env(**env))
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert short not in result.stderr and "s" * 20 not in result.stderr


def test_max_body_bounds_what_is_read_and_what_is_inflated(receiver: Any, tmp_path: Path) -> None:
    recv = receiver("--ledger", str(tmp_path / "none.sqlite"), "--max-body", "1K")

    def post(body: bytes) -> int:
        req = urllib.request.Request(recv.url + "/postback", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert post(b"{" + b" " * 2000 + b"}") == 413  # 2 KB as sent
    assert post(gzip.compress(b"{" + b" " * 3000 + b"}")) == 413  # 40 bytes, 3 KB inflated
    assert post(gzip.compress(b'{"tasks": []}')) == 400  # within bounds, not an envelope
    recv.proc.terminate()
    assert recv.finish(30) == 0
    assert "3 refused in all" in recv.stderr
