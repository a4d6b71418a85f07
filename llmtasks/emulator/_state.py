"""What the emulator remembers: created tasks, their life cycle, calls, windows and money,
and ``Service``, which bundles them for the gate and the handlers.

Everything here is synchronous: handlers mutate state between awaits, so no locks are needed.
Nothing is scheduled per task; a task's completion time is fixed at creation and readiness is
worked out lazily from a creation-ordered deque, which scales to millions of tasks.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from typing import Any, Final

import msgspec

from llmtasks.emulator._config import EmulatorConfig
from llmtasks.emulator._rules import Policy

# Any odd multiplier is a bijection on 48-bit integers: ids stay unique yet look random.
_MIX48 = 0x9E3779B97F4B
_MASK48 = (1 << 48) - 1
_MIX64 = 0xBF58476D1CE4E5B9
_DIGITS4 = tuple(f"{i:04d}" for i in range(10000))


# Every created task is kept for the emulator's lifetime: with a dict in each, a run of a
# few hundred thousand tasks made each full collection of the cyclic GC walk them all
# (0.1 s pauses at 250,000, which delayed every answer due meanwhile). Only atomic fields
# and ``gc=False``: the store is never walked.
class CreatedTask(msgspec.Struct, frozen=True, gc=False):
    """One task the emulator created (status 20100), in creation order."""

    id: str
    engine: str
    tag: str | None
    user_prompt: str
    model_name: str
    posted_at: float  # unix seconds
    # The ``data`` echo of task_post (api, function, se, the fields sent), as sent back.
    data_raw: msgspec.Raw = msgspec.field(name="data")
    cost_usd: float = 0.0
    failed: bool = False  # fails on the service when done (``task_fail_rate``); refunded

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` echo, decoded (a new dict each time)."""
        data: dict[str, Any] = _decode_data(self.data_raw)
        return data


_decode_data: Final = msgspec.json.Decoder(dict[str, Any]).decode


class CallRecord(msgspec.Struct, frozen=True, gc=False):
    """One API call as the server saw it. ``at`` is ``time.monotonic()`` at arrival."""

    at: float
    at_wall: float
    method: str
    path: str
    http_status: int  # 0 when the reply was dropped
    status_code: int | None  # None when the reply had no envelope (HTTP 500 fault)
    tasks_created: int
    dropped: bool = False


class SlidingWindow:
    """At most ``limit`` calls in any window of ``period_s`` seconds, refused ones included.

    Every call counts, admitted or not (the safe reading of the docs): a client that keeps
    calling while refused stays refused.
    """

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def hit(self, now: float, limit: int | None, period_s: float) -> bool:
        """Count a call at ``now``; whether it is within the limit."""
        if limit is None:
            return True
        times = self._times
        horizon = now - period_s
        while times and times[0] <= horizon:
            times.popleft()
        ok = len(times) < limit
        times.append(now)
        return ok


