"""Small pieces of the command line that the end-to-end tests do not pin down exactly."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from llmtasks._cli import main
from llmtasks._cmd_submit import _shard
from llmtasks._submit_run import (
    GC_YOUNG_THRESHOLD,
    SWITCH_INTERVAL_S,
    count_lines,
    tuned_for_a_run,
)


@pytest.mark.parametrize(
    ("data", "lines"),
    [(b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2)],
)
def test_count_lines_counts_a_last_line_without_newline(
    tmp_path: Path, data: bytes, lines: int
) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    assert count_lines(str(path)) == lines
    assert count_lines("-") is None


def test_shard_option() -> None:
    assert _shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        with pytest.raises(Exception, match="I/N"):
            _shard(bad)


def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("llmtasks 0.")
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_a_run_tunes_the_interpreter_and_sets_it_back() -> None:
    before = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    assert before > SWITCH_INTERVAL_S and thresholds[0] < GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), tuned_for_a_run():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *thresholds[1:])
        assert gc.get_freeze_count() > 0
        raise RuntimeError
    assert sys.getswitchinterval() == before
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_a_run_leaves_someone_elses_frozen_objects_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with tuned_for_a_run():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
