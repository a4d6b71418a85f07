"""``status`` and ``export``: what a ledger says, for people and for scripts."""

from __future__ import annotations

import shlex
from typing import Any

from llmtasks._ledger import Ledger
from llmtasks._words import count


def ledger_status(ledger: Ledger) -> dict[str, Any]:
    """Everything ``llmtasks status`` shows, as plain data (``--json`` prints it as is)."""
    meta = ledger.meta()
    states = ledger.counts(all_engines=True)
    codes = {str(code): n for code, n in ledger.status_code_counts().items()}
    cost, collected = ledger.created_totals()
    calls = ledger.batch_summary()
    sending, first, last, n_batches = (
        calls.sending,
        calls.first_call_at,
        calls.last_call_at,
        calls.calls,
    )
    sessions = [
        {
            "session": sid,
            "started_at": started,
            "ended_at": ended,
            "calls": n_calls,
            "cost_usd": round(scost, 6),
        }
        for sid, started, ended, n_calls, scost in ledger.sessions()
    ]
    return {
        "ledger": ledger.path,
        "input": meta.get("input", ""),
        "engine": ledger.engine,
        "engines": {e: dict(sorted(n.items())) for e, n in ledger.counts_by_engine().items()},
        "run_id": ledger.run_id,
        "lines": sum(states.values()),
        "states": states,
        "status_codes": codes,
        "cost_usd": round(float(cost), 6),
        "collected": int(collected),
        "calls": n_batches,
        "calls_sending": sending,
        "first_call_at": first,
        "last_call_at": last,
        "sessions": sessions,
        "next": next_steps(ledger, states, meta.get("input", ""), sending),
    }


def next_steps(
    ledger: Ledger, states: dict[str, int], input_name: str, sending: int = 0
) -> list[str]:
    """The commands that continue this job, in the order to run them. Calls still marked
    ``sending`` belong to a run that is going on or died: the next submit marks their lines
    ``unknown``, and reconcile then looks them up."""
    steps: list[str] = []
    where = f"--ledger {shlex.quote(ledger.path)}"
    engines = ",".join(ledger.engines)
    engine = "" if engines == "chat_gpt" else f" --engine {engines}"
    if states.get("unknown"):
        steps.append(f"llmtasks reconcile {where}")
    if states.get("pending") or states.get("unknown") or sending:
        source = shlex.quote(input_name) if input_name else "INPUT"
        steps.append(f"llmtasks submit {source}{engine} {where}")
    return steps


def format_status(status: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    def when(ts: float | None) -> str:
        if ts is None:
            return "-"
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    states = status["states"]
    # A status from before fan-out has no per-engine counts: its one engine has them all.
    by_engine: dict[str, dict[str, int]] = status.get("engines") or {status["engine"]: states}
    order = ["created", "rejected", "failed", "skipped", "unknown", "sending", "pending"]
    out = [
        f"ledger   {status['ledger']}",
        f"input    {status['input'] or '-'}   engine {','.join(by_engine)}   "
        f"run {status['run_id']}",
        f"lines    {status['lines']:,}: "
        + ", ".join(f"{states[s]:,} {s}" for s in order if states.get(s)),
        "codes    " + (", ".join(f"{c}: {n:,}" for c, n in status["status_codes"].items()) or "-"),
        f"cost     ${status['cost_usd']:.4f} reported by the service",
        f"calls    {status['calls']:,} from {when(status['first_call_at'])} "
        f"to {when(status['last_call_at'])}"
        + (
            f"; {status['calls_sending']:,} in flight or cut off by a run that died"
            if status["calls_sending"]
            else ""
        ),
    ]
    if len(by_engine) > 1:
        # A fan-out: one outcome per (line, engine); each engine's share.
        for engine, by in by_engine.items():
            out.insert(
                3 + list(by_engine).index(engine),
                f"  {engine:<9}{sum(by.values()):,}: "
                + ", ".join(f"{by[s]:,} {s}" for s in order if by.get(s)),
            )
    for s in status["sessions"]:
        ended = "still running or killed" if s["ended_at"] is None else when(s["ended_at"])
        out.append(
            f"  run {s['session']}: {when(s['started_at'])} to {ended}, "
            f"{count(s['calls'], 'call')}, ${s['cost_usd']:.4f}"
        )
    if status["next"]:
        out.append("to continue:")
        out.extend(f"  {cmd}" for cmd in status["next"])
    else:
        out.append("nothing left to send")
    return "\n".join(out)
