"""CSV input: a header of field names, then one task per record (a record may span lines
inside quotes). Cells are typed by their column (integers, numbers, booleans, a JSON
message_chain); an empty cell leaves the field unset. See docs/input-formats.md.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Generator, Iterator
from typing import Any, Final

import msgspec

from llmtasks._decode import BLANK, INT_FIELDS, Completer, InputLine, refused, too_long
from llmtasks._errors import InputError, LlmtasksError
from llmtasks._explain import explain_json
from llmtasks._lines import DIGEST_BYTES, Physical
from llmtasks._task import StrictTask, Task, TaskRuleError
from llmtasks._words import count

FIELDS: Final[tuple[str, ...]] = StrictTask.__struct_fields__
_FLOAT_FIELDS: Final = frozenset({"temperature", "top_p"})
_BOOL_FIELDS: Final = frozenset({"web_search", "force_web_search", "use_reasoning"})
_JSON_FIELDS: Final = frozenset({"message_chain"})
_INT: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})


class _RecordTooLong(LlmtasksError):
    """Control flow inside the CSV reader (the record becomes a reject); an ``LlmtasksError``
    like every exception of the package."""


class _CsvSource:
    """Feeds csv.reader one physical line at a time and keeps account of the current record:
    where it starts, its digest, whether it is valid UTF-8, and its size (capped)."""

    def __init__(self, physical: Iterator[Physical], max_line_bytes: int) -> None:
        self._physical = physical
        self._max = max_line_bytes
        self.line_no = 0
        self.start = 1
        self.size = 0
        self.bad_utf8 = ""
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self._lines_in_record = 0
        self._long_digest = b""

    def begin(self) -> None:
        self.start = self.line_no + 1
        self.size = 0
        self.bad_utf8 = ""
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self._lines_in_record = 0
        self._long_digest = b""

    def digest(self) -> bytes:
        return self._long_digest or self._hash.digest()

    def __iter__(self) -> _CsvSource:
        return self

    def __next__(self) -> str:
        raw, long = next(self._physical)
        self.line_no += 1
        if self._lines_in_record:
            self._hash.update(b"\n")
            self.size += 1
        self._lines_in_record += 1
        if raw is None:
            assert long is not None
            if self._lines_in_record == 1:
                # A one-line record: the same digest as that line would have in JSONL.
                self._long_digest = long[0]
            self._hash.update(long[0])
            self.size += long[1]
            raise _RecordTooLong
        self._hash.update(raw)
        self.size += len(raw)
        if self.size > self._max:
            raise _RecordTooLong
        try:
            return raw.decode() + "\n"
        except UnicodeDecodeError as err:
            if not self.bad_utf8:
                self.bad_utf8 = f"is not valid UTF-8 (line {self.line_no}, byte {err.start})"
            return raw.decode("utf-8", "surrogateescape") + "\n"


def read_csv(
    physical: Iterator[Physical], name: str, complete: Completer, max_line_bytes: int
) -> Iterator[InputLine]:
    """Reads the header now (an unusable one raises ``InputError``), then yields the records."""
    src = _CsvSource(physical, max_line_bytes)
    reader = csv.reader(src, strict=True)
    header = _read_header(reader, src, name)
    return _records(src, reader, header, complete, max_line_bytes)


def _records(
    src: _CsvSource,
    reader: Iterator[list[str]],
    header: tuple[str, ...] | None,
    complete: Completer,
    max_line_bytes: int,
) -> Generator[InputLine, None, None]:
    if header is None:
        return
    width = len(header)
    while True:
        src.begin()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RecordTooLong:
            yield too_long(src.start, src.digest(), src.size, max_line_bytes)
            continue
        except csv.Error as err:
            yield InputLine(
                line=src.start, digest=src.digest(), task=None, reason=f"is not valid CSV: {err}"
            )
            continue
        line, digest = src.start, src.digest()
        if not any(cell.strip() for cell in row):
            yield InputLine(line=line, digest=digest, task=None, reason=BLANK, skipped=True)
            continue
        if len(row) != width:
            reason = f"has {count(len(row), 'cell')} but the header has {count(width, 'column')}"
            yield InputLine(line=line, digest=digest, task=None, reason=reason)
            continue
        if src.bad_utf8:
            field = next((h for h, c in zip(header, row, strict=True) if _has_surrogate(c)), "")
            yield InputLine(line=line, digest=digest, task=None, field=field, reason=src.bad_utf8)
            continue
        yield _csv_row(line, digest, header, row, complete)


def _has_surrogate(cell: str) -> bool:
    try:
        cell.encode()
    except UnicodeEncodeError:
        return True
    return False


def _read_header(reader: Iterator[list[str]], src: _CsvSource, name: str) -> tuple[str, ...] | None:
    """The header's field names, or None for an empty input. Raises InputError."""
    expect = "the first line must be a header of field names, e.g. user_prompt,model_name"
    try:
        row = next(reader)
    except StopIteration:
        return None  # an empty file: no records, nothing wrong
    except _RecordTooLong:
        raise InputError(f"{name}: the header line is too long; {expect}") from None
    except csv.Error as err:
        raise InputError(f"{name}: the header line is not valid CSV ({err}); {expect}") from None
    if src.bad_utf8:
        raise InputError(f"{name}: the header {src.bad_utf8}")
    names = tuple(cell.strip() for cell in row)
    if not any(names):
        raise InputError(f"{name}: the header line is empty; {expect}")
    seen: set[str] = set()
    for i, col in enumerate(names, 1):
        if not col:
            raise InputError(f"{name}: column {i} of the header has no name")
        if col not in FIELDS and col != "engine":
            hint = " (is the file comma-separated?)" if any(c in col for c in ";\t|") else ""
            raise InputError(
                f"{name}: unknown column {col!r} in the header{hint}; known fields: "
                f"{', '.join(FIELDS)}"
            )
        if col in seen:
            raise InputError(f"{name}: column {col!r} appears twice in the header")
        seen.add(col)
    if "user_prompt" not in seen:
        raise InputError(f"{name}: the header has no user_prompt column; {expect}")
    return names


