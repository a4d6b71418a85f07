"""One input record to one outcome: a task checked against its engine's rules, a rejection
naming the field and the reason, or a skip.

``decode_record`` is the one way a JSON task is decoded and judged, whether it is a line of a
JSONL file or a task given in Python (``Submitter.submit`` encodes it and comes here), so the
CLI and the library word the same bad task the same way. CSV and text records are built
field by field (``_input_csv``, ``_input``) and meet the same ``Completer``.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from llmtasks._explain import explain_json, rejection, utf8_error
from llmtasks._rules import TaskRules
from llmtasks._task import StrictTask, Task, TaskRuleError
from llmtasks._words import count

BLANK: Final = "blank line"
#: The reason of a record skipped for an engine because its ``engine`` field names another.
ROUTED: Final = "sent to"
#: The reason of a task without a model when none was given for the run.
MODEL_HINT: Final = "is required (set model_name in the input or give --model)"
INT_FIELDS: Final = frozenset({"max_output_tokens"})
#: Task shapes a Completer remembers as passed (a bound: an input of endless shapes is
#: simply checked line by line).
_SHAPES: Final = 4096


# One per input line, alive from reading to batching; holding a Task, it would be tracked
# by the cyclic GC (msgspec leaves only all-atomic Structs out), and those allocations
# alone set off most of a run's collections. It cannot be part of a cycle.
class InputLine(msgspec.Struct, frozen=True, gc=False):
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


def too_long(line: int, digest: bytes, size: int, max_line_bytes: int) -> InputLine:
    return InputLine(
        line=line,
        digest=digest,
        task=None,
        reason=f"is longer than {count(max_line_bytes, 'byte')} ({count(size, 'byte')})",
    )


_WHOLE_FLOAT = re.compile(r"Expected `int( \| null)?`, got `float` - at `\$\.(\w+)`")
# The same decoder as ``_task.decode_task(raw, strict=True)``, bound once: this is per line.
_decode_strict = msgspec.json.Decoder(StrictTask).decode


def decode_user_task(raw: bytes) -> Task:
    """``decode_task(raw, strict=True)``, except that a whole-number float in an integer
    field (``512.0``: what pandas and many JSON writers emit) is taken as that integer, so
    the POST body carries ``512``. A fractional one (``512.5``) is refused as before. The
    slow path runs only for a line that the fast decoder refused on exactly this."""
    try:
        task: Task = _decode_strict(raw)
        return task
    except msgspec.ValidationError as err:
        m = _WHOLE_FLOAT.fullmatch(str(err))
        if m is None or m.group(2) not in INT_FIELDS:
            raise
        doc = msgspec.json.decode(raw)
        if not isinstance(doc, dict):
            raise
        for name in INT_FIELDS:
            value = doc.get(name)
            if isinstance(value, float):
                if not value.is_integer():
                    raise
                doc[name] = int(value)
        task = _decode_strict(msgspec.json.encode(doc))
        return task


class Completer:
    """Applies the default model, then the engine's rules (``TaskRules``)."""

    def __init__(
        self,
        default_model: str | None,
        rules: TaskRules,
        engines: tuple[str, ...] = (),
        *,
        model_hint: str = MODEL_HINT,
    ) -> None:
        self.default_model = default_model
        self.rules = rules
        self.engines = engines or (rules.engine,)
        self.model_hint = model_hint
        # The shapes of task the rules passed without a word (see __call__).
        self._passed: set[tuple[object, ...]] = set()

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
        # The rules read only these fields (of the prompt, only whether there is one), and a
        # task they pass without a warning says nothing about its line: a task of a shape
        # passed before passes again. Most inputs have a handful of shapes, so the check
        # runs a handful of times. A check that warns is never skipped (``warned`` counts
        # every occurrence).
        shape = (
            task.model_name,
            task.max_output_tokens,
            task.temperature,
            task.top_p,
            task.web_search,
            task.use_reasoning,
            task.force_web_search,
            task.web_search_country_iso_code,
            task.web_search_city,
            not task.user_prompt,
        )
        passed = self._passed
        if shape in passed:
            return task
        rules = self.rules
        warnings = sum(rules.warned.values())
        rules.check(task, line)
        if sum(rules.warned.values()) == warnings:
            if len(passed) >= _SHAPES:
                passed.clear()
            passed.add(shape)
        return task

    def rule_rejection(self, err: TaskRuleError) -> tuple[str, str]:
        """(field, reason) of a rule the task breaks; a missing model says where to set it."""
        if err.field == "model_name" and err.reason == "is required" and not self.default_model:
            return err.field, self.model_hint
        return err.field, err.reason


