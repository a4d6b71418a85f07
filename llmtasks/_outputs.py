"""Receipts and rejects files, rebuilt from the ledger (so they are complete after a resume)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from llmtasks._ledger import Ledger
from llmtasks._receipt import Receipt

RECEIPT_FIELDS: Final = (
    "line",
    "state",
    "tag",
    "task_id",
    "status_code",
    "status_message",
    "cost",
    "field",
    "reason",
)

_encode = msgspec.json.Encoder().encode


def write_jsonl(
    path: str | os.PathLike[str],
    ledger: Ledger,
    *,
    states: set[str] | None = None,
    empty: bool = True,
) -> int:
    """One JSON object per line, in input order. Written to a temporary file, then renamed,
    so a reader never sees half a file. Returns the number of lines written.

    ``empty=False``: with nothing to write there is no file, and a file left at ``path`` by
    an earlier run is removed (the ledger, which these files are rebuilt from, no longer
    backs it)."""
    n = 0
    with _atomic(path) as out:
        buf: list[bytes] = []
        for receipt in ledger.receipts(states=states):
            buf.append(_encode(receipt))
            n += 1
            if len(buf) >= 4096:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
    if n == 0 and not empty and os.fspath(path) != "-":
        Path(path).unlink(missing_ok=True)
    return n


def write_csv(
    path: str | os.PathLike[str], ledger: Ledger, *, states: set[str] | None = None
) -> int:
    n = 0
    with _atomic(path) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(out)
        writer.writerow(RECEIPT_FIELDS)
        for r in ledger.receipts(states=states):
            writer.writerow(["" if v is None else v for v in _row(r)])
            n += 1
        out.flush()
        out.detach()
    return n


def _row(r: Receipt) -> tuple[object, ...]:
    return tuple(getattr(r, name) for name in RECEIPT_FIELDS)


@contextlib.contextmanager
def _atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    if os.fspath(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
