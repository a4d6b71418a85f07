"""Bad input explained in words: a msgspec error about one task as (field, reason), and a
JSON syntax error as what a person fixing their input file needs to read (with the byte
offset in the line). The wording is the contract: tests and docs quote it.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from llmtasks._task import explain

_AT = re.compile(r" - at `\$\.?([^`]+)`")


def rejection(err: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """(field, reason) of a msgspec error about one task, said for a person."""
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


def utf8_error(raw: bytes) -> str | None:
    """Where ``raw`` stops being UTF-8, or None when it is UTF-8."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 (byte {exc.start})"
    return None
