"""What one ``submit`` run and a fan-out (``_fanout``) share: the Submitter built from the
options, the fleet's task_post budget, Ctrl-C, the input's line count and the summary."""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from llmtasks._words import count

if TYPE_CHECKING:
    from llmtasks._shared import RedisThrottle
    from llmtasks._submit import Submitter


#: The GIL's switch interval during a run (Python's default: 5 ms).
SWITCH_INTERVAL_S: Final = 0.001
#: Allocations of tracked objects between two young collections during a run (Python's
#: default: 700).
GC_YOUNG_THRESHOLD: Final = 10_000


@contextlib.contextmanager
def tuned_for_a_run() -> Iterator[None]:
    """The interpreter set for a long run, and set back afterwards (``main(argv)`` may run
    inside someone else's process).

    The reader and the ledger writer are threads: when the event loop waits for the GIL
    behind one, a freed slot waits too, up to a switch interval each time. At 1 ms slots
    stay busier at short latencies (docs/benchmarks.md, latency) for a little CPU.

    The cyclic GC: every call makes about 170 tracked objects (aiohttp's and asyncio's), so
    at Python's threshold a 300,000-task run made some 700 young and 5 full collections,
    0.3-0.45 s of CPU, each full one walking every object the imports made. The objects
    alive at the start are frozen out of the walks, and a young collection comes every
    10,000 allocations: 70 young, no full one, 0.02-0.03 s (measured with gc.callbacks).
    Cyclic garbage waits a little longer for its collection; none of it is ours to keep."""
    switch = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    # Frozen objects are never collected: freeze only when nobody else did, to unfreeze all.
    freeze = gc.get_freeze_count() == 0
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if freeze:
        gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def count_lines(source: str) -> int | None:
    if source == "-":
        return None
    n, last = 0, b"\n"
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")  # a last line without its newline is a line too


def task_post_throttle(
    args: argparse.Namespace, login: str, rate: int
) -> contextlib.AbstractAsyncContextManager[RedisThrottle | None]:
    """The fleet's task_post budget on ``--limiter`` at ``rate`` per ``--period`` (None
    without it: the Submitter keeps its own bucket); one engine's run and a fan-out alike."""
    from llmtasks._shared import shared_throttle

    return shared_throttle(
        args.limiter,
        login=login,
        rate=rate,
        period_s=args.period,
        margin_s=args.margin,
        max_in_flight=args.concurrency,
        function="task_post",
    )


def silent(message: str) -> None:
    pass


def submitter_from_args(
    args: argparse.Namespace,
    *,
    base_url: str,
    login: str,
    password: str,
    engine: str,
    ledger: Any,
    default_model: str | None,
    shard: tuple[int, int] | None = None,
) -> Submitter:
    """One engine's Submitter with the run's options (one per engine in a fan-out)."""
    from llmtasks._submit import Submitter

    return Submitter(
        login=login,
        password=password,
        engine=engine,
        base_url=base_url,
        rate=args.rate,
        period_s=args.period,
        margin_s=args.margin,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        ledger=ledger,
        input_name=args.input,
        default_model=default_model,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        max_cost_usd=args.max_cost_usd,
        max_task_cost_usd=args.max_task_cost_usd,
        resend_unknown=args.resend_unknown,
        allow_insecure=args.allow_insecure,
        postback_url=_push_url(args.postback_url, "--postback-url"),
        pingback_url=_push_url(args.pingback_url, "--pingback-url"),
        shard=shard,
    )


def _push_url(url: str | None, option: str) -> str | None:
    """With LLMTASKS_RECEIVE_SECRET set, the URL the service calls carries it for ``receive``."""
    from llmtasks._receiver import secret_from_env, with_secret

    secret = secret_from_env()
    if url is None or secret is None:
        return url
    return with_secret(url, secret, option=option)


def on_signal(submitter: Any) -> None:
    if submitter.interrupted:
        # A second Ctrl-C: the user means it. In-flight calls are lost to 'unknown' on resume.
        raise KeyboardInterrupt
    print(
        "llmtasks: stopping: finishing the calls in flight (Ctrl-C again to abort)", file=sys.stderr
    )
    submitter.stop()


def submit_summary(
    args: argparse.Namespace,
    stats: Any,
    counts: dict[str, int],
    receipts_path: str,
    rejects_path: str,
    n_rejects: int,
    ledger_path: str,
    *,
    rate_source: str = "",
    models: Any = None,
    warned: dict[str, int] | None = None,
) -> str:
    """What ``submit`` prints at the end: counts, calls against the limit (and where that
    limit came from), where things are, and what was checked how."""
    from llmtasks._pace import summary_pace

    s = stats
    total = sum(counts.values())
    parts = [
        f"{counts.get(k, 0):,} {k}" for k in ("created", "rejected", "failed", "unknown", "pending")
    ]
    if counts.get("skipped"):
        parts.append(f"{counts['skipped']:,} blank")
    earlier = f" ({s.already_done:,} done by earlier runs)" if s.already_done else ""
    pace = summary_pace(
        s.window, calls=s.calls, retries=s.retries, elapsed_s=s.elapsed_s, now=s.ended
    )
    where = (
        f"llmtasks: receipts in {receipts_path}"
        if receipts_path
        else "llmtasks: no receipts: the input has no lines"
    )
    if n_rejects:
        where += f", {count(n_rejects, 'reject')} in {rejects_path}"
    out = [
        f"llmtasks: {count(s.lines_read, 'line')} read{earlier}; ledger holds "
        f"{count(total, 'line')}: {', '.join(parts)}",
        f"llmtasks: {pace}; cost reported by the service ${s.cost_usd:.4f}"
        + (f"; the limit is {rate_source}" if rate_source else ""),
        where,
    ]
    if models is not None and models.source == "built-in":
        out.append(
            f"llmtasks: models checked against the built-in {models.engine} table, not the "
            f"service's list ({models.note})"
        )
    if warned:
        kinds = ", ".join(f"{k} ({count(n, 'line')})" for k, n in warned.items())
        out.append(f"llmtasks: sent for the service to judge: {kinds}")
    if counts.get("unknown"):
        out.append(
            f"llmtasks: {count(counts['unknown'], 'line')} unknown (sent, no reply): run "
            f"'llmtasks reconcile --ledger {ledger_path}' before sending "
            f"{'it' if counts['unknown'] == 1 else 'them'} again"
        )
    return "\n".join(out)
