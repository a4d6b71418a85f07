"""``report``: one self-contained HTML page that pictures a run from its ledger.

Charts are matplotlib SVG inlined in the page (text drawn as paths: no font, script or
file is fetched, so the page opens offline and looks the same everywhere). matplotlib is
the optional ``report`` extra. The figures come only from what the ledger records:

- calls per minute: each task_post call (a ``batches`` row, at its ``sent_at``); retries of
  a call are counted in the caption, not in time (the ledger keeps their number only);
- outcomes: each line's state, created tasks split by what ``collect`` found;
- cost: the service's task cost of each created line, by engine and by the dated model
  its result names;
- time to result: from a task's POST to its result stored in the ledger (both on this
  machine's clock), so it includes how long collecting took;
- per engine, over collected answers: share that searched the web, citations per answer,
  the most cited registered domains.
"""

from __future__ import annotations

import array
import html
import importlib
import io
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

from llmtasks._errors import ConfigError
from llmtasks._export import flattened
from llmtasks._ledger import Ledger

REPORT_HINT: Final = "pip install 'llmtasks[report]'"
TOP_DOMAINS: Final = 15
_NOT_COLLECTED: Final = "(no result)"
_OUTCOMES: Final = (
    ("collected", "#2e7d32"),
    ("failed on the service", "#c62828"),
    ("waiting for a result", "#9e9e9e"),
    ("rejected", "#ef6c00"),
    ("failed", "#ad1457"),
    ("unknown", "#6a1b9a"),
    ("pending", "#1565c0"),
    ("skipped", "#cfd8dc"),
)


@dataclass
class EngineFacts:
    states: Counter[str] = field(default_factory=Counter)
    answers: int = 0
    searched: int = 0
    citations: int = 0
    domains: Counter[str] = field(default_factory=Counter)
    latency_s: array.array[float] = field(default_factory=lambda: array.array("d"))


@dataclass
class RunFacts:
    ledger: str
    run_id: str
    input_name: str
    limit_per_minute: float
    calls: list[float]
    retries: int
    engines: dict[str, EngineFacts]
    cost: dict[tuple[str, str], float]
    money_spent: dict[tuple[str, str], float]


def gather(ledger: Ledger, *, limit_per_minute: float) -> RunFacts:
    """Read everything the report shows, streaming the results once."""
    engines: defaultdict[str, EngineFacts] = defaultdict(EngineFacts)
    calls = ledger.call_times()
    retries = ledger.retries()
    ledger.ensure_results()
    for engine, state, collected, n in ledger.line_counts():
        if state == "created":
            state = ("waiting for a result", "collected", "failed on the service")[collected]
        engines[engine].states[state] += n
    cost: defaultdict[tuple[str, str], float] = defaultdict(float)
    spent: defaultdict[tuple[str, str], float] = defaultdict(float)
    for engine, n_cost in ledger.uncollected_cost().items():
        cost[(engine, _NOT_COLLECTED)] += n_cost
    for row, flat in flattened(ledger):
        e = engines[row.engine]
        model = flat.model_name or _NOT_COLLECTED
        cost[(row.engine, model)] += row.cost or 0.0
        spent[(row.engine, model)] += flat.money_spent or 0.0
        if row.sent_at is not None:
            e.latency_s.append(max(0.0, row.collected_at - row.sent_at))
        if row.status_code != 20000:
            continue
        e.answers += 1
        e.searched += bool(flat.web_search)
        e.citations += len(flat.citations)
        e.domains.update(c.domain for c in flat.citations if c.domain is not None)
    return RunFacts(
        ledger=ledger.path,
        run_id=ledger.run_id,
        input_name=ledger.input_name,
        limit_per_minute=limit_per_minute,
        calls=calls,
        retries=int(retries),
        engines=dict(sorted(engines.items())),
        cost=dict(cost),
        money_spent=dict(spent),
    )