class IdMaker:
    """Ids in the documented shape ``MMDDHHMM-XXXX-XXXX-0000-xxxxxxxxxxxx``."""

    def __init__(self, rng: random.Random) -> None:
        self._counter = rng.getrandbits(48)
        self._minute = -1
        self._prefix = ""

    def prefix(self, unix_s: float) -> str:
        minute = int(unix_s // 60)
        if minute != self._minute:
            self._minute = minute
            self._prefix = time.strftime("%m%d%H%M", time.gmtime(unix_s))
        return self._prefix

    def make(self, prefix: str) -> str:
        n = self._counter = (self._counter + 1) & _MASK48
        mixed = n * _MIX64
        d4 = _DIGITS4
        tail = (n * _MIX48) & _MASK48
        return f"{prefix}-{d4[mixed % 10000]}-{d4[(mixed >> 20) % 10000]}-0000-{tail:012x}"


class Store:
    """Created tasks and their life cycle; only kept when ``record`` is on."""

    def __init__(self) -> None:
        self.created: list[CreatedTask] = []
        self._done_mono: list[float] = []
        self._index: dict[str, int] = {}
        # Per engine: indexes not yet done (creation order) and ids done but not collected.
        self._pending: dict[str, deque[int]] = {}
        self._ready: dict[str, dict[str, int]] = {}
        # Tasks with a postback/pingback: they reach tasks_ready only if delivery fails.
        self._held: set[int] = set()

    def add(self, task: CreatedTask, done_mono: float, *, held: bool = False) -> int:
        index = len(self.created)
        self.created.append(task)
        self._done_mono.append(done_mono)
        self._index[task.id] = index
        pending = self._pending.get(task.engine)
        if pending is None:
            pending = self._pending[task.engine] = deque()
            self._ready[task.engine] = {}
        pending.append(index)
        if held:
            self._held.add(index)
        return index

    def release(self, index: int, now_mono: float) -> None:
        """A push delivery failed: the task goes to tasks_ready."""
        task = self.created[index]
        self._advance(task.engine, now_mono)
        if index in self._held:  # a pingback task is listed already (or was collected)
            self._held.discard(index)
            self._ready[task.engine][task.id] = index

    def _advance(self, engine: str, now_mono: float) -> dict[str, int]:
        ready = self._ready.get(engine)
        if ready is None:
            return {}
        pending = self._pending[engine]
        done = self._done_mono
        created = self.created
        while pending and done[pending[0]] <= now_mono:
            index = pending.popleft()
            if index not in self._held:
                ready[created[index].id] = index
        return ready

    def ready(self, engine: str, now_mono: float, limit: int) -> list[CreatedTask]:
        ready = self._advance(engine, now_mono)
        out: list[CreatedTask] = []
        for index in ready.values():
            if len(out) >= limit:
                break
            out.append(self.created[index])
        return out

    def lookup(self, task_id: str) -> tuple[CreatedTask, float] | None:
        index = self._index.get(task_id)
        if index is None:
            return None
        return self.created[index], self._done_mono[index]

    def collect(self, task: CreatedTask, now_mono: float) -> None:
        """task_get fetched a done task: it leaves tasks_ready for good."""
        self._advance(task.engine, now_mono).pop(task.id, None)

    def complete_all(self) -> None:
        for engine, pending in self._pending.items():
            ready = self._ready[engine]
            while pending:
                index = pending.popleft()
                self._done_mono[index] = min(self._done_mono[index], time.monotonic())
                if index not in self._held:
                    ready[self.created[index].id] = index

    def posted_between(self, from_unix: float, to_unix: float) -> list[int]:
        """Indexes of tasks posted within [from, to] at whole-second precision, in order."""
        created = self.created
        lo = bisect.bisect_left(created, from_unix, key=lambda c: c.posted_at)
        hi = bisect.bisect_left(created, to_unix + 1.0, key=lambda c: c.posted_at)
        return list(range(lo, hi))

    def done_mono(self, index: int) -> float:
        return self._done_mono[index]


class Clock:
    """The service's wall time, derived from the monotonic clock so that creation order is
    also time order; ``offset_s`` is how far the service's clock is from this machine's."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = time.time() + offset_s

    def now(self) -> float:
        return self.wall(time.monotonic())

    def shift(self, delta_s: float) -> None:
        self._wall0 += delta_s

    def wall(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0)

    def mono(self, wall: float) -> float:
        return self._mono0 + (wall - self._wall0)


class Money:
    def __init__(self, config: EmulatorConfig) -> None:
        self.funds_usd: float | None = config.funds_usd
        self.spent_usd = 0.0

    @property
    def balance_usd(self) -> float | None:
        if self.funds_usd is None:
            return None
        return round(self.funds_usd - self.spent_usd, 6)

    def can_pay(self, cost: float) -> bool:
        balance = self.balance_usd
        return balance is None or cost <= balance + 1e-9

    def pay(self, cost: float) -> None:
        self.spent_usd += cost

    def refund(self, cost: float) -> None:
        self.spent_usd -= cost

    def set_funds(self, funds_usd: float | None) -> None:
        """Reconfiguring funds sets the balance to the new amount."""
        self.funds_usd = None if funds_usd is None else funds_usd + self.spent_usd


def policy_of(config: EmulatorConfig) -> Policy:
    return Policy(
        sampling_together=config.sampling_together,
        gemini_search_options=config.gemini_search_options,
    )


class Service:
    """The one emulated account that the gate and every handler share.

    ``config`` and ``policy`` are replaced as a whole by ``reconfigure``; handlers read them
    afresh on every call, so a change applies from the next call on.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.policy = policy_of(config)
        self.rng = random.Random(config.seed)
        self.ids = IdMaker(self.rng)
        self.store = Store()
        self.calls: list[CallRecord] = []
        self.clock = Clock(config.clock_offset_s)
        self.money = Money(config)
        self.tasks_created = 0

    def reconfigure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply ``changes`` to the settings; ``funds_usd`` sets the balance anew."""
        merged = {**msgspec.structs.asdict(self.config), **changes}
        new = msgspec.convert(merged, EmulatorConfig)
        if "funds_usd" in changes:
            self.money.set_funds(new.funds_usd)
        if "seed" in changes:
            self.rng.seed(new.seed)
        if "clock_offset_s" in changes:
            self.clock.shift(new.clock_offset_s - self.config.clock_offset_s)
        self.policy = policy_of(new)
        self.config = new
        return new

    def new_id(self, wall: float) -> str:
        """A fresh task id dated ``wall`` (the service's unix time)."""
        return self.ids.make(self.ids.prefix(wall))
