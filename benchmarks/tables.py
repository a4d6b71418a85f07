"""The tables of docs/benchmarks.md, rendered from benchmarks/results/*.json.

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in the docs;
``update()`` rewrites them, ``check()`` lists those that differ from their JSON (a test runs
it, so a figure in the docs is always the one in the committed results).

    python benchmarks/tables.py [--check]
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs" / "benchmarks.md"

_BLOCK = re.compile(r"(<!-- bench:(\w+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def load(name: str, results: Path = RESULTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return data


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f}%"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def provenance(r: dict[str, Any]) -> str:
    m = r["machine"]
    dirty = " **with uncommitted changes**" if r.get("dirty") else ""
    load = m.get("load_average")
    busy = f"; load average {load[0]:.1f} at the start" if load else ""
    return (
        f"<sub>`{r.get('command', '?')}` at commit `{r.get('commit') or m.get('commit')}`{dirty}, "
        f"{r.get('date', 'date not recorded')}: {m['cpus']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, msgspec {m['msgspec']}{busy}.</sub>"
    )


def t_summary(res: Path) -> str:
    rate, thr, mem, lat = (load(n, res) for n in ("rate", "throughput", "memory", "latency"))
    ours = [x for x in rate["summary"] if x["client"] == "llmtasks"]
    peaks = ", ".join(
        f"{x['peak_window_all_arrivals']} of {x['rate']} per {x['period_s']:g} s"
        + (f" ({x['jitter_ms']:g} ms jitter)" if x["jitter_ms"] else "")
        for x in ours
    )
    over = all(x["peak_window_all_arrivals"] <= x["rate"] for x in ours)
    n40202 = sum(x["status_40202"] for x in ours)
    util = min(x["mean_full_window_utilization"] for x in ours)
    cl = thr["clients"]
    lt = cl["llmtasks"]
    vs_raw = thr["ratios"]["llmtasks_vs_raw_aiohttp"]
    vs_off = thr["ratios"].get("llmtasks_vs_dataforseo_client")
    marginal = lt["cpu_us_per_task_marginal"]
    rss = [r["max_rss_mb"] for r in mem["runs"]]
    n_lines = [r["lines"] for r in mem["runs"]]
    sizes = f"{_n(min(n_lines))} to {_n(max(n_lines))}"
    out = [
        _row("what", "goal", "measured", ""),
        "|---|---|---|---|",
        _row(
            "peak calls in any sliding window, as the server counts them",
            "never over the limit",
            peaks,
            "met" if over else "**missed**",
        ),
        _row("40202 answers to llmtasks", "zero", n40202, "met" if n40202 == 0 else "**missed**"),
        _row(
            "utilization of the limit (mean full window), default settings",
            "≥ 98%",
            _pct(util),
            "met" if util >= 0.98 else "**missed**",
        ),
        _row(
            f"throughput end to end, {_n(thr['tasks'])} tasks, vs raw aiohttp",
            "≥ 0.5×",
            f"{_n(lt['tasks_per_s'])} vs {_n(cl['raw_aiohttp']['tasks_per_s'])} tasks/s = "
            f"**{vs_raw:.2f}×**",
            "met" if vs_raw >= 0.5 else "**missed**",
        ),
    ]
    if vs_off is not None:
        out.append(
            _row(
                "throughput vs the official dataforseo-client",
                "≥ 3×",
                f"{_n(lt['tasks_per_s'])} vs {_n(cl['dataforseo_client']['tasks_per_s'])} "
                f"tasks/s = **{vs_off:.2f}×**",
                "met" if vs_off >= 3 else "**missed**",
            )
        )
    a, b = lt["marginal_between_tasks"]
    out += [
        _row(
            f"client CPU per task at the margin ({_n(a)} → {_n(b)} tasks)",
            "≤ 10 µs",
            f"**{marginal:.1f} µs**",
            "met" if marginal <= 10 else "**missed**",
        ),
        _row(
            f"peak RSS of `submit`, {sizes} lines",
            "flat, < 100 MB",
            f"{min(rss):.1f}–{max(rss):.1f} MB",
            "met" if max(rss) < 100 else "**missed**",
        ),
    ]
    for limit in sorted({x["limit_per_min"] for x in lat["cases"]}):
        cases = [x for x in lat["cases"] if x["limit_per_min"] == limit]
        figs = " / ".join(f"{_pct(x['of_best_possible'])} at {x['latency_s']:g} s" for x in cases)
        ok = all(x["of_best_possible"] >= 0.98 for x in cases)
        out.append(
            _row(
                f"calls/min at {_n(limit)}/min, of min(limit, 30/latency)",
                "≥ 98%",
                figs,
                "met" if ok else "**missed**",
            )
        )
    made = "; ".join(
        f"{r['benchmark']} at `{r.get('commit', '?')}`"
        + (" (uncommitted changes)" if r.get("dirty") else "")
        + f", {r.get('date', '?')}, load {r['machine'].get('load_average', ['?'])[0]}"
        for r in (rate, thr, mem, lat)
    )
    return "\n".join(out) + f"\n\n<sub>{made}.</sub>"


def t_rate(res: Path) -> str:
    r = load("rate", res)
    out = [
        _row(
            "client",
            "limit",
            "calls",
            "peak in any window",
            "first window",
            "40202",
            "utilization (calls/s over the run)",
            "mean full window",
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["summary"]:
        name = {"llmtasks": "llmtasks", "aiolimiter": f"`AsyncLimiter({x['rate']}, "}.get(
            x["client"], x["client"]
        )
        if x["client"] == "aiolimiter":
            name += f"{x['period_s']:g})`"
        if x["jitter_ms"]:
            name += f" + 0–{x['jitter_ms']:g} ms jitter"
        out.append(
            _row(
                name,
                f"{x['rate']} / {x['period_s']:g} s",
                x["calls"],
                f"**{x['peak_window_all_arrivals']}**",
                x["first_window_arrivals"],
                f"**{x['status_40202']}**",
                _pct(x["rate_utilization"]),
                _pct(x["mean_full_window_utilization"]),
            )
        )
    return "\n".join(out) + "\n\n" + provenance(r)


def t_throughput(res: Path) -> str:
    r = load("throughput", res)
    names = {
        "llmtasks": "llmtasks (end to end)",
        "raw_aiohttp": "raw aiohttp, pre-encoded bodies",
        "dataforseo_client": "dataforseo-client, 30 threads",
    }
    out = [
        _row("client", "tasks/s", "seconds", "client CPU µs/task", "emulator CPU µs/task"),
        "|---|---|---|---|---|",
    ]
    for key, x in r["clients"].items():
        cpu = f"{x['cpu_us_per_task']:.1f}"
        if key == "llmtasks":
            cpu += f" (at the margin: **{x['cpu_us_per_task_marginal']:.1f}**)"
        out.append(
            _row(
                names.get(key, key),
                f"**{_n(x['tasks_per_s'])}**" if key == "llmtasks" else _n(x["tasks_per_s"]),
                f"{x['seconds']:.2f}",
                cpu,
                f"{x['emulator_cpu_us_per_task']:.1f}",
            )
        )
    ratios = "; ".join(f"{k.replace('_', ' ')} = **{v}**" for k, v in r["ratios"].items())
    lt = r["clients"]["llmtasks"]
    a, b = lt["marginal_between_tasks"]
    ceiling = r["emulator_ceiling"]["tasks_per_s"]
    bound = ""
    if "cpu_bound" in r:
        cb = r["cpu_bound"]
        bound = (
            f" The llmtasks run and the emulator serving it spent {cb['client_cpu_s']:.2f} s "
            f"and {cb['emulator_cpu_s']:.2f} s of CPU: on {cb['cpus']} cores that run could "
            f"not have taken less than {cb['fewest_seconds']:.2f} s, so at this CPU per task "
            f"the ratio to raw aiohttp cannot exceed **{cb['best_ratio_vs_raw_aiohttp']:.2f}** "
            "here, however the work were spread."
        )
    return (
        "\n".join(out)
        + f"\n\nRatios: {ratios}. {_n(r['tasks'])} tasks, {r['concurrency']} calls in flight"
        + (f", each figure the median of {r['rounds']} rounds" if r.get("rounds", 1) > 1 else "")
        + "; "
        f"llmtasks peak RSS {lt['max_rss_mb']:.1f} MB; one-line run "
        f"{lt['fixed_cost_one_line']['cpu_s']:.2f} s of CPU; margin between {_n(a)} and "
        f"{_n(b)} tasks. The emulator's own ceiling in this run: {_n(ceiling)} tasks/s."
        + bound
        + "\n\n"
        + provenance(r)
    )


def t_profile(res: Path) -> str:
    r = load("throughput", res)
    lines = r.get("llmtasks_profile_top_tottime") or []
    return "```text\n" + "\n".join(lines) + "\n```"


def t_memory(res: Path) -> str:
    r = load("memory", res)
    out = [
        _row("source", "lines", "input", "peak RSS", "seconds", "tasks/s", "CPU µs/task", "ledger"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        out.append(
            _row(
                x["source"],
                _n(x["lines"]),
                f"{_n(x['input_mb'], 1)} MB",
                f"**{x['max_rss_mb']:.1f} MB**",
                f"{x['seconds']:.1f}",
                _n(x["tasks_per_s"]),
                f"{x['cpu_us_per_task']:.1f}",
                f"{_n(x['ledger_mb'], 1)} MB",
            )
        )
    return "\n".join(out) + "\n\n" + provenance(r)


def t_latency(res: Path) -> str:
    r = load("latency", res)
    out = [
        _row(
            "limit /min",
            "latency",
            "calls/min",
            "best possible",
            "of best possible",
            "bound by",
            "40202 / 40209",
            "client CPU",
            "raw aiohttp, same case",
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["cases"]:
        raw = x.get("raw_aiohttp_of_best_possible")
        out.append(
            _row(
                _n(x["limit_per_min"]),
                f"{x['latency_s']:g} s",
                _n(x["calls_per_min"]),
                _n(x["best_possible_per_min"]),
                f"**{_pct(x['of_best_possible'])}**",
                x["bound_by"],
                f"{x['status_40202']} / {x['status_40209']}",
                f"{x['client_cpu_share'] * 100:.0f}%",
                "" if raw is None else _pct(raw),
            )
        )
    return (
        "\n".join(out)
        + f"\n\nEach case about {r['duration_s']:g} s, {r['batch_size']} tasks per call.\n\n"
        + provenance(r)
    )


def t_fleet(res: Path) -> str:
    r = load("fleet", res)
    out = [
        _row(
            "processes",
            "mode",
            "--rate each",
            "calls",
            "40202",
            f"peak in {r['period_s']:g} s",
            "utilization",
            "wall",
            "Redis scripts per call",
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["cases"]:
        util = _pct(x["utilization"])
        out.append(
            _row(
                x["procs"],
                x["mode"],
                x["rate_per_process"],
                x["calls"],
                x["status_40202"],
                x["peak_window_all_arrivals"],
                f"**{util}**" if x["mode"] == "shared" else util,
                f"{x['wall_s']:.1f} s",
                x.get("redis_scripts_per_admission", ""),
            )
        )
    return (
        "\n".join(out)
        + f"\n\n{r['lines']} lines, limit {r['rate']} per {r['period_s']:g} s.\n\n"
        + provenance(r)
    )


def t_export(res: Path) -> str:
    out = [
        _row("table", "format", "results", "rows", "ledger", "output", "peak RSS", "seconds"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("export", ""), ("export-parquet", ", statistics on short columns only")):
        for x in load(name, res)["runs"]:
            fmt = {"csv": "CSV", "jsonl": "JSONL", "parquet": "Parquet"}[x["format"]]
            out.append(
                _row(
                    x["table"],
                    fmt + (label if x["format"] == "parquet" else ""),
                    _n(x["results"]),
                    _n(x["rows"]),
                    f"{_n(x['ledger_mb'])} MB",
                    f"{x['out_mb']:g} MB",
                    f"**{x['max_rss_mb']:.1f} MB**",
                    _n(x["seconds"]),
                )
            )
    return "\n".join(out) + "\n\n" + provenance(load("export", res))


TABLES: dict[str, Callable[[Path], str]] = {
    "summary": t_summary,
    "rate": t_rate,
    "throughput": t_throughput,
    "profile": t_profile,
    "memory": t_memory,
    "latency": t_latency,
    "fleet": t_fleet,
    "export": t_export,
}


def render(text: str, results: Path = RESULTS) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"docs/benchmarks.md: no table named {name!r}")
        return f"{m.group(1)}{TABLES[name](results)}\n{m.group(4)}"

    return _BLOCK.sub(one, text)


def check(docs: Path = DOCS, results: Path = RESULTS) -> list[str]:
    """Names of the tables in ``docs`` that differ from what their JSON renders."""
    text = docs.read_text()
    fresh = render(text, results)
    old = {m.group(2): m.group(3) for m in _BLOCK.finditer(text)}
    new = {m.group(2): m.group(3) for m in _BLOCK.finditer(fresh)}
    return [name for name in old if old[name] != new[name]]


def update(docs: Path = DOCS, results: Path = RESULTS) -> None:
    docs.write_text(render(docs.read_text(), results))


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        stale = check()
        print("stale tables: " + ", ".join(stale) if stale else "tables up to date")
        sys.exit(1 if stale else 0)
    update()
