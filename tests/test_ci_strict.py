"""CI cannot pass green without the tests that need redis-server: under CI=true a missing
redis-server fails them; elsewhere it skips them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest_without_redis_server(
    tmp_path: Path, ci: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)  # an empty directory: no redis-server on the PATH
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_shared_limit.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_redis_server_fails_under_ci(tmp_path: Path) -> None:
    r = _pytest_without_redis_server(tmp_path, "true")
    assert r.returncode != 0, r.stdout
    assert "redis-server is not installed" in r.stdout and "CI=true" in r.stdout, r.stdout


def test_missing_redis_server_skips_elsewhere(tmp_path: Path) -> None:
    r = _pytest_without_redis_server(tmp_path, None)
    assert r.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, r.stdout
    assert "skipped" in r.stdout and "redis-server is not installed" in r.stdout, r.stdout


def test_ci_script_sets_ci_and_fails_without_redis_server() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "export CI=true" in script.split("python -m pytest")[0]
    install = script.split("command -v redis-server")[1].split("\n}\n")[0]
    assert "exit 1" in install and "WARNING" not in install
