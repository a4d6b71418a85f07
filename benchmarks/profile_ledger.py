"""Cost of the ledger alone per line, and of variants of it (the figures in docs/benchmarks.md).

Replays what ``submit`` does to the ledger (``add_lines`` in chunks of 500, then per batch of
100 ``mark_sending`` and ``record`` with task ids) on a fresh file per variant. Not part of
the smoke test: it patches ``llmtasks._ledger`` internals to try the variants.

    python benchmarks/profile_ledger.py [LINES]   (SEQ=1: sequential task ids)
"""

import os
import resource
import secrets
import sys
import tempfile
import time

import llmtasks._ledger as L
from llmtasks._ledger import Ledger, NewLine
from llmtasks._receipt import Receipt

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ORIG = L._SCHEMA
SEQ = os.environ.get("SEQ") == "1"


def run(name, drop_idx=(), no_sending_update=False, sync=None):
    s = ORIG
    for i in drop_idx:
        s = "\n".join(x for x in s.splitlines() if f"INDEX IF NOT EXISTS {i} " not in x)
    L._SCHEMA = s
    d = tempfile.mkdtemp()
    led = Ledger.open(os.path.join(d, "l.sqlite"), input_name="x")
    if sync:
        led._db.execute(f"PRAGMA synchronous={sync}")
    led.begin_session()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for start in range(1, N + 1, 500):
        rows = [
            NewLine(i, b"12345678", "pending", f"llmtasks:abcd:{i}", b"87654321")
            for i in range(start, min(N + 1, start + 500))
        ]
        led.add_lines(rows)
        for b in range(0, len(rows), 100):
            lines = [r.line for r in rows[b : b + 100]]
            if no_sending_update:
                with L._tx(led._db):
                    led._db.execute(
                        "INSERT INTO batches (session_id, state, n_tasks, sent_at) "
                        "VALUES (?, 'sending', ?, ?)",
                        (1, len(lines), time.time()),
                    )
                bid = 1
            else:
                bid = led.mark_sending(lines)
            outs = [
                Receipt(
                    line=ln,
                    state="created",
                    task_id=(
                        f"07151610-0696-0613-0000-{ln:012x}"
                        if SEQ
                        else f"07151610-0696-0613-0000-{secrets.token_hex(6)}"
                    ),
                    status_code=20100,
                    status_message="Task Created.",
                    cost=0.0102,
                )
                for ln in lines
            ]
            led.record(
                bid, outs, batch_state="done", attempts=1, http_status=200, status_code=20000
            )
    t = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    u = r1.ru_utime - r0.ru_utime
    s_ = r1.ru_stime - r0.ru_stime
    size = os.path.getsize(os.path.join(d, "l.sqlite")) / N
    print(
        f"{name:45s} {t / N * 1e6:6.1f} us/line wall  user {u / N * 1e6:5.1f}"
        f"  sys {s_ / N * 1e6:5.1f}  db {size:.0f} B/line"
    )
    led.close()


run("as is")
run("no lines_state index", ["lines_state"])
run("no lines_state, lines_batch indexes", ["lines_state", "lines_batch"])
run("no indexes on lines", ["lines_state", "lines_batch", "lines_task_id"])
run("as is, sending = batch row only", no_sending_update=True)
run(
    "no indexes + sending = batch row only",
    ["lines_state", "lines_batch", "lines_task_id"],
    no_sending_update=True,
)
run("as is, synchronous=OFF", sync="OFF")
