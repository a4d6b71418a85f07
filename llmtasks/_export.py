"""``export --results`` and ``export --citations``: the collected results as flat tables.

One row per collected task (``RESULT_COLUMNS``), or one per citation (``CITATION_COLUMNS``),
in input-line order, as CSV, JSONL or Parquet (the ``parquet`` extra: pyarrow). Everything
streams: the ledger is walked in line order, the input file (for the prompt columns) is read
alongside it, and Parquet is written one row group at a time, so memory stays flat however
many results there are.

List columns (``fan_out_queries``, ``cited_domains``) are lists in JSONL and Parquet and
JSON arrays in CSV. Times are the service's ``datetime`` text in CSV and JSONL, and UTC
timestamps in Parquet.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal, NamedTuple

import msgspec
import orjson

from llmtasks._errors import ConfigError, InputError
from llmtasks._flatten import EMPTY, Flat, flatten
from llmtasks._input import InputLine, detect_format, read_lines
from llmtasks._ledger import CollectedRow, Ledger
from llmtasks._llm_result import decode_result
from llmtasks._outputs import atomic_file
from llmtasks._rules import TaskRules

Kind = Literal["int", "float", "str", "text", "bool", "strlist", "datetime_text", "unix"]
TableFormat = Literal["csv", "jsonl", "parquet"]
TABLE_FORMATS: Final[tuple[TableFormat, ...]] = ("csv", "jsonl", "parquet")
PARQUET_HINT: Final = "pip install 'llmtasks[parquet]'"


class Column(NamedTuple):
    name: str
    kind: Kind


RESULT_COLUMNS: Final[tuple[Column, ...]] = (
    Column("line", "int"),
    Column("engine", "str"),
    Column("tag", "text"),
    Column("task_id", "text"),
    Column("status_code", "int"),
    Column("status_message", "str"),
    Column("prompt", "text"),
    Column("system_message", "text"),
    Column("web_search_requested", "bool"),
    Column("model_name", "str"),
    Column("answer_text", "text"),
    Column("reasoning_text", "text"),
    Column("input_tokens", "int"),
    Column("output_tokens", "int"),
    Column("reasoning_tokens", "int"),
    Column("web_search", "bool"),
    Column("money_spent", "float"),
    Column("cost", "float"),
    Column("datetime", "datetime_text"),
    Column("submitted_at", "unix"),
    Column("collected_at", "unix"),
    Column("fan_out_queries", "strlist"),
    Column("citations_count", "int"),
    Column("cited_domains", "strlist"),
)

CITATION_COLUMNS: Final[tuple[Column, ...]] = (
    Column("line", "int"),
    Column("engine", "str"),
    Column("task_id", "text"),
    Column("model_name", "str"),
    Column("position", "int"),
    Column("title", "text"),
    Column("url", "text"),
    Column("direct_url", "text"),
    Column("domain", "str"),
    Column("start_index", "int"),
    Column("end_index", "int"),
    Column("cited_text", "text"),
)

Warn = Callable[[str], None]
# Parquet row groups: big enough to compress well, small enough to keep memory flat.
_RESULTS_PER_GROUP: Final = 2000
_CITATIONS_PER_GROUP: Final = 20000
_MAX_WARNINGS: Final = 20


def _ignore(message: str) -> None:
    pass


# -- reading --------------------------------------------------------------------------------


class Flattened(NamedTuple):
    row: CollectedRow
    flat: Flat


def flattened(ledger: Ledger, warn: Warn = _ignore) -> Iterator[Flattened]:
    """Every collected task with its result flattened, in line order. A result that cannot
    be read at all keeps its row (empty result columns) and is reported through ``warn``."""
    bad = 0
    for row in ledger.results_by_line():
        flat = EMPTY
        if row.result is not None:
            try:
                flat = flatten(decode_result(row.result))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                bad += 1
                if bad <= _MAX_WARNINGS:
                    warn(f"line {row.line}, task {row.task_id}: result not readable: {exc}")
        yield Flattened(row, flat)
    if bad > _MAX_WARNINGS:
        warn(f"{bad} results in all were not readable; their result columns are empty")


class InputColumns:
    """The input line's own fields, read from the input file alongside the ledger.

    Lines are asked for in increasing order and the file is read once, forward. Each line
    must be the one the run read (same digest as in the ledger): a changed input would put
    another prompt beside an answer. A line that no longer validates on its own (it took
    its model from ``--model`` and the rules of the stand-in model used here refuse it)
    comes back as None, and is counted in ``unreadable``.
    """

    def __init__(
        self,
        path: str,
        *,
        fmt: str | None,
        default_model: str | Mapping[str, str | None] | None,
        engine: str | Sequence[str],
    ) -> None:
        self.path = path
        engines = (engine,) if isinstance(engine, str) else tuple(engine)
        models = (
            default_model
            if isinstance(default_model, Mapping)
            else dict.fromkeys(engines, default_model)
        )
        self._first = engines[0]
        # The engine the run sent to, so its rules judge the line as they did then; their
        # warnings were the run's to give, not the export's. A fan-out: each engine's rules
        # on a reading of its own.
        kind = detect_format(path, fmt)
        self._lines = {
            e: read_lines(
                path,
                fmt=kind,
                default_model=models.get(e),
                rules=TaskRules(e, warn=lambda _message: None),
            )
            for e in engines
        }
        self._current: dict[str, InputLine | None] = dict.fromkeys(engines)
        self._done = dict.fromkeys(engines, False)
        self.unreadable = 0

    def get(self, line: int, digest: bytes, engine: str | None = None) -> InputLine:
        e = engine if engine in self._lines else self._first
        cur = self._current[e]
        lines = self._lines[e]
        while not self._done[e] and (cur is None or cur.line < line):
            cur = self._current[e] = next(lines, None)
            self._done[e] = cur is None
        if cur is None or cur.line != line:
            raise InputError(
                f"{self.path}: has no line {line} as recorded in the ledger: give the input "
                "the run read with --input, or --no-input"
            )
        if cur.digest != digest:
            raise InputError(
                f"{self.path}:{line}: is not the line the run sent (changed since): give the "
                "input the run read with --input, or --no-input"
            )
        if cur.task is None:
            self.unreadable += 1
        return cur

    def close(self) -> None:
        for lines in self._lines.values():
            close = getattr(lines, "close", None)
            if close is not None:
                close()


def open_input(
    ledger: Ledger,
    *,
    input_path: str | None,
    no_input: bool,
    input_format: str | None,
    warn: Warn,
) -> InputColumns | None:
    """The input to read prompts from: ``input_path``, else the one the run recorded."""
    if no_input:
        return None
    if input_path is None:
        recorded = ledger.input_name
        if not recorded or recorded == "-":
            warn("the run read its input from stdin: prompt columns are empty (give --input)")
            return None
        candidates = [recorded]
        if not os.path.isabs(recorded):
            # Relative to where submit ran, which is often where the ledger is.
            here = os.path.dirname(ledger.path)
            candidates.append(os.path.join(here, recorded))
            candidates.append(os.path.join(here, os.path.basename(recorded)))
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            warn(f"input {recorded} not found: prompt columns are empty (give --input PATH)")
            return None
        input_path = found
    elif not os.path.isfile(input_path):
        raise InputError(f"{input_path}: no such file")
    return InputColumns(
        input_path,
        fmt=input_format,
        default_model={e: _stand_in_model(ledger, e) for e in ledger.engines},
        engine=ledger.engines,
    )


def _stand_in_model(ledger: Ledger, engine: str) -> str:
    """A model for lines that took theirs from ``--model`` (the ledger does not keep it): the
    dated model of the engine's first result, so the same model rules apply as when they
    were sent."""
    first_json = ledger.first_result(engine)
    if first_json is not None:
        try:
            first = decode_result(first_json)
        except (msgspec.DecodeError, msgspec.ValidationError):
            first = None
        if first is not None and first.model_name:
            return first.model_name
    return "gpt-4.1-mini"


def result_rows(
    ledger: Ledger, inputs: InputColumns | None, warn: Warn = _ignore
) -> Iterator[tuple[Any, ...]]:
    """``RESULT_COLUMNS`` values of every collected task."""
    for row, f in flattened(ledger, warn):
        prompt = system = requested = None
        if inputs is not None:
            task = inputs.get(row.line, row.digest, row.engine).task
            if task is not None:
                prompt, system, requested = task.user_prompt, task.system_message, task.web_search
        yield (
            row.line,
            row.engine,
            row.tag,
            row.task_id,
            row.status_code,
            row.status_message,
            prompt,
            system,
            requested,
            f.model_name,
            f.answer_text,
            f.reasoning_text,
            f.input_tokens,
            f.output_tokens,
            f.reasoning_tokens,
            f.web_search,
            f.money_spent,
            row.cost,
            f.datetime,
            row.sent_at,
            row.collected_at,
            f.fan_out_queries,
            len(f.citations),
            f.cited_domains,
        )


def citation_rows(ledger: Ledger, warn: Warn = _ignore) -> Iterator[tuple[Any, ...]]:
    """``CITATION_COLUMNS`` values of every citation of every collected answer."""
    for row, f in flattened(ledger, warn):
        for c in f.citations:
            yield (
                row.line,
                row.engine,
                row.task_id,
                f.model_name,
                c.position,
                c.title,
                c.url,
                c.direct_url,
                c.domain,
                c.start_index,
                c.end_index,
                c.cited_text,
            )


# -- writing --------------------------------------------------------------------------------


def export_table(
    what: Literal["results", "citations"],
    ledger: Ledger,
    out: str,
    *,
    fmt: TableFormat,
    input_path: str | None = None,
    no_input: bool = False,
    input_format: str | None = None,
    warn: Warn = _ignore,
) -> int:
    """Write the results or citations table of ``ledger`` to ``out`` ("-": stdout, not for
    Parquet). Written to a temporary file and renamed. Returns the number of rows."""
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: use {', '.join(TABLE_FORMATS)}")
    if fmt == "parquet":
        if out == "-":
            raise ConfigError("--format parquet needs --out FILE (a Parquet file is not a stream)")
        _pyarrow()  # a missing extra is an error before anything is read
    inputs: InputColumns | None = None
    if what == "results":
        columns = RESULT_COLUMNS
        inputs = open_input(
            ledger, input_path=input_path, no_input=no_input, input_format=input_format, warn=warn
        )
        rows = result_rows(ledger, inputs, warn)
        per_group = _RESULTS_PER_GROUP
    else:
        columns = CITATION_COLUMNS
        rows = citation_rows(ledger, warn)
        per_group = _CITATIONS_PER_GROUP
    try:
        with atomic_file(out) as raw:
            if fmt == "csv":
                n = _write_csv(raw, columns, rows)
            elif fmt == "jsonl":
                n = _write_jsonl(raw, columns, rows)
            else:
                n = _write_parquet(raw, columns, rows, per_group, warn)
    finally:
        if inputs is not None:
            inputs.close()
    if inputs is not None and inputs.unreadable:
        warn(
            f"{inputs.unreadable} line(s) of {inputs.path} no longer validate on their own "
            "(they took their model from --model): their prompt columns are empty"
        )
    return n


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(sep=" ", timespec="milliseconds")


def _text_values(columns: tuple[Column, ...]) -> Callable[[tuple[Any, ...]], list[Any]]:
    unix = [i for i, c in enumerate(columns) if c.kind == "unix"]

    def convert(row: tuple[Any, ...]) -> list[Any]:
        values = list(row)
        for i in unix:
            values[i] = _iso(values[i])
        return values

    return convert


def _write_jsonl(
    raw: IO[bytes], columns: tuple[Column, ...], rows: Iterator[tuple[Any, ...]]
) -> int:
    names = [c.name for c in columns]
    convert = _text_values(columns)
    n = 0
    buf: list[bytes] = []
    for row in rows:
        buf.append(orjson.dumps(dict(zip(names, convert(row), strict=True))))
        n += 1
        if len(buf) >= 1024:
            raw.write(b"\n".join(buf) + b"\n")
            buf.clear()
    if buf:
        raw.write(b"\n".join(buf) + b"\n")
    return n


def _write_csv(raw: IO[bytes], columns: tuple[Column, ...], rows: Iterator[tuple[Any, ...]]) -> int:
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(out)
    writer.writerow([c.name for c in columns])
    convert = _text_values(columns)
    lists = [i for i, c in enumerate(columns) if c.kind == "strlist"]
    bools = [i for i, c in enumerate(columns) if c.kind == "bool"]
    n = 0
    for row in rows:
        values = convert(row)
        for i in lists:
            if values[i] is not None:
                values[i] = orjson.dumps(values[i]).decode()
        for i in bools:
            if values[i] is not None:
                values[i] = "true" if values[i] else "false"
        writer.writerow(["" if v is None else v for v in values])
        n += 1
    out.flush()
    out.detach()
    return n


def _pyarrow() -> Any:
    # import_module: pyarrow has no type information, and is optional.
    try:
        pa = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ConfigError(f"--format parquet needs pyarrow: {PARQUET_HINT}") from None
    return pa


def _arrow_type(pa: Any, kind: Kind) -> Any:
    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "str": pa.string(),
        "text": pa.string(),
        "bool": pa.bool_(),
        "strlist": pa.list_(pa.string()),
        "datetime_text": pa.timestamp("us", tz="UTC"),
        "unix": pa.timestamp("us", tz="UTC"),
    }[kind]


def parse_service_datetime(text: str | None) -> datetime | None:
    """``2026-11-25 10:03:12 +00:00`` (the service's format) as an aware datetime."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None


def _write_parquet(
    raw: IO[bytes],
    columns: tuple[Column, ...],
    rows: Iterator[tuple[Any, ...]],
    per_group: int,
    warn: Warn,
) -> int:
    pa = _pyarrow()
    pq = pa.parquet
    schema = pa.schema([pa.field(c.name, _arrow_type(pa, c.kind)) for c in columns])
    texts = [i for i, c in enumerate(columns) if c.kind == "datetime_text"]
    unix = [i for i, c in enumerate(columns) if c.kind == "unix"]
    unparsed = 0
    n = 0
    # The writer keeps every row group's metadata until it closes: min/max statistics of
    # long texts (answers, prompts, urls) would make that grow with the file, so only
    # short columns get statistics.
    stats = [c.name for c in columns if c.kind not in ("text", "strlist")]
    with pq.ParquetWriter(raw, schema, compression="zstd", write_statistics=stats) as writer:
        group: list[list[Any]] = [[] for _ in columns]

        def flush() -> None:
            arrays = [
                pa.array(values, type=field.type)
                for values, field in zip(group, schema, strict=True)
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            for values in group:
                values.clear()

        for row in rows:
            values = list(row)
            for i in texts:
                text = values[i]
                values[i] = parse_service_datetime(text)
                if text and values[i] is None:
                    unparsed += 1
            for i in unix:
                if values[i] is not None:
                    values[i] = datetime.fromtimestamp(values[i], UTC)
            for column, value in zip(group, values, strict=True):
                column.append(value)
            n += 1
            if len(group[0]) >= per_group:
                flush()
        if group[0]:
            flush()
    if unparsed:
        warn(f"{unparsed} datetime value(s) not in the documented format are null in Parquet")
    return n
