"""The credential scan of conftest.py sees every output of every process a test starts:
piped and read, piped and never read, sent to /dev/null, inherited, and spawn_cli's."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import find_leaks, spawn_cli

CANARY = "canary-5d1b"  # stands in for a credential; never one of conftest's SECRETS


def _print(marker: str) -> list[str]:
    code = f"import sys; print({marker!r}); print({marker!r} + '-err', file=sys.stderr)"
    return [sys.executable, "-c", code]


def _found(marker: str) -> list[str]:
    deadline = time.monotonic() + 10  # the pumps drain a pipe once its process has exited
    while not (leaks := find_leaks((marker,))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leaks


def test_every_way_of_starting_a_process_is_scanned() -> None:
    subprocess.run(_print(f"{CANARY}-captured"), capture_output=True, check=True)
    subprocess.run(
        _print(f"{CANARY}-devnull"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    subprocess.run(_print(f"{CANARY}-inherited"), check=True)
    unread = subprocess.Popen(_print(f"{CANARY}-unread"), stdout=subprocess.PIPE)
    unread.wait()
    assert unread.stdout is not None
    unread.stdout.close()
    cli = spawn_cli("submit", f"/nonexistent/{CANARY}-spawned.jsonl")
    cli.wait(timeout=60)
    assert cli.stderr is not None
    cli.stderr.close()  # never read
    for way in ("captured", "devnull", "inherited", "unread", "spawned"):
        assert _found(f"{CANARY}-{way}"), way
    assert any("stderr of" in leak for leak in _found(f"{CANARY}-devnull-err"))


def test_a_pipe_the_test_reads_still_reads_the_same() -> None:
    out = subprocess.run(_print("same"), capture_output=True, text=True, check=True)
    assert (out.stdout, out.stderr) == ("same\n", "same-err\n")
    proc = subprocess.Popen(_print("line"), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "line\n"
    assert proc.communicate(timeout=10) == ("", None)