def decode_record(raw: bytes, line: int, digest: bytes, complete: Completer) -> InputLine:
    """The outcome of one JSON record (``raw`` without its line ending): routed by its
    ``engine`` field, decoded, completed and checked by ``complete``, and refused when a
    field is given twice. Never raises for bad input."""
    body = raw
    if b'"engine"' in raw:
        # Routing, never sent: taken out before the task is decoded (the slow path only
        # for records that may have it).
        routed, body = _take_engine(raw, line, digest, complete)
        if routed is not None:
            return routed
    try:
        decoded = decode_user_task(body)
        task = complete(decoded, line)
    except (msgspec.ValidationError, TaskRuleError) as err:  # the JSON was fine
        return refused(err, line, digest, complete)
    except msgspec.DecodeError as err:
        if not raw.strip():
            return InputLine(line=line, digest=digest, task=None, reason=BLANK, skipped=True)
        reason = utf8_error(raw) or explain_json(raw, str(err))
        return InputLine(line=line, digest=digest, task=None, field="", reason=reason)
    except UnicodeDecodeError as err:  # msgspec raises it for bad bytes inside a string
        # err.start counts from the string's start; say where it is in the line.
        reason = utf8_error(raw) or f"is not valid UTF-8 ({err.reason})"
        return InputLine(line=line, digest=digest, task=None, reason=reason)
    twice = _duplicate_field(raw, decoded)
    if twice:
        reason = "is given twice in this line: only one value would be sent"
        return InputLine(line=line, digest=digest, task=None, field=twice, reason=reason)
    return InputLine(line=line, digest=digest, task=task)


def refused(
    err: msgspec.ValidationError | TaskRuleError, line: int, digest: bytes, complete: Completer
) -> InputLine:
    """A record whose values the Task or the engine's rules refuse: the field, and why."""
    if isinstance(err, TaskRuleError):
        field, reason = complete.rule_rejection(err)
    else:
        field, reason = rejection(err)
    return InputLine(line=line, digest=digest, task=None, field=field, reason=reason)


def _take_engine(
    raw: bytes, line: int, digest: bytes, complete: Completer
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
_JSON_SPACE: Final = b" \t\r\n"
_astuple = msgspec.structs.astuple


def _duplicate_field(raw: bytes, decoded: Task) -> str:
    """The first field named twice in ``raw`` ("" if none), ``decoded`` being what it
    decoded to before completion: JSON parsers, msgspec included, keep the last value
    silently, and a dropped value must not go unnoticed.

    The scan for keys is the slow part of a line, so it runs only when a count cannot rule
    a repeat out. Every key of ``raw`` (``decoded`` has only known, quote-free names) ends
    in a colon outside strings, and in a '":' once JSON's whitespace is taken out; each
    field ``decoded`` holds is a distinct top-level key, and each message_chain item holds
    two more. So when the count is no more than that, no top-level key repeats."""
    values = _astuple(decoded)
    chain = decoded.message_chain
    needed = len(values) - values.count(None) + (2 * len(chain) if chain else 0)
    if raw.count(b":") <= needed or raw.translate(None, _JSON_SPACE).count(b'":') <= needed:
        return ""
    keys: list[bytes] = [k for k in _KEY.findall(raw) if k not in _ITEM_KEYS]
    if len(keys) == len(set(keys)):
        return ""
    seen: set[bytes] = set()
    for k in keys:
        if k in seen:
            return k.decode()
        seen.add(k)
    return ""
