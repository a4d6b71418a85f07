"""Progress of a long run: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any, TextIO

from llmtasks._pace import RunStats, progress_pace
from llmtasks._words import count


class _Snapshot:
    """The numbers shown, computed once per refresh from the run's counters."""

    def __init__(self, stats: RunStats, total: int | None, started: float) -> None:
        by = stats.by_state
        self.read = stats.lines_read
        self.done = sum(by.values()) + stats.already_done
        self.created = by.get("created", 0)
        self.rejected = by.get("rejected", 0)
        self.failed = by.get("failed", 0)
        self.unknown = by.get("unknown", 0)
        self.total = total
        elapsed = max(time.monotonic() - started, 1e-9)
        # Calls actually made in the last window, never an extrapolation (see _pace).
        self.pace = progress_pace(stats.window)
        self.cost = stats.cost_usd
        per_s = (self.done - stats.already_done) / elapsed
        left = None if total is None else max(total - self.done, 0)
        self.eta_s = left / per_s if left is not None and per_s > 0 else None

    def eta(self) -> str:
        if self.eta_s is None:
            return "-"
        m, s = divmod(int(self.eta_s), 60)
        h, m = divmod(m, 60)
        return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressReporter:
    """Refreshes while the run goes on; ``stop()`` draws the last state."""

    def __init__(
        self,
        stats: RunStats,
        *,
        total_lines: int | None,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        live: bool | None = None,
    ) -> None:
        self.stats = stats
        self.total = total_lines
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval_s = interval_s or (0.25 if self.live else 30.0)
        self._task: asyncio.Task[None] | None = None
        self._bar: Any = None
        self._started = time.monotonic()

    def start(self) -> None:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("[bold]llmtasks[/]"),
                BarColumn(),
                TextColumn("{task.fields[lines]}"),
                TextColumn("{task.fields[outcomes]}"),
                TextColumn("{task.fields[pace]}"),
                TextColumn("{task.fields[tail]}"),
                console=Console(file=self.stream),
                auto_refresh=False,
                transient=False,
            )
            self._bar_id = self._bar.add_task("submit", total=self.total, **self._fields())
            self._bar.start()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bar is not None:
            self._refresh()
            self._bar.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._refresh()

    def _fields(self) -> dict[str, str]:
        s = _Snapshot(self.stats, self.total, self._started)
        lines = count(s.done, "line") if s.total is None else f"{s.done:,}/{count(s.total, 'line')}"
        return {
            "lines": lines,
            "outcomes": f"{s.created:,} created {s.rejected:,} rejected {s.failed:,} failed "
            f"{s.unknown:,} unknown",
            "pace": s.pace,
            "tail": f"ETA {s.eta()} ${s.cost:.2f}",
        }

    def _refresh(self) -> None:
        fields = self._fields()
        if self._bar is not None:
            done = _Snapshot(self.stats, self.total, self._started).done
            self._bar.update(self._bar_id, completed=done, **fields)
            self._bar.refresh()
        else:
            print(
                f"llmtasks: progress: {fields['lines']}: {fields['outcomes']}; "
                f"{fields['pace']}; {fields['tail']}",
                file=self.stream,
                flush=True,
            )
