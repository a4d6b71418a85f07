"""Streaming readers for the three input formats: one ``InputLine`` per input record, in order.

A bad record is never an exception: it comes back as a rejected ``InputLine`` (field and
reason), so one typo in a million lines costs that line and nothing else. ``InputError`` is
raised only when the input cannot be read at all. See docs/input-formats.md.

Memory is flat in the length of the input: records are read one at a time, and a record
longer than ``max_line_bytes`` is hashed and skipped chunk by chunk instead of being held.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
import re
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, BinaryIO, Final, Literal

import msgspec

from llmtasks._errors import ConfigError, InputError, LlmtasksError
from llmtasks._rules import TaskRules
from llmtasks._task import (
    StrictTask,
    Task,
    TaskRuleError,
    decode_task,
    explain,
)
from llmtasks._words import count

Format = Literal["jsonl", "csv", "text"]
FORMATS: Final[tuple[Format, ...]] = ("jsonl", "csv", "text")
SUFFIXES: Final[dict[str, Format]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "text",
}
STDIN: Final = "-"
DIGEST_BYTES: Final = 8
BLANK: Final = "blank line"
#: The reason of a record skipped for an engine because its ``engine`` field names another.
ROUTED: Final = "sent to"

_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_CHUNK: Final = 1 << 16
_BUFFER_BYTES: Final = 1 << 18


class InputLine(msgspec.Struct, frozen=True):
    """What became of one input record. Exactly one of: a task, a rejection, a skip."""

    line: int
    """1-based physical line number where the record starts in the file."""
    digest: bytes
    """8-byte blake2b of the record's bytes (without its line ending and a leading BOM)."""
    task: Task | None
    """The valid task (a ``StrictTask``), or None when rejected or skipped."""
    field: str = ""
    """When rejected: the field to blame ("" when the whole record is bad)."""
    reason: str = ""
    """When rejected: why, for a human. When skipped: "blank line"."""
    skipped: bool = False
    """A blank record: not a task, but counted, and it gets an outcome."""

    @property
    def rejected(self) -> bool:
        return self.task is None and not self.skipped


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
    complete = _Completer(default_model, rules, tuple(engines or (rules.engine,)))
    gen = _generate(source, kind, complete, max_line_bytes)
    # Run the generator up to its first yield: opening the file and reading a CSV header
    # happen now, and from here on closing the generator closes the file.
    primed = next(gen)
    assert primed is _PRIMED
    return gen


_PRIMED: Final = InputLine(line=0, digest=b"", task=None)