def calls_per_minute(calls: list[float]) -> tuple[list[int], int]:
    """(calls in each whole minute from the first call, most calls in any 60 s window)."""
    if not calls:
        return [], 0
    start = calls[0]
    bins = [0] * (int((calls[-1] - start) // 60) + 1)
    for t in calls:
        bins[int((t - start) // 60)] += 1
    peak, lo = 0, 0
    for hi, t in enumerate(calls):
        while t - calls[lo] >= 60.0:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return bins, peak


# -- drawing --------------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        importlib.import_module("matplotlib")
        figure = importlib.import_module("matplotlib.figure")
    except ImportError:
        raise ConfigError(f"report draws its charts with matplotlib: {REPORT_HINT}") from None
    return figure


class _Charts:
    def __init__(self) -> None:
        self._figure = _matplotlib()
        self._n = 0

    def figure(self, width: float = 8.0, height: float = 3.2) -> Any:
        return self._figure.Figure(figsize=(width, height), layout="constrained")

    def svg(self, fig: Any) -> str:
        import matplotlib

        self._n += 1
        buf = io.StringIO()
        # A salt per chart: ids in one SVG must not collide with another's in the same page.
        with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": f"llmtasks-{self._n}"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
        text = buf.getvalue()
        return text[text.index("<svg") :]


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_axis_off()


def _chart_calls(charts: _Charts, facts: RunFacts) -> str:
    bins, _peak = calls_per_minute(facts.calls)
    fig = charts.figure()
    ax = fig.add_subplot()
    if bins:
        ax.bar(range(len(bins)), bins, width=1.0, align="edge", color="#1565c0", label="calls")
        ax.axhline(facts.limit_per_minute, color="#c62828", linestyle="--", label="limit")
        ax.set_xlabel("minute of the run (from the first call)")
        ax.set_ylabel("task_post calls")
        ax.set_ylim(0, max(max(bins), facts.limit_per_minute) * 1.1)
        ax.legend(loc="lower right")
    else:
        _empty(ax, "no calls recorded")
    return charts.svg(fig)


def _chart_outcomes(charts: _Charts, facts: RunFacts) -> str:
    names = list(facts.engines)
    fig = charts.figure(height=0.6 + 0.5 * max(1, len(names)))
    ax = fig.add_subplot()
    left = [0] * len(names)
    for outcome, color in _OUTCOMES:
        values = [facts.engines[e].states.get(outcome, 0) for e in names]
        if any(values):
            ax.barh(names, values, left=left, color=color, label=outcome)
            left = [a + b for a, b in zip(left, values, strict=True)]
    if names:
        ax.set_xlabel("input lines")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        _empty(ax, "no lines recorded")
    return charts.svg(fig)


def _chart_cost(charts: _Charts, facts: RunFacts) -> str:
    keys = sorted(facts.cost)
    fig = charts.figure(height=0.6 + 0.4 * max(1, len(keys)))
    ax = fig.add_subplot()
    if keys:
        labels = [f"{e} · {m}" for e, m in keys]
        ax.barh(labels, [facts.cost[k] for k in keys], color="#00695c", label="task cost")
        ax.barh(
            labels,
            [facts.money_spent.get(k, 0.0) for k in keys],
            color="#80cbc4",
            height=0.4,
            label="LLM provider's charge (money_spent)",
        )
        ax.set_xlabel("USD")
        ax.invert_yaxis()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        _empty(ax, "no created tasks")
    return charts.svg(fig)


def _chart_latency(charts: _Charts, facts: RunFacts) -> str:
    fig = charts.figure()
    ax = fig.add_subplot()
    series = {e: f.latency_s for e, f in facts.engines.items() if len(f.latency_s)}
    if series:
        top = max(max(v) for v in series.values()) or 1.0
        bins = [top * i / 40 for i in range(41)]
        for engine, values in series.items():
            ax.hist(values, bins=bins, histtype="step", linewidth=2, label=engine)
        ax.set_xlabel("seconds from the POST to the result stored")
        ax.set_ylabel("tasks")
        ax.legend()
    else:
        _empty(ax, "no results collected")
    return charts.svg(fig)


def _chart_search(charts: _Charts, facts: RunFacts) -> str:
    names = [e for e, f in facts.engines.items() if f.answers]
    fig = charts.figure(height=2.8)
    if not names:
        _empty(fig.add_subplot(), "no answers collected")
        return charts.svg(fig)
    share, per = fig.subplots(1, 2)
    share.bar(names, [100 * facts.engines[e].searched / facts.engines[e].answers for e in names])
    share.set_ylabel("% of answers")
    share.set_title("searched the web", fontsize=10)
    share.set_ylim(0, 100)
    per_answer = [facts.engines[e].citations / facts.engines[e].answers for e in names]
    per.bar(names, per_answer, color="#6a1b9a")
    per.set_ylim(0, max(1.0, *per_answer) * 1.1)
    per.set_ylabel("citations")
    per.set_title("citations per answer", fontsize=10)
    return charts.svg(fig)


def _chart_domains(charts: _Charts, facts: RunFacts) -> str:
    names = [e for e, f in facts.engines.items() if f.domains]
    if not names:
        fig = charts.figure(height=1.2)
        _empty(fig.add_subplot(), "no citations in the collected answers")
        return charts.svg(fig)
    tops = {e: facts.engines[e].domains.most_common(TOP_DOMAINS) for e in names}
    rows = max(len(top) for top in tops.values())
    fig = charts.figure(width=max(6.0, 4.0 * len(names)), height=1.0 + 0.3 * rows)
    for ax, engine in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        top = tops[engine]
        ax.barh([d for d, _ in top], [n for _, n in top], color="#ef6c00")
        ax.invert_yaxis()
        ax.set_title(engine, fontsize=10)
        ax.set_xlabel("citations")
    return charts.svg(fig)


# -- the page -------------------------------------------------------------------------------

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
figure { margin: 0.5em 0; } figure svg { max-width: 100%; height: auto; }
figcaption, .meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
"""


def _summary_table(facts: RunFacts) -> str:
    head = (
        "<tr><th>engine</th><th>lines</th><th>collected</th><th>task cost</th>"
        "<th>searched</th><th>citations per answer</th><th>median time to result</th></tr>"
    )
    rows = []
    for engine, f in facts.engines.items():
        cost = sum(v for (e, _m), v in facts.cost.items() if e == engine)
        searched = f"{100 * f.searched / f.answers:.0f}%" if f.answers else "-"
        per = f"{f.citations / f.answers:.2f}" if f.answers else "-"
        median = f"{statistics.median(f.latency_s):.1f} s" if len(f.latency_s) else "-"
        rows.append(
            f"<tr><td>{html.escape(engine)}</td><td>{sum(f.states.values())}</td>"
            f"<td>{f.states.get('collected', 0)}</td><td>${cost:.4f}</td>"
            f"<td>{searched}</td><td>{per}</td><td>{median}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render(facts: RunFacts) -> str:
    charts = _Charts()
    _bins, peak = calls_per_minute(facts.calls)
    retries = f"; {facts.retries} retried calls not shown" if facts.retries else ""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sections = [
        (
            "Calls per minute",
            _chart_calls(charts, facts),
            f"{len(facts.calls)} task_post calls; at most {peak} in any 60 s window, "
            f"limit {facts.limit_per_minute:g} per minute{retries}.",
        ),
        (
            "Outcomes by engine",
            _chart_outcomes(charts, facts),
            "Every input line's state; created tasks split by what collect found.",
        ),
        (
            "Cost by engine and model",
            _chart_cost(charts, facts),
            "The service's cost of each created task, by the dated model its result names.",
        ),
        (
            "Time from submit to result",
            _chart_latency(charts, facts),
            "From each task's POST to its result stored in the ledger (includes polling).",
        ),
        (
            "Web search and citations",
            _chart_search(charts, facts),
            "Over collected answers (status 20000) of each engine.",
        ),
        (
            f"Top {TOP_DOMAINS} cited domains",
            _chart_domains(charts, facts),
            "Registered domains of the cited sources, per engine.",
        ),
    ]
    body = "".join(
        f'<section><h2>{html.escape(title)}</h2><figure class="chart">{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure></section>"
        for title, svg, caption in sections
    )
    title = f"llmtasks run {facts.run_id}"
    meta = (
        f"ledger {html.escape(facts.ledger)} · input {html.escape(facts.input_name or '-')} · "
        f"made {made}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{meta}</p>'
        f"{_summary_table(facts)}{body}</body></html>\n"
    )


_EXTERNAL: Final = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def external_references(page: str) -> list[str]:
    """Attributes of ``page`` that would fetch something from elsewhere (should be none)."""
    return _EXTERNAL.findall(page)


def write_report(ledger: Ledger, out: str, *, limit_per_minute: float) -> RunFacts:
    _matplotlib()  # the missing extra is an error before anything is read
    facts = gather(ledger, limit_per_minute=limit_per_minute)
    page = render(facts)
    from llmtasks._outputs import atomic_file

    with atomic_file(out) as f:
        f.write(page.encode())
    return facts
