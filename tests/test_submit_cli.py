"""The real ``submit`` command against a real emulator process."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.conftest import LOGIN, PASSWORD, cli_env, read_jsonl, run_cli, spawn_cli, write_prompts


def _task_posts(emu) -> list[dict]:  # type: ignore[no-untyped-def]
    return [c for c in emu.calls() if c["path"].endswith("/task_post")]


def test_every_line_has_one_outcome_and_every_created_task_one_receipt(
    emulator, tmp_path: Path
) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 230)
    with src.open("ab") as f:
        f.write(b"\n")  # line 231: blank
        f.write(b'{"user_prompt": "x", "model_name": "gpt-4.1-mini", "temprature": 1}\n')  # typo
        f.write(b'{"user_prompt": "' + b"y" * 501 + b'", "model_name": "gpt-4.1-mini"}\n')
        f.write(b"{broken json\n")
        f.write(b'{"user_prompt": "no model"}\n')
        f.write(b'{"user_prompt": "last one", "model_name": "gpt-4.1-mini"}\n')
    result = run_cli("submit", str(src), "--base-url", emu.url, "--batch-size", "30")
    assert result.returncode == 1, result.stderr  # some lines were rejected
    receipts = read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")
    assert [r["line"] for r in receipts] == list(range(1, 237))
    states = Counter(r["state"] for r in receipts)
    assert states == {"created": 231, "rejected": 4, "skipped": 1}
    by_line = {r["line"]: r for r in receipts}
    assert by_line[232]["field"] == "temprature"
    assert by_line[233]["field"] == "user_prompt"
    assert by_line[235]["field"] == "model_name"
    rejects = read_jsonl(tmp_path / "in.jsonl.rejects.jsonl")
    assert [r["line"] for r in rejects] == [232, 233, 234, 235]

    created = emu.created()
    assert len(created) == 231
    ids = [t["id"] for t in created]
    assert len(set(ids)) == len(ids)
    receipt_ids = {r["task_id"]: r for r in receipts if r["state"] == "created"}
    assert set(receipt_ids) == set(ids)
    for task in created:  # matched to the right line, with the emulator's own status
        r = receipt_ids[task["id"]]
        assert task["tag"] == r["tag"]
        assert r["status_code"] == 20100
        line_no = r["line"]
        expected = (
            "last one" if line_no == 236 else f"prompt number {line_no - 1}: which brands lead?"
        )
        assert task["user_prompt"] == expected
    posts = _task_posts(emu)
    assert all(c["tasks_created"] <= 30 for c in posts)
    assert len(posts) == 8  # ceil(231 / 30)
    assert "231 created" in result.stderr and "4 rejected" in result.stderr


def test_rerun_with_same_ledger_sends_nothing_final(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 120)
    first = run_cli("submit", str(src), "--base-url", emu.url)
    assert first.returncode == 0, first.stderr
    calls_before = len(_task_posts(emu))
    second = run_cli("submit", str(src), "--base-url", emu.url)
    assert second.returncode == 0, second.stderr
    assert len(_task_posts(emu)) == calls_before
    assert len(emu.created()) == 120
    assert "120 done by earlier runs" in second.stderr
    assert len(read_jsonl(tmp_path / "in.jsonl.receipts.jsonl")) == 120


def test_appended_lines_are_sent_on_rerun_and_changed_lines_refused(
    emulator, tmp_path: Path
) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 50)
    assert run_cli("submit", str(src), "--base-url", emu.url).returncode == 0
    write_prompts(tmp_path / "more.jsonl", 20, start=50)
    src.write_bytes(src.read_bytes() + (tmp_path / "more.jsonl").read_bytes())
    again = run_cli("submit", str(src), "--base-url", emu.url)
    assert again.returncode == 0, again.stderr
    assert len(emu.created()) == 70
    lines = src.read_bytes().splitlines(keepends=True)
    src.write_bytes(b"".join([*lines[:9], b'{"user_prompt": "changed"}\n', *lines[10:]]))
    calls = len(emu.calls())
    refused = run_cli("submit", str(src), "--base-url", emu.url)
    assert refused.returncode == 2
    assert "line 10" in refused.stderr and "changed" in refused.stderr
    src.write_bytes(b"".join(lines[:60]))
    shorter = run_cli("submit", str(src), "--base-url", emu.url)
    assert shorter.returncode == 2
    assert "it has 60 lines, the ledger recorded 70" in shorter.stderr
    assert len(emu.calls()) == calls, "refused before any call, even the free one"


def test_missing_credentials_exit_2_before_reading_input(tmp_path: Path) -> None:
    env = cli_env()
    del env["DATAFORSEO_PASSWORD"]
    result = run_cli("submit", str(tmp_path / "does-not-exist.jsonl"), env=env)
    assert result.returncode == 2
    assert "DATAFORSEO_PASSWORD" in result.stderr
    assert "does-not-exist" not in result.stderr


def test_unreadable_input_exit_2(tmp_path: Path) -> None:
    result = run_cli("submit", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert "nope.jsonl" in result.stderr and "no such file" in result.stderr


def test_wrong_credentials_stop_before_any_task(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 10)
    env = cli_env(DATAFORSEO_PASSWORD="wrong-password-123")
    result = run_cli("submit", str(src), "--base-url", emu.url, env=env)
    assert result.returncode == 2
    assert "refused the credentials" in result.stderr
    assert "wrong-password-123" not in result.stderr + result.stdout
    assert emu.created() == []


def test_text_and_csv_inputs_and_stdin(emulator, tmp_path: Path) -> None:
    emu = emulator()
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    r = run_cli("submit", str(txt), "--base-url", emu.url, "--model", "gpt-4.1-mini")
    assert r.returncode == 0, r.stderr
    assert [x["state"] for x in read_jsonl(tmp_path / "p.txt.receipts.jsonl")] == [
        "created",
        "skipped",
        "created",
    ]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(
        "user_prompt,model_name,max_output_tokens,message_chain\n"
        'hello,gpt-4.1-mini,100,"[{""role"": ""user"", ""message"": ""hi""}]"\n'
        "bye,gpt-4.1-mini,,\n"
    )
    r = run_cli("submit", str(csv_file), "--base-url", emu.url)
    assert r.returncode == 0, r.stderr
    stdin = b'{"user_prompt": "from stdin", "model_name": "gpt-4.1-mini"}\n'
    r = run_cli(
        "submit",
        "-",
        "--base-url",
        emu.url,
        "--ledger",
        str(tmp_path / "s.sqlite"),
        "--receipts",
        str(tmp_path / "s.jsonl"),
        "--rejects",
        str(tmp_path / "r.jsonl"),
        stdin=stdin,
    )
    assert r.returncode == 0, r.stderr
    prompts = [t["user_prompt"] for t in emu.created()]
    assert prompts == ["first prompt", "second prompt", "hello", "bye", "from stdin"]
    chain = emu.created()[2]["data"]["message_chain"]
    assert chain == [{"role": "user", "message": "hi"}]


def test_dry_run_sends_nothing_and_prints_worst_case(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 40)
    r = run_cli("submit", str(src), "--base-url", emu.url, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "40 valid" in r.stderr and "$0.4080" in r.stderr and "nothing sent" in r.stderr
    assert emu.calls() == []
    assert not (tmp_path / "in.jsonl.ledger.sqlite").exists()


def test_emulate_demo_needs_no_credentials(tmp_path: Path) -> None:
    src = tmp_path / "demo.jsonl"
    write_prompts(src, 25)
    env = {k: v for k, v in cli_env().items() if not k.startswith("DATAFORSEO_")}
    r = run_cli("submit", str(src), "--emulate", env=env)
    assert r.returncode == 0, r.stderr
    assert "25 created" in r.stderr


def test_credentials_never_in_outputs(emulator, tmp_path: Path) -> None:
    emu = emulator("--fail-rate", "0.3", "--seed", "3")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 300)
    r = run_cli("submit", str(src), "--base-url", emu.url, "--batch-size", "10", "-v")
    everything = r.stdout + r.stderr
    for path in tmp_path.iterdir():
        everything += path.read_bytes().decode("utf-8", "replace")
    assert PASSWORD not in everything
    assert LOGIN not in everything
    assert orjson.dumps(PASSWORD).decode() not in everything
    assert base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode() not in everything


def test_model_warning_and_push_urls(emulator, tmp_path: Path) -> None:
    emu = emulator()
    txt = tmp_path / "p.txt"
    txt.write_text("one\ntwo\n")
    r = run_cli("submit", str(txt), "--base-url", emu.url, "--model", "gpt-9-turbo")
    assert "llmtasks: warning: model 'gpt-9-turbo' is not in the chat_gpt models list" in r.stderr
    assert r.returncode == 1  # the service rejects the unknown model: lines rejected, not lost
    assert {x["state"] for x in read_jsonl(tmp_path / "p.txt.receipts.jsonl")} == {"rejected"}

    hook = "http://127.0.0.1:9/hook?id=$id&tag=$tag"
    r = run_cli(
        "submit",
        str(txt),
        "--base-url",
        emu.url,
        "--model",
        "gpt-4.1-mini",
        "--ledger",
        str(tmp_path / "b.sqlite"),
        "--postback-url",
        hook,
        "--pingback-url",
        "http://127.0.0.1:9/ping?id=$id",
    )
    assert r.returncode == 0, r.stderr
    assert "llmtasks: warning" not in r.stderr
    data = [t["data"] for t in emu.created()]
    assert [d["postback_url"] for d in data] == [hook, hook]
    assert [d["pingback_url"] for d in data] == ["http://127.0.0.1:9/ping?id=$id"] * 2


def test_shards_split_one_input_between_processes(emulator, tmp_path: Path) -> None:
    emu = emulator()
    src = tmp_path / "in.jsonl"
    write_prompts(src, 301)
    procs = [
        spawn_cli(
            "submit",
            str(src),
            "--base-url",
            emu.url,
            "--shard",
            f"{i}/3",
            "--batch-size",
            "7",
            "--rate",
            "600",
            "--period",
            "60",
        )
        for i in (1, 2, 3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    created = emu.created()
    assert sorted(t["user_prompt"] for t in created) == sorted(
        f"prompt number {i}: which brands lead?" for i in range(301)
    )
    for i, n in ((1, 101), (2, 100), (3, 100)):
        receipts = read_jsonl(tmp_path / f"in.jsonl.shard-{i}-of-3.receipts.jsonl")
        assert [r["line"] for r in receipts] == list(range(i, 302, 3))[:n]
    wrong = run_cli(
        "submit",
        str(src),
        "--base-url",
        emu.url,
        "--shard",
        "2/3",
        "--ledger",
        str(tmp_path / "in.jsonl.shard-1-of-3.ledger.sqlite"),
    )
    assert wrong.returncode == 2 and "belongs to shard '1/3'" in wrong.stderr
    bad = run_cli("submit", str(src), "--shard", "4/3")
    assert bad.returncode == 2 and "I/N" in bad.stderr


def test_one_submit_per_ledger_at_a_time(emulator, tmp_path: Path) -> None:
    emu = emulator("--latency-ms", "200")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 100)
    first = spawn_cli(
        "submit", str(src), "--base-url", emu.url, "--batch-size", "5", "--concurrency", "1"
    )
    lock = tmp_path / "in.jsonl.ledger.sqlite.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert time.monotonic() < deadline, "the first submit never took the ledger"
        time.sleep(0.05)
    second = run_cli("submit", str(src), "--base-url", emu.url)
    assert second.returncode == 2
    assert f"in use by another submit (pid {first.pid})" in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len(emu.created()) == 100  # the second run neither sent nor disturbed anything
    assert run_cli("submit", str(src), "--base-url", emu.url).returncode == 0  # lock released


def test_no_empty_output_files_and_no_lock_file_left(emulator, tmp_path: Path) -> None:
    emu = emulator()
    good = b'{"user_prompt": "a", "model_name": "gpt-4.1-mini"}\n'
    r = run_cli("submit", "-", "--base-url", emu.url, cwd=tmp_path, stdin=good * 3)
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(tmp_path / "stdin.receipts.jsonl")) == 3
    assert not (tmp_path / "stdin.rejects.jsonl").exists()  # nothing rejected: no file
    assert not (tmp_path / "stdin.ledger.sqlite.lock").exists()
    assert "reject" not in r.stderr.splitlines()[-1]

    bad = b'{"user_prompt": "b"}\n'
    ledger = str(tmp_path / "two.sqlite")
    r = run_cli(
        "submit", "-", "--base-url", emu.url, "--ledger", ledger, cwd=tmp_path, stdin=good + bad
    )
    assert r.returncode == 1, r.stderr
    assert [x["line"] for x in read_jsonl(tmp_path / "stdin.rejects.jsonl")] == [2]
    assert "1 reject in " in r.stderr
    # A later run whose ledger has no rejects does not leave the earlier file behind.
    r = run_cli("submit", "-", "--base-url", emu.url, cwd=tmp_path, stdin=good * 3)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "stdin.rejects.jsonl").exists()

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    r = run_cli("submit", str(empty), "--base-url", emu.url)
    assert r.returncode == 0, r.stderr
    assert "no receipts: the input has no lines" in r.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("empty.jsonl."))
    assert left == ["empty.jsonl.ledger.sqlite"]  # no empty receipts, no lock

    # An error exit (the service refuses the credentials) removes the lock too.
    refused = run_cli(
        "submit", str(empty), "--base-url", emu.url, env=cli_env(DATAFORSEO_PASSWORD="wrong")
    )
    assert refused.returncode == 2, refused.stderr
    assert not (tmp_path / "empty.jsonl.ledger.sqlite.lock").exists()


def test_a_second_ctrl_c_still_removes_the_lock(emulator, tmp_path: Path) -> None:
    import signal

    emu = emulator("--latency-ms", "400")
    src = tmp_path / "in.jsonl"
    write_prompts(src, 200)
    proc = spawn_cli(
        "submit", str(src), "--base-url", emu.url, "--batch-size", "5", "--concurrency", "2"
    )
    lock = tmp_path / "in.jsonl.ledger.sqlite.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert time.monotonic() < deadline, "the submit never took the ledger"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # the user means it: abort
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not lock.exists(), err
    assert "Unclosed" not in err  # the connection was closed on the way out, too