def _generate(
    source: str, kind: Format, complete: _Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    name = "<stdin>" if source == STDIN else source
    stream, owned = _open(source, name)
    try:
        lines = _physical_lines(stream, name, max_line_bytes)
        # Read the first line now: a UTF-16 input is refused before the caller starts.
        physical = itertools.chain(list(itertools.islice(lines, 1)), lines)
        if kind == "jsonl":
            body = _jsonl(physical, complete, max_line_bytes)
        elif kind == "text":
            body = _text(physical, complete, max_line_bytes)
        else:
            body = _csv(physical, name, complete, max_line_bytes)
            next(body)  # reads the header: InputError now, not later
        yield _PRIMED
        yield from body
    finally:
        if owned:
            stream.close()


def _open(source: str, name: str) -> tuple[BinaryIO, bool]:
    if source == STDIN:
        stdin = sys.stdin
        if stdin is None:
            raise InputError("<stdin>: there is no standard input")
        # sys.stdin is text; its .buffer has the bytes (a test may install a bare BytesIO).
        buffer: BinaryIO = getattr(stdin, "buffer", None) or stdin  # type: ignore[assignment]
        return buffer, False
    try:
        # Closed by the generator's finally, which is why this is not a with block.
        return open(source, "rb", buffering=_BUFFER_BYTES), True
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open: {exc.strerror or exc}") from None


# A physical line as read: (content without its line ending, None), or for a line longer
# than the limit (None, (digest, size)) -- its bytes were hashed and dropped as they came.
_Physical = tuple[bytes, None] | tuple[None, tuple[bytes, int]]


def _physical_lines(
    stream: BinaryIO, name: str, max_line_bytes: int
) -> Generator[_Physical, None, None]:
    """Lines split on b"\\n" (a trailing b"\\r" goes with the ending), BOM stripped."""
    # +2 lets a line of exactly max_line_bytes arrive whole with its b"\r\n".
    limit = max_line_bytes + 2
    readline = stream.readline
    want = limit + len(_BOM)  # the first read makes room for a BOM
    while True:
        try:
            raw = readline(want)
        except OSError as exc:
            raise InputError(f"{name}: read error: {exc.strerror or exc}") from None
        if not raw:
            return
        full = len(raw) == want
        if want != limit:
            want = limit
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
                if not raw:  # the input is just a BOM
                    return
            elif raw.startswith(_UTF16_BOMS):
                raise InputError(f"{name}: is UTF-16 encoded; save it as UTF-8")
        if raw[-1:] == b"\n":
            raw = raw[:-2] if raw[-2:-1] == b"\r" else raw[:-1]
        elif full:
            yield None, _drain_long_line(readline, raw, name)
            continue
        yield raw, None


def _drain_long_line(readline: Callable[[int], bytes], head: bytes, name: str) -> tuple[bytes, int]:
    """Hash the rest of a too-long line chunk by chunk; return (digest, content size)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    size = 0
    pending = head
    while True:
        try:
            chunk = readline(_CHUNK)
        except OSError as exc:
            raise InputError(f"{name}: read error: {exc.strerror or exc}") from None
        if not chunk or chunk[-1:] == b"\n":
            data = pending + chunk
            if data[-1:] == b"\n":
                data = data[:-2] if data[-2:-1] == b"\r" else data[:-1]
            h.update(data)
            return h.digest(), size + len(data)
        # Hold back a final b"\r": it belongs to the line ending if b"\n" comes next.
        keep = 1 if chunk[-1:] == b"\r" else 0
        data = pending + chunk
        h.update(data[: len(data) - keep])
        size += len(data) - keep
        pending = data[len(data) - keep :]


def record_digest(raw: bytes) -> bytes:
    """The fingerprint of one input record kept in the ledger (resume checks it)."""
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


def _too_long(line: int, digest: bytes, size: int, max_line_bytes: int) -> InputLine:
    return InputLine(
        line=line,
        digest=digest,
        task=None,
        reason=f"is longer than {count(max_line_bytes, 'byte')} ({count(size, 'byte')})",
    )


def _utf8_error(raw: bytes) -> str | None:
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 (byte {exc.start})"
    return None


# ---------------------------------------------------------------------------------------------
# Turning a task or an error into an InputLine


_WHOLE_FLOAT = re.compile(r"Expected `int( \| null)?`, got `float` - at `\$\.(\w+)`")


def decode_user_task(raw: bytes) -> Task:
    """``decode_task(raw, strict=True)``, except that a whole-number float in an integer
    field (``512.0``: what pandas and many JSON writers emit) is taken as that integer, so
    the POST body carries ``512``. A fractional one (``512.5``) is refused as before. The
    slow path runs only for a line that the fast decoder refused on exactly this."""
    try:
        return decode_task(raw, strict=True)
    except msgspec.ValidationError as err:
        m = _WHOLE_FLOAT.fullmatch(str(err))
        if m is None or m.group(2) not in _INT_FIELDS:
            raise
        doc = msgspec.json.decode(raw)
        if not isinstance(doc, dict):
            raise
        for name in _INT_FIELDS:
            value = doc.get(name)
            if isinstance(value, float):
                if not value.is_integer():
                    raise
                doc[name] = int(value)
        return decode_task(msgspec.json.encode(doc), strict=True)


class _Completer:
    """Applies the default model, then the engine's rules (``TaskRules``)."""

    def __init__(
        self, default_model: str | None, rules: TaskRules, engines: tuple[str, ...] = ()
    ) -> None:
        self.default_model = default_model
        self.rules = rules
        self.engines = engines or (rules.engine,)

    def route(self, value: object, line: int, digest: bytes) -> InputLine | None:
        """A record's ``engine`` field: None when the record is this engine's, else its
        outcome for this engine (skipped: another engine's; rejected: no engine of the run)."""
        if not isinstance(value, str) or value not in self.engines:
            return InputLine(
                line=line,
                digest=digest,
                task=None,
                field="engine",
                reason=f"must be an engine of this run ({', '.join(self.engines)}), "
                f"got {msgspec.json.encode(value).decode()}",
            )
        if value != self.rules.engine:
            return InputLine(
                line=line,
                digest=digest,
                task=None,
                reason=f"{ROUTED} {value} by its engine field",
                skipped=True,
            )
        return None

    def __call__(self, task: Task, line: int) -> Task:
        """Raises TaskRuleError."""
        if not task.model_name and self.default_model:
            task = msgspec.structs.replace(task, model_name=self.default_model)
        self.rules.check(task, line)
        return task


_MODEL_HINT: Final = "is required (set model_name in the input or give --model)"
_AT = re.compile(r" - at `\$\.?([^`]+)`")


def _rejection(err: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    field, reason = explain(err)
    if reason == "unknown field":
        # explain() names only the last key; say where it is when it is nested.
        m = _AT.search(str(err))
        if m:
            field = f"{m.group(1)}.{field}"
    return field, _humanize(field, reason)


_TYPE_WORDS: Final = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}
_EXPECTED_GOT = re.compile(r"Expected `([^`]*)`, got `([^`]*)`")
_EXPECTED_LEN = re.compile(r"Expected `(str|array)` of length <= (\d+)")
_EXPECTED_CMP = re.compile(r"Expected `\w+` ([<>]=?) (\S+)")
_MALFORMED = "JSON is malformed: "


def _humanize(field: str, reason: str) -> str:
    """msgspec's wording, said the way a person fixing their input file needs it."""
    m = _EXPECTED_GOT.fullmatch(reason)
    if m:
        wanted = [w.strip() for w in m.group(1).split("|") if w.strip() != "null"]
        want = " or ".join(_TYPE_WORDS.get(w, w) for w in wanted) or "null"
        got = _TYPE_WORDS.get(m.group(2), m.group(2))
        if not field and wanted == ["object"]:
            return f"must be a JSON object of task fields, got {got}"
        return f"must be {want}, got {got}"
    m = _EXPECTED_LEN.fullmatch(reason)
    if m:
        unit = "characters" if m.group(1) == "str" else "items"
        return f"must be at most {m.group(2)} {unit} long"
    m = _EXPECTED_CMP.fullmatch(reason)
    if m:
        return f"must be {m.group(1)} {m.group(2)}"
    if reason == "Number out of range":
        return "is a number too large to use"
    if reason == "Input data was truncated" or reason.startswith(_MALFORMED):
        return f"is not valid JSON: {reason}"  # without the text: see explain_json()
    return reason


_MALFORMED_AT = re.compile(r"JSON is malformed: (.+) \(byte (\d+)\)")
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|u|.)", re.DOTALL)
_CONTROL_NAMES: Final = {
    0x09: ("a tab", "\\t"),
    0x0A: ("a line feed", "\\n"),
    0x0D: ("a carriage return", "\\r"),
}
_WORD = re.compile(rb"[A-Za-z]+")
_QUOTES: Final = "\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e"


