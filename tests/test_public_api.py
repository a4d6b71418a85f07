"""The public surface: what ``llmtasks`` exports, that every exception of the package is an
``LlmtasksError``, and that the docs teach only public names."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llmtasks
from llmtasks import LlmtasksError
from tests.conftest import RedisServer, require, require_module

ROOT = Path(__file__).resolve().parent.parent
# What a user of the documented workflows writes in code (docs/python-api.md): a name is
# public only when one of them needs it. Changing this list is changing the public API:
# say so in CHANGELOG.md.
PUBLIC = {
    "AuthError",
    "ChainMessage",
    "ConfigError",
    "FundsError",
    "InputError",
    "LlmtasksError",
    "Receipt",
    "Receiver",
    "Result",
    "ServiceError",
    "Submitter",
    "Task",
    "__version__",
    "collect",
    "read_lines",
    "shared_throttle",
}


def _modules() -> list[str]:
    names = ["llmtasks"]
    for info in pkgutil.walk_packages(llmtasks.__path__, "llmtasks."):
        if not info.name.endswith(".__main__"):  # importing it runs the CLI
            names.append(info.name)
    return names


def test_all_is_explicit_sorted_and_exactly_the_public_names() -> None:
    assert llmtasks.__all__ == sorted(llmtasks.__all__)
    assert len(set(llmtasks.__all__)) == len(llmtasks.__all__)
    assert set(llmtasks.__all__) == PUBLIC
    for name in llmtasks.__all__:
        assert getattr(llmtasks, name) is not None, name


def test_star_import_gives_the_public_names_and_nothing_else() -> None:
    namespace: dict[str, object] = {}
    exec("from llmtasks import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_each_public_name_is_the_object_its_private_module_defines() -> None:
    """Each public object is the one its private module defines: no wrapper, no copy."""
    for name in llmtasks.__all__:
        obj = getattr(llmtasks, name)
        module = getattr(obj, "__module__", None)
        if module is None:  # __version__
            continue
        assert module.startswith("llmtasks._"), (name, module)
        assert getattr(importlib.import_module(module), name) is obj


def test_the_heavy_parts_load_only_when_used() -> None:
    """``import llmtasks`` and every command's start leave out the receiver's and the
    emulator's aiohttp.web and the Redis client; the names that need them load on use."""
    code = (
        "import sys, llmtasks, llmtasks.emulator\n"
        "from llmtasks._cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('aiohttp.web', 'redis', 'llmtasks._receiver', 'llmtasks._shared',\n"
        "         'llmtasks.emulator._server')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "assert 'Receiver' in dir(llmtasks) and 'shared_throttle' in dir(llmtasks)\n"
        "from llmtasks import Receiver, shared_throttle\n"
        "from llmtasks.emulator import Emulator\n"
        "print(Receiver.__module__, shared_throttle.__module__, Emulator.__module__)\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert out == [
        "[]",
        "llmtasks._receiver llmtasks._shared llmtasks.emulator._server",
        "['aiohttp.web', 'llmtasks._receiver', 'llmtasks._shared', 'llmtasks.emulator._server',"
        " 'redis']",
    ]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = llmtasks.nothing  # type: ignore[attr-defined]


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class a module of the package defines, the emulator included."""
    found: dict[str, type[BaseException]] = {}
    for modname in _modules():
        for name, obj in vars(importlib.import_module(modname)).items():
            is_exception = inspect.isclass(obj) and issubclass(obj, BaseException)
            if is_exception and obj.__module__ == modname:
                found[f"{modname}.{name}"] = obj
    return found


def test_every_exception_class_of_the_package_is_an_llmtasks_error() -> None:
    """One hierarchy: ``except LlmtasksError`` catches anything the package raises of its own.
    Classes are found by walking every module, so a new one is checked without being listed."""
    found = _exception_classes()
    assert "llmtasks._errors.TaskRuleError" in found  # the walk saw the package
    assert "llmtasks._inbound.Refused" in found
    outside = sorted(n for n, cls in found.items() if not issubclass(cls, LlmtasksError))
    assert outside == []


def test_the_walk_sees_every_exception_class_in_the_source() -> None:
    """The walk imports modules and sees their top level; a class defined elsewhere (in a
    function body) would escape it. Read the source for ``class X(...Error|...Exception)``."""
    walked = {qualified.rsplit(".", 1)[1] for qualified in _exception_classes()}
    in_source: set[str] = set()
    for path in (ROOT / "llmtasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases
            ):
                in_source.add(node.name)
    assert {"LlmtasksError", "TaskRuleError", "Refused"} <= in_source
    assert in_source - walked == set()


def test_errors_stay_catchable_as_before() -> None:
    from llmtasks._errors import TaskRuleError

    assert issubclass(TaskRuleError, ValueError)
    for cls in (llmtasks.AuthError, llmtasks.ConfigError, llmtasks.InputError):
        assert cls.exit_code == 2
    assert llmtasks.FundsError.exit_code == 3
    assert llmtasks.ServiceError.exit_code == 4


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_docs_import_only_public_names(doc: Path) -> None:
    """What the docs teach is what ``__all__`` promises: no ``llmtasks._x`` in a code block
    or in the text, and every name a block imports from ``llmtasks`` is public."""
    text = doc.read_text()
    blocks = _code_blocks(text)
    for block in blocks:
        assert not re.search(r"\bllmtasks\._(?!_)", block), f"{doc.name}: {block}"
        for names in re.findall(r"from llmtasks import \(?([^)\n]*)", block):
            for name in (n.strip().split(" as ")[0] for n in names.split(",")):
                assert not name or name in PUBLIC, f"{doc.name}: {name}"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    if doc.name != "testing.md":  # mutation results name the mutants of private functions
        assert not re.findall(r"\bllmtasks\._(?!_)\w+", prose), doc.name


def test_the_python_api_doc_describes_every_public_name() -> None:
    text = (ROOT / "docs" / "python-api.md").read_text()
    for name in PUBLIC - {"__version__"}:
        assert f"`{name}" in text, name


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "example.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAFORSEO_", "LLMTASKS_"))}
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_python_api_example_runs_as_it_is(tmp_path: Path) -> None:
    """docs/python-api.md says its first example "runs as it is": it does, with the public
    names only."""
    result = _run(_python_blocks("python-api.md")[0], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert [line.split()[:3] for line in out[:4]] == [
        ["submitted", str(n), "created"] for n in (1, 2, 3, 4)
    ]
    results = [line for line in out if line.startswith("result ")]
    assert sorted(int(line.split()[1]) for line in results) == [1, 2, 3, 4]
    assert all(line.split()[2] == "20000" for line in results)


def test_the_documented_fleet_example_shares_the_limit_in_redis(tmp_path: Path) -> None:
    """The shared_throttle block of docs/python-api.md, run against an emulator and a
    loopback Redis (the block's own URL and base URL swapped for theirs): its submit and
    collect take their tokens from Redis, one budget per function."""
    require("redis-server")
    require_module("redis")
    [block] = [b for b in _python_blocks("python-api.md") if "shared_throttle(" in b]
    redis = RedisServer(tmp_path)
    try:
        body = block.replace("redis://127.0.0.1:6379/0", redis.url)
        body = body.replace("password=password,", "password=password, base_url=emu.base_url,")
        body = body.replace("            ...\n", "            print(receipt.line, receipt.state)\n")
        body = body.replace("        ...\n", "        print(result.line, result.status_code)\n")
        script = (
            "import asyncio\n"
            "from llmtasks.emulator import Emulator, EmulatorConfig\n\n"
            "async def main() -> None:\n"
            "    login, password = 'login', 'password'\n"
            "    tasks = [{'user_prompt': f'q{i}', 'model_name': 'gpt-4o'} for i in range(3)]\n"
            "    async with Emulator(EmulatorConfig(completion_delay_s=0.2)) as emu:\n"
            + "".join(f"        {line}\n" if line else "\n" for line in body.splitlines())
            + "\nasyncio.run(main())\n"
        )
        result = _run(script, tmp_path)
        assert result.returncode == 0, f"{script}\n{result.stderr}"
        out = result.stdout.splitlines()
        assert sorted(out[:3]) == ["1 created", "2 created", "3 created"], result.stdout
        assert sorted(out[3:]) == ["1 20000", "2 20000", "3 20000"], result.stdout

        import redis as redis_client

        with redis_client.Redis.from_url(redis.url) as db:
            logs = {key.decode() for key in db.keys("llmtasks:*:log")}
            used = {log.split(":")[-2] for log in logs if db.zcard(log) > 0}
        assert {"task_post", "task_get", "tasks_ready"} <= used, logs
    finally:
        redis.stop()
