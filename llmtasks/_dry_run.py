"""``submit --dry-run``: read and check every line by each engine's rules, count the calls
and the worst-case cost, send nothing."""

from __future__ import annotations

import argparse
import sys

from llmtasks._cli_options import DOCUMENTED_PER_MINUTE, EXIT_INCOMPLETE, EXIT_OK
from llmtasks._words import count


def dry_run(args: argparse.Namespace) -> int:
    from llmtasks._input import BLANK, detect_format, read_lines
    from llmtasks._rules import TaskRules

    fmt = detect_format(args.input, args.format)
    total = {"valid": 0, "rejected": 0, "skipped": 0, "routed": 0}
    all_calls = 0
    for engine in args.engines:
        counts = {"valid": 0, "rejected": 0, "skipped": 0}
        shown = 0
        # A dry run sends nothing, not even the models call: the built-in table stands in.
        rules = TaskRules(engine)
        model = args.model_by_engine[engine]
        lines = read_lines(
            args.input, fmt=fmt, default_model=model, rules=rules, engines=args.engines
        )
        for il in lines:
            if il.skipped and il.reason != BLANK:
                counts["routed"] = counts.get("routed", 0) + 1
            elif il.skipped:
                counts["skipped"] += 1
            elif il.task is None:
                counts["rejected"] += 1
                if shown < 20:
                    where = f" field {il.field}:" if il.field else ""
                    who = f" {engine}:" if len(args.engines) > 1 else ""
                    print(f"{args.input}:{il.line}:{who}{where} {il.reason}", file=sys.stderr)
                    shown += 1
            else:
                counts["valid"] += 1
        calls = -(-counts["valid"] // args.batch_size)
        all_calls += calls
        for k, n in counts.items():
            total[k] = total.get(k, 0) + n
        summary = dry_run_summary(args, counts, calls)
        if len(args.engines) > 1:
            summary = summary.replace("dry run of", f"dry run ({engine}) of", 1)
        print(summary, file=sys.stderr)
    if len(args.engines) > 1:
        worst = total["valid"] * args.max_task_cost_usd
        print(
            f"llmtasks: dry run, all {len(args.engines)} engines: {total['valid']:,} tasks "
            f"valid, {total['rejected']:,} rejected; {count(all_calls, 'call')} under the one "
            f"account limit; worst-case cost ${worst:.4f}; nothing sent",
            file=sys.stderr,
        )
    print(
        f"llmtasks: models checked against the built-in {', '.join(args.engines)} "
        f"table{'s' if len(args.engines) > 1 else ''} (offline: a dry run makes no call)",
        file=sys.stderr,
    )
    return EXIT_OK if total["rejected"] == 0 else EXIT_INCOMPLETE


def dry_run_summary(args: argparse.Namespace, counts: dict[str, int], calls: int) -> str:
    lines = sum(counts.values())
    worst = counts["valid"] * args.max_task_cost_usd
    rate = args.rate or round(DOCUMENTED_PER_MINUTE * args.period / 60)
    whose = "" if args.rate else ", the documented default: a run takes the account's own"
    minutes = calls / rate * args.period / 60
    return (
        f"llmtasks: dry run of {args.input}: {count(lines, 'line')}, {counts['valid']:,} valid, "
        f"{counts['rejected']:,} rejected, {counts['skipped']:,} blank"
        + (f", {counts['routed']:,} for other engines" if counts.get("routed") else "")
        + "; "
        f"{count(calls, 'call')} (at least {minutes:.1f} min at {rate:,} per "
        f"{args.period:g} s{whose}); worst-case cost ${worst:.4f} at ${args.max_task_cost_usd} "
        "per task; nothing sent"
    )
