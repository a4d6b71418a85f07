"""Streaming readers for the three input formats: one ``InputLine`` per input record, in order.

A bad record is never an exception: it comes back as a rejected ``InputLine`` (field and
reason), so one typo in a million lines costs that line and nothing else. ``InputError`` is
raised only when the input cannot be read at all. See docs/input-formats.md.

Memory is flat in the length of the input: records are read one at a time, and a record
longer than ``max_line_bytes`` is hashed and skipped chunk by chunk instead of being held.

The jobs are split: ``_lines`` reads physical lines, this module and ``_input_csv`` turn
them into records per format, ``_decode`` judges one task, ``_explain`` words what is wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Generator, Iterator, Sequence
from typing import Final, Literal

import msgspec

from llmtasks._decode import BLANK as BLANK
from llmtasks._decode import ROUTED as ROUTED
from llmtasks._decode import Completer, decode_record, too_long
from llmtasks._decode import InputLine as InputLine
from llmtasks._errors import ConfigError, InputError
from llmtasks._explain import rejection
from llmtasks._input_csv import read_csv
from llmtasks._lines import DIGEST_BYTES as DIGEST_BYTES
from llmtasks._lines import STDIN as STDIN
from llmtasks._lines import Physical, open_source, physical_lines
from llmtasks._lines import record_digest as record_digest
from llmtasks._rules import TaskRules
from llmtasks._task import StrictTask, Task, TaskRuleError

Format = Literal["jsonl", "csv", "text"]
FORMATS: Final[tuple[Format, ...]] = ("jsonl", "csv", "text")
SUFFIXES: Final[dict[str, Format]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "text",
}


def detect_format(path: str, fmt: str | None) -> Format:
    """The format to read ``path`` as: ``fmt`` when given, else from the suffix; stdin is jsonl."""
    if fmt is not None:
        for known in FORMATS:
            if fmt == known:
                return known
        raise ConfigError(f"unknown input format {fmt!r}: use jsonl, csv or text")
    if path == STDIN:
        return "jsonl"
    suffix = os.path.splitext(path)[1].lower()
    found = SUFFIXES.get(suffix)
    if found is None:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise InputError(
            f"{path}: cannot tell the input format ({what}; known: "
            f"{', '.join(SUFFIXES)}): give --format jsonl, csv or text"
        )
    return found


def read_lines(
    source: str,
    *,
    fmt: str | None = None,
    default_model: str | None = None,
    max_line_bytes: int = 1_000_000,
    engine: str | None = None,
    rules: TaskRules | None = None,
    engines: Sequence[str] | None = None,
) -> Iterator[InputLine]:
    """Stream ``source`` (a path, or "-" for stdin) as one ``InputLine`` per record.

    Each task is checked against its engine's rules: ``rules`` (with the run's models list),
    or else ``engine``'s (default chat_gpt) with the built-in models table (see ``_rules``).

    A record may carry an ``engine`` field (a JSONL key, a CSV column): routing, never
    sent. ``engines`` are the run's (default: the rules' one): a record naming another of
    them is skipped for this engine, one naming none of them is rejected.

    The file is opened, and a CSV header read, before this returns, so an unreadable input
    raises ``InputError`` here and not halfway through a run. The file is closed when the
    iterator is exhausted, closed (``.close()``) or garbage collected; stdin is never closed.
    """
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be at least 1")
    kind = detect_format(source, fmt)
    if rules is None:
        rules = TaskRules(engine or "chat_gpt")
    elif engine is not None and rules.engine != engine:
        raise ConfigError(f"the rules given are {rules.engine}'s, not {engine}'s")
    complete = Completer(default_model, rules, tuple(engines or (rules.engine,)))
    gen = _generate(source, kind, complete, max_line_bytes)
    # Run the generator up to its first yield: opening the file and reading a CSV header
    # happen now, and from here on closing the generator closes the file.
    primed = next(gen)
    assert primed is _PRIMED
    return gen


_PRIMED: Final = InputLine(line=0, digest=b"", task=None)


def _generate(
    source: str, kind: Format, complete: Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    name = "<stdin>" if source == STDIN else source
    stream, owned = open_source(source, name)
    try:
        lines = physical_lines(stream, name, max_line_bytes)
        # Read the first line now: a UTF-16 input is refused before the caller starts.
        physical = itertools.chain(list(itertools.islice(lines, 1)), lines)
        body: Iterator[InputLine]
        if kind == "jsonl":
            body = _jsonl(physical, complete, max_line_bytes)
        elif kind == "text":
            body = _text(physical, complete, max_line_bytes)
        else:
            body = read_csv(physical, name, complete, max_line_bytes)  # reads the header
        yield _PRIMED
        yield from body
    finally:
        if owned:
            stream.close()


def _jsonl(
    physical: Iterator[Physical], complete: Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    blake2b = hashlib.blake2b
    n = 0
    for raw, long in physical:
        n += 1
        if raw is None:
            assert long is not None
            yield too_long(n, long[0], long[1], max_line_bytes)
            continue
        digest = blake2b(raw, digest_size=DIGEST_BYTES).digest()
        if len(raw) > max_line_bytes:
            yield too_long(n, digest, len(raw), max_line_bytes)
            continue
        yield decode_record(raw, n, digest, complete)


# ---------------------------------------------------------------------------------------------
# Text: one prompt per line


_TEXT_MODEL_HINT: Final = "is required (give --model)"


def _text(
    physical: Iterator[Physical], complete: Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    default_model = complete.default_model
    n = 0
    for raw, long in physical:
        n += 1
        if raw is None:
            assert long is not None
            yield too_long(n, long[0], long[1], max_line_bytes)
            continue
        digest = record_digest(raw)
        if len(raw) > max_line_bytes:
            yield too_long(n, digest, len(raw), max_line_bytes)
            continue
        if not raw.strip():
            yield InputLine(line=n, digest=digest, task=None, reason=BLANK, skipped=True)
            continue
        try:
            prompt = raw.decode()
        except UnicodeDecodeError as err:
            reason = f"is not valid UTF-8 (byte {err.start})"
            yield InputLine(line=n, digest=digest, task=None, field="user_prompt", reason=reason)
            continue
        if not default_model:
            yield InputLine(
                line=n, digest=digest, task=None, field="model_name", reason=_TEXT_MODEL_HINT
            )
            continue
        try:
            # convert() checks the documented limits (a Struct built directly would not).
            task: Task = msgspec.convert(
                {"user_prompt": prompt, "model_name": default_model}, StrictTask
            )
            task = complete(task, n)
        except msgspec.ValidationError as err:
            field, reason = rejection(err)
            yield InputLine(line=n, digest=digest, task=None, field=field, reason=reason)
            continue
        except TaskRuleError as err:
            yield InputLine(line=n, digest=digest, task=None, field=err.field, reason=err.reason)
            continue
        yield InputLine(line=n, digest=digest, task=task)