def explain_json(raw: bytes, message: str, *, where: str = "line") -> str:
    """A msgspec JSON decoding error about ``raw``, in words a person can act on, with the
    byte offset (from 0 at the start of the line). msgspec's own words are kept for a case
    not foreseen here."""
    if message == "Input data was truncated":
        bad_escape = _bad_escape(raw)
        # msgspec also says this of a lone surrogate or a short \u escape near the end.
        if bad_escape is not None:
            return bad_escape
        return (
            f"is not valid JSON: the {where} ends (byte {len(raw)}) before the value is "
            "complete: a closing quote, } or ] is missing"
        )
    m = _MALFORMED_AT.fullmatch(message)
    if m is None:
        return _humanize("", message)
    what, at = m.group(1), int(m.group(2))
    if "surrogate" in what or "unicode escape" in what or "hex escape" in what:
        bad_escape = _bad_escape(raw)
        if bad_escape is not None:
            return bad_escape
    return f"is not valid JSON: {_malformed(raw, what, at)}"


def _bad_escape(raw: bytes) -> str | None:
    """The first \\u escape JSON cannot decode: a lone or unpaired UTF-16 surrogate (a
    high one, \\ud800-\\udbff, must be followed at once by a low one, \\udc00-\\udfff), or
    one without four hex digits. Escapes are read left to right, so \\\\ud800 is a backslash
    and text."""
    high: re.Match[bytes] | None = None
    for m in _ESCAPE.finditer(raw):
        if high is not None:
            low = m.group(1) is not None and 0xDC00 <= int(m.group(1), 16) <= 0xDFFF
            if not (low and m.start() == high.end()):
                return _lone(high, "high", "not followed by a low one (\\udc00-\\udfff)")
            high = None
            continue
        if m.group(0)[1:2] != b"u":
            continue
        if m.group(1) is None:
            return (
                f"is not valid JSON: a \\u escape at byte {m.start()} needs four hex digits "
                "(as in \\u00e9)"
            )
        code = int(m.group(1), 16)
        if 0xD800 <= code <= 0xDBFF:
            high = m
        elif 0xDC00 <= code <= 0xDFFF:
            return _lone(m, "low", "not preceded by a high one (\\ud800-\\udbff)")
    if high is not None:
        return _lone(high, "high", "not followed by a low one (\\udc00-\\udfff)")
    return None


