"""The ledger read for status, report and export: counts, sums and summaries over every
engine's lines, batches and sessions. Nothing here writes, and nothing here is what resume or
reconcile decide by (those reads are ``Ledger``'s own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmtasks._ledger_schema import BatchState, BatchSummary, SessionRow
from llmtasks._receipt import LineState
from llmtasks._results_store import Collected, ResultsStore


class LedgerReads(ResultsStore):
    """Mixed into ``Ledger``: the reads of ``status``, ``report`` and ``export``."""

    engines: tuple[str, ...]

    def counts_by_engine(self) -> dict[str, dict[str, int]]:
        """Lines by engine, then state."""
        out: dict[str, dict[str, int]] = {e: {} for e in self.engines}
        for engine, state, n in self._db.execute(
            "SELECT engine, state, COUNT(*) FROM lines GROUP BY engine, state"
        ):
            out.setdefault(engine, {})[state] = n
        return out

    def meta(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def status_code_counts(self) -> dict[int, int]:
        """Lines by the status code the service gave them."""
        rows = self._db.execute(
            "SELECT status_code, COUNT(*) FROM lines WHERE status_code IS NOT NULL "
            "GROUP BY status_code ORDER BY status_code"
        )
        return {int(code): int(n) for code, n in rows}

    def created_totals(self) -> tuple[float, int]:
        """The cost of the created lines, and the sum of their ``collected`` flags."""
        ((cost, collected),) = self._db.execute(
            "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(collected), 0) FROM lines WHERE state = ?",
            (LineState.CREATED,),
        )
        return float(cost), int(collected)

    def batch_summary(self) -> BatchSummary:
        ((sending,),) = self._db.execute(
            "SELECT COUNT(*) FROM batches WHERE state = ?", (BatchState.SENDING,)
        )
        ((first, last, n),) = self._db.execute(
            "SELECT MIN(sent_at), MAX(COALESCE(done_at, sent_at)), COUNT(*) FROM batches"
        )
        return BatchSummary(int(n), int(sending), first, last)

    def sessions(self) -> list[SessionRow]:
        return [
            SessionRow(*row)
            for row in self._db.execute(
                "SELECT session_id, started_at, ended_at, calls, cost FROM sessions "
                "ORDER BY session_id"
            )
        ]

    def call_times(self) -> list[float]:
        """When each POST left (unix seconds), in order."""
        return [float(t) for (t,) in self._db.execute("SELECT sent_at FROM batches ORDER BY 1")]

    def retries(self) -> int:
        # Each attempt of a call is a batch row of its own, numbered by ``attempts``: every
        # row after a call's first is one retry.
        ((n,),) = self._db.execute("SELECT COUNT(*) FROM batches WHERE attempts > 1")
        return int(n)

    def line_counts(self) -> list[tuple[str, str, Collected, int]]:
        """(engine, state, collected flag, lines)."""
        rows = self._db.execute(
            "SELECT engine, state, collected, COUNT(*) FROM lines GROUP BY 1, 2, 3"
        )
        return [(e, s, Collected(c), int(n)) for e, s, c, n in rows]

    def uncollected_cost(self) -> dict[str, float]:
        """By engine: the cost of the created lines whose result is not in."""
        rows = self._db.execute(
            "SELECT engine, SUM(cost) FROM lines WHERE state = ? AND collected = ? GROUP BY 1",
            (LineState.CREATED, Collected.WAITING),
        )
        return {e: float(c) for e, c in rows if c}

    def first_result(self, engine: str) -> str | None:
        """The result JSON of the engine's first stored result that has one."""
        self.ensure_results()
        row = self._db.execute(
            "SELECT r.result FROM results r JOIN lines l ON l.task_id = r.task_id "
            "WHERE r.result IS NOT NULL AND l.engine = ? ORDER BY r.seq LIMIT 1",
            (engine,),
        ).fetchone()
        return None if row is None else str(row[0])

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL, for tests."""
        return list(self._db.execute(sql, args))
