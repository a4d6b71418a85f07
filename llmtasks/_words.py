"""Counts with their nouns, said right: "1 line", "2 lines", "1,000 lines"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with ``noun`` agreeing with it; ``plural`` when adding an "s" is wrong."""
    word = noun if n == 1 else plural if plural is not None else noun + "s"
    return f"{n:,} {word}"


def seconds(s: float) -> str:
    """A duration for people: "0.4 s", "12 s", "3m05s", "1h02m"."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def verb(n: int, singular: str, plural: str) -> str:
    """The verb form that agrees with a count of ``n``: ``verb(1, "is", "are")``."""
    return singular if n == 1 else plural