def _csv_row(
    line: int,
    digest: bytes,
    header: tuple[str, ...],
    row: list[str],
    complete: Completer,
) -> InputLine:
    if "engine" in header:
        # Routing, never sent: a record for another engine is not judged by this one.
        where = row[header.index("engine")].strip()
        routed = complete.route(where, line, digest) if where else None
        if routed is not None:
            return routed
    values: dict[str, Any] = {}
    for col, cell in zip(header, row, strict=True):
        if cell == "" or col == "engine":
            continue  # an empty cell leaves the field unset
        try:
            values[col] = _cell_value(col, cell)
        except ValueError as err:
            return InputLine(line=line, digest=digest, task=None, field=col, reason=str(err))
    try:
        task: Task = msgspec.convert(values, StrictTask)
        task = complete(task, line)
    except (msgspec.ValidationError, TaskRuleError) as err:
        return refused(err, line, digest, complete)
    return InputLine(line=line, digest=digest, task=task)


def _cell_value(col: str, cell: str) -> object:
    """A CSV cell as the field's type. Raises ValueError with the reason."""
    if col in INT_FIELDS:
        # Not int(): it also takes "1_000" and non-ASCII digits.
        if _INT.fullmatch(cell.strip()):
            return int(cell)
        # "512.0", as spreadsheets and pandas write whole numbers, is 512.
        if _FLOAT.fullmatch(cell.strip()) and float(cell).is_integer():
            return int(float(cell))
        raise ValueError(f"must be an integer, got {cell!r}")
    if col in _FLOAT_FIELDS:
        # Not float() alone: it also takes "nan", "inf" and "1_0".
        if not _FLOAT.fullmatch(cell.strip()):
            raise ValueError(f"must be a number, got {cell!r}")
        return float(cell)
    if col in _BOOL_FIELDS:
        word = cell.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"must be true, false, 1 or 0, got {cell!r}")
    if col in _JSON_FIELDS:
        try:
            return msgspec.json.decode(cell)
        except msgspec.DecodeError as err:
            why = explain_json(cell.encode(), str(err), where="cell")
            raise ValueError(f"must be a JSON list of messages: {why}") from None
    return cell