def _lone(m: re.Match[bytes], kind: str, why: str) -> str:
    return (
        f"is not valid JSON: the escape {m.group(0).decode()} at byte {m.start()} is a lone "
        f"{kind} UTF-16 surrogate, {why}: it stands for no character (a character "
        "beyond \\uffff is written as a pair, as in \\ud83d\\ude00)"
    )


def _malformed(raw: bytes, what: str, at: int) -> str:
    """msgspec's "JSON is malformed: WHAT (byte AT)" said plainly."""
    if what == "trailing characters":
        # msgspec may point one past the first extra character: point at it.
        while at > 0 and raw[at - 1 : at] not in (b" ", b"\t", b"\r", b"}", b"]", b'"'):
            at -= 1
        return f"more text follows the end of the JSON value at byte {at} (one object per line)"
    if what.startswith("trailing comma in "):
        close = "}" if what.endswith("object") else "]"
        return f"a comma before the closing {close} at byte {at}: remove it"
    if what == "expected ':'":
        return f"a ':' is missing after the field name at byte {at}"
    if what in ("expected ',' or '}'", "expected ',' or ']'"):
        close = what[-2]
        return f"a ',' or {close} is missing at byte {at}"
    if what == "expected '\"'":
        return f"a field name in double quotes is expected at byte {at}"
    if what == "object keys must be strings":
        return f"a field name at byte {at} is not in double quotes"
    if what == "invalid number":
        return (
            f"an invalid number near byte {at} (JSON numbers have no leading zeros and a "
            "digit on both sides of '.')"
        )
    if what in ("invalid escape character in string", "invalid escaped character"):
        start = raw.rfind(b"\\", 0, at + 1)
        seq = raw[start : start + 2].decode(errors="replace") if start >= 0 else "\\"
        return (
            f"the escape {seq} at byte {max(start, 0)} is not one JSON knows: after a "
            '\\ come only " \\ / b f n r t or u (write \\\\ for a backslash)'
        )
    if what == "invalid character":
        return _invalid_character(raw, at)
    return f"{what} (byte {at})"


