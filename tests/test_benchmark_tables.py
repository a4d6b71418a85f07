"""The figures in docs/benchmarks.md are those of benchmarks/results/*.json, never typed in.

Each table between ``<!-- bench:NAME -->`` markers must be exactly what benchmarks/tables.py
renders from the committed results; ``python benchmarks/run_all.py`` (or ``tables.py``)
rewrites them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_table_in_the_docs_is_its_json() -> None:
    tables = _tables()
    text = DOCS.read_text()
    names = [m.group(2) for m in tables._BLOCK.finditer(text)]
    assert set(names) == set(tables.TABLES), "every table has its place in the docs"
    assert tables.check(DOCS, RESULTS) == [], "run: python benchmarks/tables.py"


def test_a_changed_figure_is_caught(tmp_path: Path) -> None:
    tables = _tables()
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    data = json.loads((results / "throughput.json").read_text())
    data["clients"]["llmtasks"]["tasks_per_s"] += 1000
    (results / "throughput.json").write_text(json.dumps(data))
    stale = tables.check(DOCS, results)
    assert "throughput" in stale and "summary" in stale and "rate" not in stale


@pytest.mark.parametrize("name", ["rate", "throughput", "memory", "latency", "fleet"])
def test_results_name_their_commit_and_command(name: str) -> None:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    assert data["quick"] is False
    assert data["commit"] and isinstance(data["dirty"], bool)
    assert data["command"].startswith(f"python benchmarks/bench_{name}.py")
    assert data["machine"]["cpus"] > 0
