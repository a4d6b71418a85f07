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

from llmtasks._errors import ConfigError
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

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_encode_lines = _encoder.encode_lines


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
    with atomic_file(path) as out:
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
    with atomic_file(path) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(out)
        # A fan-out ledger has one receipt per (line, engine): the engine is the 2nd column.
        fields: tuple[str, ...] = RECEIPT_FIELDS
        if ledger.fanout:
            fields = (*RECEIPT_FIELDS[:1], "engine", *RECEIPT_FIELDS[1:])
        writer.writerow(fields)
        for r in ledger.receipts(states=states):
            writer.writerow(["" if v is None else v for v in _row(r, fields)])
            n += 1
        out.flush()
        out.detach()
    return n


def _row(r: Receipt, fields: tuple[str, ...] = RECEIPT_FIELDS) -> tuple[object, ...]:
    return tuple(getattr(r, name) for name in fields)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file written in full or not at all (a temporary file renamed over ``path`` at the
    end); ``-`` is stdout. Exports, reports and the files rebuilt here use it."""
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


class ReceiptStream:
    """Receipts (and rejects) files written while a run goes, in input order.

    Outcomes arrive in completion order; each waits here until the lines before it are
    written (at most ``max_held`` of them, so memory stays bounded). A line that does not
    come in this run (done by an earlier run, or not sent when the run stopped) ends the
    streaming: ``finish()`` then writes the rest from the ledger, which holds every line,
    and renames the files into place so a reader never sees half a file.
    """

    def __init__(
        self,
        receipts_path: str | os.PathLike[str],
        rejects_path: str | os.PathLike[str],
        *,
        first_line: int = 1,
        step: int = 1,
        max_held: int = 20_000,
    ) -> None:
        self._receipts = _Partial(receipts_path)
        self._rejects = _Partial(rejects_path)
        self._next = first_line
        self._step = step
        self._max_held = max_held
        self._held: dict[int, Receipt] = {}
        self._out: list[bytes] = []
        self._streaming = True
        self.receipts = 0
        self.rejects = 0

    def add(self, receipts: list[Receipt]) -> None:
        """Receipts of one call (or of rejected lines), in increasing line order."""
        if not self._streaming or not receipts:
            return
        if receipts[0].state == "pending":
            # Not sent (the run stopped; a call's receipts share one state): the ledger's
            # record of these lines is their receipt.
            self._stop_streaming()
            return
        held = self._held
        nxt, step = self._next, self._step
        first, last = receipts[0].line, receipts[-1].line
        if first == nxt and last - first == (len(receipts) - 1) * step:
            # The common case: the call next in line, its lines consecutive.
            self._write(receipts)
            nxt = last + step
            if not held:
                self._next = nxt
                return
        else:
            for r in receipts:
                held[r.line] = r
            if nxt not in held:
                if len(held) > self._max_held:
                    self._stop_streaming()
                return
        ready: list[Receipt] = []
        while (got := held.pop(nxt, None)) is not None:
            ready.append(got)
            nxt += step
        self._next = nxt
        self._write(ready)

    def _write(self, receipts: list[Receipt]) -> None:
        if not receipts:
            return
        self._out.append(_encode_lines(receipts))
        self.receipts += len(receipts)
        rejected = [r for r in receipts if r.state == "rejected"]
        if rejected:
            self._rejects.write_raw(_encode_lines(rejected))
            self.rejects += len(rejected)
        if len(self._out) >= 64:
            self._flush()

    def _stop_streaming(self) -> None:
        self._streaming = False
        self._held.clear()

    def _flush(self) -> None:
        if self._out:
            self._receipts.write_raw(b"".join(self._out))
            self._out = []

    def finish(self, ledger: Ledger) -> None:
        """Write what was not streamed from the (flushed) ledger; put the files in place."""
        self._held.clear()
        self._flush()
        out: list[bytes] = []
        rejected: list[bytes] = []
        for r in ledger.receipts(first_line=self._next):
            data = _encode(r)
            out.append(data)
            if r.state == "rejected":
                rejected.append(data)
            if len(out) >= 4096:
                self._receipts.write(out)
                self.receipts += len(out)
                out = []
            if len(rejected) >= 4096:
                self._rejects.write(rejected)
                self.rejects += len(rejected)
                rejected = []
        self._receipts.write(out)
        self._rejects.write(rejected)
        self.receipts += len(out)
        self.rejects += len(rejected)
        # No empty files (as write_jsonl with empty=False): nothing to say, no file.
        self._receipts.commit(keep_empty=False)
        self._rejects.commit(keep_empty=False)

    def abort(self) -> None:
        self._receipts.abort()
        self._rejects.abort()


class _Partial:
    """A file written under a temporary name beside its target, renamed at ``commit()``
    (``-`` writes to stdout as it goes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._stdout = os.fspath(path) == "-"
        self._size = 0
        if self._stdout:
            self._out: BinaryIO = sys.stdout.buffer
            self._tmp = ""
            return
        self._target = Path(path)
        # One name per target: a run killed before its rename leaves this file, and the
        # next run of the same command writes over it instead of leaving another.
        self._tmp = str(self._target.with_name(f".{self._target.name}.partial"))
        try:
            self._out = open(self._tmp, "wb", buffering=1 << 16)  # noqa: SIM115 (see commit)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, lines: list[bytes]) -> None:
        if lines:
            self.write_raw(b"\n".join(lines) + b"\n")

    def write_raw(self, data: bytes) -> None:
        self._size += len(data)
        self._out.write(data)

    def commit(self, *, keep_empty: bool = True) -> None:
        """Put the file in place; with ``keep_empty=False`` an empty one is not kept, and a
        file an earlier run left at the target goes too (the ledger no longer backs it)."""
        self._out.flush()
        if self._stdout:
            return
        self._out.close()
        if self._size == 0 and not keep_empty:
            os.unlink(self._tmp)
            self._target.unlink(missing_ok=True)
            return
        os.replace(self._tmp, self._target)

    def abort(self) -> None:
        if not self._stdout:
            self._out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