def _invalid_character(raw: bytes, at: int) -> str:
    control = at < len(raw) and (raw[at] < 0x20 or raw[at] == 0x7F)
    # msgspec may point into or just past a bare word ("tru}"): blame the whole word.
    near = [w for w in _WORD.finditer(raw, max(0, at - 5), at + 1) if w.end() >= at - 1]
    if near and not control:
        at = near[-1].start()
        while at > 0 and raw[at - 1 : at].isalpha():
            at -= 1
    byte = raw[at] if at < len(raw) else 0
    if byte < 0x20 or byte == 0x7F:
        name, escape = _CONTROL_NAMES.get(byte, (f"U+{byte:04X}", f"\\u{byte:04x}"))
        return (
            f"a control character ({name}) at byte {at}: inside a string it must be "
            f"written as {escape}"
        )
    rest = raw[at:]
    ch = rest[:4].decode(errors="ignore")[:1] or chr(byte)
    if ch == "'":
        return f"a single quote at byte {at}: JSON puts names and strings in double quotes"
    if ch in _QUOTES:
        return f'a typographic quote {ch} at byte {at}: JSON needs plain double quotes (")'
    if rest.startswith((b"NaN", b"Infinity")):
        return f"NaN and Infinity (byte {at}) are not JSON numbers"
    if ch in "/#":
        return f"a comment at byte {at}: JSON has no comments"
    if ch in "+.":
        return f"a number at byte {at} starts with {ch!r}: JSON numbers start with a digit or -"
    word = _WORD.match(raw, at)
    if word is not None:
        return (
            f"unexpected text {word.group().decode()!r} at byte {at}: strings need double "
            "quotes, and true, false and null are lower case"
        )
    return f"unexpected character {ch!r} at byte {at}"


def _rule_rejection(err: TaskRuleError, default_model: str | None, hint: str) -> tuple[str, str]:
    if err.field == "model_name" and err.reason == "is required" and not default_model:
        return err.field, hint
    return err.field, err.reason


# ---------------------------------------------------------------------------------------------
# JSONL


