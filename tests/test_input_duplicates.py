"""The duplicate-key check's shortcut (a colon count instead of a scan for keys) answers
exactly as the full scan does, on any line that decodes to a task."""

from __future__ import annotations

import json
import re

import hypothesis.strategies as st
import msgspec
from hypothesis import given, settings

from llmtasks._decode import _duplicate_field, decode_user_task
from llmtasks._task import Task

_KEY = re.compile(rb'"([A-Za-z_]+)"\s*:')


def _full_scan(raw: bytes) -> str:
    """The check as it was before the shortcut: every key of the line, in order."""
    keys = [k for k in _KEY.findall(raw) if k not in (b"role", b"message")]
    seen: set[bytes] = set()
    for k in keys:
        if k in seen:
            return k.decode()
        seen.add(k)
    return ""


_space = st.sampled_from(["", " ", "  ", "\t", "\n", "\r\n"])
# Text that looks like JSON keys, colons and escapes, so a count can be fooled if it is wrong.
_text = st.one_of(
    st.text(alphabet="ab c", max_size=8),
    st.text(alphabet=st.sampled_from(list('ab:" \\\t{}tag')), max_size=12),
)
_values = {
    "user_prompt": _text.filter(bool),
    "model_name": _text,
    "system_message": _text,
    "tag": _text,
    "postback_url": st.sampled_from(["https://x.test/$id", "x"]),
    "max_output_tokens": st.sampled_from([512, 512.0, 100]),
    "temperature": st.sampled_from([0.5, 1]),
    "web_search": st.booleans(),
    "message_chain": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "ai"]), "message": _text}),
        max_size=3,
    ),
}


@st.composite
def _line(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.sampled_from(sorted(_values)), min_size=1, max_size=8, unique=True))
    if draw(st.booleans()):  # one field twice, anywhere
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(names)))
    parts = []
    for name in names:
        none = name != "user_prompt" and draw(st.integers(0, 4)) == 0
        value = None if none else draw(_values[name])
        encoded = json.dumps(value, ensure_ascii=draw(st.booleans()))
        parts.append(f'{draw(_space)}"{name}"{draw(_space)}:{draw(_space)}{encoded}')
    return ("{" + ",".join(parts) + draw(_space) + "}").encode()


@settings(max_examples=1500, deadline=None)
@given(_line())
def test_the_shortcut_agrees_with_the_full_scan(raw: bytes) -> None:
    try:
        decoded = decode_user_task(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return  # only a line that decodes reaches the check
    assert isinstance(decoded, Task)
    assert _duplicate_field(raw, decoded) == _full_scan(raw)


def test_examples_on_both_sides_of_the_shortcut() -> None:
    for raw, want in [
        (b'{"user_prompt": "a: b", "model_name": "m"}', ""),
        (b'{"user_prompt" : "a", "user_prompt" :"b"}', "user_prompt"),
        (b'{"tag": null, "user_prompt": "a", "tag": null}', "tag"),
        (b'{"user_prompt": "\\"tag\\": x", "tag": "t"}', ""),
        (
            b'{"user_prompt": "a", "message_chain": [{"role": "ai", "message": "m"}], "tag": "1",'
            b' "tag": "2"}',
            "tag",
        ),
        (
            b'{"user_prompt": "a", "message_chain": '
            b'[{"role": "ai", "role": "user", "message": ""}]}',
            "",
        ),
    ]:
        assert _duplicate_field(raw, decode_user_task(raw)) == want == _full_scan(raw), raw