def _jsonl(
    physical: Iterator[_Physical], complete: _Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    default_model = complete.default_model
    blake2b = hashlib.blake2b
    n = 0
    for raw, long in physical:
        n += 1
        if raw is None:
            assert long is not None
            yield _too_long(n, long[0], long[1], max_line_bytes)
            continue
        digest = blake2b(raw, digest_size=DIGEST_BYTES).digest()
        if len(raw) > max_line_bytes:
            yield _too_long(n, digest, len(raw), max_line_bytes)
            continue
        body = raw
        if b'"engine"' in raw:
            # Routing, never sent: taken out before the task is decoded (the slow path only
            # for records that may have it).
            routed, body = _take_engine(raw, n, digest, complete)
            if routed is not None:
                yield routed
                continue
        try:
            task = complete(decode_user_task(body), n)
        except msgspec.DecodeError as err:
            if not raw.strip():
                yield InputLine(line=n, digest=digest, task=None, reason=BLANK, skipped=True)
                continue
            if isinstance(err, msgspec.ValidationError):  # a subclass: the JSON was fine
                field, reason = _rejection(err)
            else:
                field, reason = "", _utf8_error(raw) or explain_json(raw, str(err))
            yield InputLine(line=n, digest=digest, task=None, field=field, reason=reason)
            continue
        except msgspec.ValidationError as err:
            field, reason = _rejection(err)
            yield InputLine(line=n, digest=digest, task=None, field=field, reason=reason)
            continue
        except TaskRuleError as err:
            field, reason = _rule_rejection(err, default_model, _MODEL_HINT)
            yield InputLine(line=n, digest=digest, task=None, field=field, reason=reason)
            continue
        except UnicodeDecodeError as err:  # msgspec raises it for bad bytes inside a string
            # err.start counts from the string's start; say where it is in the line.
            reason = _utf8_error(raw) or f"is not valid UTF-8 ({err.reason})"
            yield InputLine(line=n, digest=digest, task=None, reason=reason)
            continue
        twice = _duplicate_field(raw)
        if twice:
            reason = "is given twice in this line: only one value would be sent"
            yield InputLine(line=n, digest=digest, task=None, field=twice, reason=reason)
            continue
        yield InputLine(line=n, digest=digest, task=task)


def _take_engine(
    raw: bytes, line: int, digest: bytes, complete: _Completer
) -> tuple[InputLine | None, bytes]:
    """(the record's outcome if it is not this engine's, the record without ``engine``)."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None, raw  # the decoder says what is wrong with it
    if not isinstance(doc, dict) or "engine" not in doc:
        return None, raw
    routed = complete.route(doc.pop("engine"), line, digest)
    return routed, msgspec.json.encode(doc)


# A quote that ends a JSON string cannot stand inside one, so a quoted name followed by a
# colon is always a key. Names inside message_chain items repeat legitimately.
_KEY: Final = re.compile(rb'"([A-Za-z_]+)"\s*:')
_ITEM_KEYS: Final = frozenset({b"role", b"message"})


def _duplicate_field(raw: bytes) -> str:
    """The first field named twice in a JSONL line ("" if none): JSON parsers, msgspec
    included, keep the last value silently, and a dropped value must not go unnoticed."""
    keys: list[bytes] = [k for k in _KEY.findall(raw) if k not in _ITEM_KEYS]
    if len(keys) == len(set(keys)):
        return ""
    seen: set[bytes] = set()
    for k in keys:
        if k in seen:
            return k.decode()
        seen.add(k)
    return ""


# ---------------------------------------------------------------------------------------------
# Text: one prompt per line


_TEXT_MODEL_HINT: Final = "is required (give --model)"


def _text(
    physical: Iterator[_Physical], complete: _Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    default_model = complete.default_model
    n = 0
    for raw, long in physical:
        n += 1
        if raw is None:
            assert long is not None
            yield _too_long(n, long[0], long[1], max_line_bytes)
            continue
        digest = record_digest(raw)
        if len(raw) > max_line_bytes:
            yield _too_long(n, digest, len(raw), max_line_bytes)
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
            field, reason = _rejection(err)
            yield InputLine(line=n, digest=digest, task=None, field=field, reason=reason)
            continue
        except TaskRuleError as err:
            yield InputLine(line=n, digest=digest, task=None, field=err.field, reason=err.reason)
            continue
        yield InputLine(line=n, digest=digest, task=task)


# ---------------------------------------------------------------------------------------------
# CSV


FIELDS: Final[tuple[str, ...]] = StrictTask.__struct_fields__
_INT_FIELDS: Final = frozenset({"max_output_tokens"})
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

    def __init__(self, physical: Iterator[_Physical], max_line_bytes: int) -> None:
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


def _csv(
    physical: Iterator[_Physical], name: str, complete: _Completer, max_line_bytes: int
) -> Generator[InputLine, None, None]:
    """The first ``next()`` reads the header and yields ``_PRIMED``; then the records."""
    src = _CsvSource(physical, max_line_bytes)
    reader = csv.reader(src, strict=True)
    header = _read_header(reader, src, name)
    yield _PRIMED
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
            yield _too_long(src.start, src.digest(), src.size, max_line_bytes)
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
    complete: _Completer,
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
    except msgspec.ValidationError as err:
        field, reason = _rejection(err)
        return InputLine(line=line, digest=digest, task=None, field=field, reason=reason)
    except TaskRuleError as err:
        field, reason = _rule_rejection(err, complete.default_model, _MODEL_HINT)
        return InputLine(line=line, digest=digest, task=None, field=field, reason=reason)
    return InputLine(line=line, digest=digest, task=task)


def _cell_value(col: str, cell: str) -> object:
    """A CSV cell as the field's type. Raises ValueError with the reason."""
    if col in _INT_FIELDS:
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
