"""The input readers: every physical record gives exactly one InputLine, bad ones say why."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from llmtasks import _lines
from llmtasks._errors import ConfigError, InputError
from llmtasks._input import InputLine, detect_format, read_lines
from llmtasks._task import ChainMessage, StrictTask, Task

MODEL = "gpt-4o-mini"


def blake(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=8).digest()


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read(path: str, **kw: object) -> list[InputLine]:
    return list(read_lines(path, **kw))  # type: ignore[arg-type]


def outcome(il: InputLine) -> tuple[int, str, str] | tuple[int, Task]:
    """(line, field, reason) for a rejection or a skip, (line, task) for a task."""
    if il.task is not None:
        return il.line, il.task
    return il.line, il.field, il.reason


def task(prompt: str, model: str = MODEL, **fields: object) -> StrictTask:
    return msgspec.convert({"user_prompt": prompt, "model_name": model, **fields}, StrictTask)


# --- detect_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.jsonl", "jsonl"),
        ("dir.x/a.NDJSON", "jsonl"),
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("prompts.txt", "text"),
        ("-", "jsonl"),
    ],
)
def test_detect_format_from_suffix(path: str, expected: str) -> None:
    assert detect_format(path, None) == expected


def test_detect_format_explicit_wins() -> None:
    assert detect_format("a.jsonl", "csv") == "csv"
    assert detect_format("-", "text") == "text"
    assert detect_format("weird.dat", "jsonl") == "jsonl"


def test_detect_format_unknown_suffix_names_the_file() -> None:
    with pytest.raises(InputError, match=r"^prompts\.json: .*suffix '\.json'.*--format"):
        detect_format("prompts.json", None)
    with pytest.raises(InputError, match=r"^prompts: .*no suffix"):
        detect_format("prompts", None)


def test_detect_format_unknown_format() -> None:
    with pytest.raises(ConfigError, match="'xml'"):
        detect_format("a.jsonl", "xml")


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_good_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        b'{"user_prompt": "hello", "model_name": "gpt-4o"}',  # 1
        b'{"user_prompt": "x", "modle_name": "gpt-4o"}',  # 2 typo
        b'{"user_prompt": 5, "model_name": "gpt-4o"}',  # 3 wrong type
        b'{"user_prompt": "x", "model_name": "gpt-4o"',  # 4 broken JSON
        b'["user_prompt"]',  # 5 not an object
        b"",  # 6 blank
        b"   \t",  # 7 whitespace only
        b'{"user_prompt": "x", "model_name": "gpt-4o", "max_output_tokens": 5}',  # 8 rule
        b'{"user_prompt": "x", "model_name": "o1", "temperature": 0.5}',  # 9 rule
        b'{"user_prompt": "x", "model_name": "gpt-4o", "temperature": 2.5}',  # 10 range
        b'{"user_prompt": "", "model_name": "gpt-4o"}',  # 11 empty prompt
        b'{"model_name": "gpt-4o", "message_chain": [{"role": "bot", "message": "m"}],'
        b' "user_prompt": "q"}',  # 12 nested
        b'{"user_prompt": "q", "model_name": "gpt-4o", "message_chain": [{"role": "user",'
        b' "message": "m", "extra": 1}]}',  # 13 nested unknown field
        b'{"user_prompt": "' + b"a" * 501 + b'", "model_name": "gpt-4o"}',  # 14 too long
        b'{"user_prompt": "caf\xc3\xa9", "model_name": "gpt-4o", "tag": "t1",'
        b' "web_search": true}',  # 15 fine
        b'"just a string"',  # 16
        b'{"user_prompt": "x"}',  # 17 no model, no default
        b'{"user_prompt": "x", "model_name": "gpt-4o"} {}',  # 18 trailing data
    ]
    path = write(tmp_path, "in.jsonl", b"\n".join(lines) + b"\n")
    got = read(path)
    assert [il.line for il in got] == list(range(1, len(lines) + 1))
    assert [il.digest for il in got] == [blake(raw) for raw in lines]
    assert [outcome(il) for il in got] == [
        (1, task("hello", "gpt-4o")),
        (2, "modle_name", "unknown field"),
        (3, "user_prompt", "must be a string, got an integer"),
        (
            4,
            "",
            "is not valid JSON: the line ends (byte 43) before the value is complete: a "
            "closing quote, } or ] is missing",
        ),
        (5, "", "must be a JSON object of task fields, got a list"),
        (6, "", "blank line"),
        (7, "", "blank line"),
        (8, "max_output_tokens", "must be 16..4096 for model 'gpt-4o'"),
        (9, "temperature", "is not supported by reasoning model 'o1'"),
        (10, "temperature", "must be <= 2.0"),
        (11, "user_prompt", "is required"),
        (12, "message_chain[0].role", "Invalid enum value 'bot'"),
        (13, "message_chain[0].extra", "unknown field"),
        (14, "user_prompt", "must be at most 500 characters long"),
        (15, task("café", "gpt-4o", tag="t1", web_search=True)),
        (16, "", "must be a JSON object of task fields, got a string"),
        (17, "model_name", "is required (set model_name in the input or give --model)"),
        (
            18,
            "",
            "is not valid JSON: more text follows the end of the JSON value at byte 45 (one "
            "object per line)",
        ),
    ]
    assert [il.skipped for il in got] == [i in (6, 7) for i in range(1, 19)]
    assert isinstance(got[0].task, StrictTask)


def test_jsonl_default_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "in.jsonl",
        b'{"user_prompt": "a"}\n'
        b'{"user_prompt": "b", "model_name": "claude-x"}\n'
        b'{"user_prompt": "c", "max_output_tokens": 100}\n'
        b'{"user_prompt": "d", "model_name": ""}\n',
    )
    got = read(path, default_model="o3-mini")
    assert [outcome(il) for il in got] == [
        (1, task("a", "o3-mini")),
        (2, task("b", "claude-x")),
        # The default model's rules apply to the line's fields.
        (3, "max_output_tokens", "must be 1024..4096 for reasoning model 'o3-mini'"),
        (4, task("d", "o3-mini")),
    ]


def test_jsonl_invalid_utf8(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "in.jsonl",
        b'{"user_prompt": "bad \xff here", "model_name": "m"}\n'
        b'\xfe{"user_prompt": "x", "model_name": "m"}\n'
        b'{"user_prompt": "ok", "model_name": "m"}\n',
    )
    assert [outcome(il) for il in read(path)] == [
        (1, "", "is not valid UTF-8 (byte 21)"),
        (2, "", "is not valid UTF-8 (byte 0)"),
        (3, task("ok", "m")),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("final", [True, False])
def test_jsonl_line_endings_bom_and_missing_final_newline(
    tmp_path: Path, ending: bytes, bom: bytes, final: bool
) -> None:
    lines = [b'{"user_prompt": "a", "model_name": "m"}', b"", b'{"user_prompt": "b"}']
    data = bom + ending.join(lines) + (ending if final else b"")
    got = read(write(tmp_path, "in.jsonl", data), default_model="m")
    assert [outcome(il) for il in got] == [
        (1, task("a", "m")),
        (2, "", "blank line"),
        (3, task("b", "m")),
    ]
    # The digest never depends on the line ending or the BOM.
    assert [il.digest for il in got] == [blake(raw) for raw in lines]


def test_jsonl_huge_line_is_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    huge = b'{"user_prompt": "' + b"x" * 300_000 + b'\r", "model_name": "m"}'
    lines = [b'{"user_prompt": "a", "model_name": "m"}', huge, b'{"user_prompt": "b"}']
    path = write(tmp_path, "in.jsonl", b"\r\n".join(lines))
    got = read(path, default_model="m", max_line_bytes=1000)
    assert [outcome(il) for il in got] == [
        (1, task("a", "m")),
        (2, "", f"is longer than 1,000 bytes ({len(huge):,} bytes)"),
        (3, task("b", "m")),
    ]
    assert got[1].digest == blake(huge)


@pytest.mark.parametrize("size", [999, 1000, 1001, 1002, 1003, 1004])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
@pytest.mark.parametrize("first", [True, False])
def test_line_length_limit_is_exact(tmp_path: Path, size: int, ending: bytes, first: bool) -> None:
    line = b"y" * size
    before = b"" if first else b"\xef\xbb\xbfshort\n"
    got = read(
        write(tmp_path, "in.txt", before + line + ending), default_model="m", max_line_bytes=1000
    )
    last = got[-1]
    assert last.line == len(got) == (1 if first else 2)
    assert last.digest == blake(line)
    if size <= 1000:
        assert last.field == "user_prompt"  # too long for a prompt, but read whole
    else:
        assert last.reason == f"is longer than 1,000 bytes ({size:,} bytes)"


# --- text -------------------------------------------------------------------------------------


def test_text_prompts_blank_lines_and_limits(tmp_path: Path) -> None:
    data = (
        "first prompt\r\n"
        "\n"
        "   \n"
        "  spaces kept  \n" + "z" * 501 + "\n" + "é" * 500 + "\n"
        "last, no newline"
    ).encode()
    got = read(write(tmp_path, "in.txt", data), default_model=MODEL)
    assert [outcome(il) for il in got] == [
        (1, task("first prompt")),
        (2, "", "blank line"),
        (3, "", "blank line"),
        (4, task("  spaces kept  ")),
        (5, "user_prompt", "must be at most 500 characters long"),
        (6, task("é" * 500)),
        (7, task("last, no newline")),
    ]


def test_text_without_model_rejects_every_prompt(tmp_path: Path) -> None:
    got = read(write(tmp_path, "in.txt", b"a\n\nb\n"))
    assert [outcome(il) for il in got] == [
        (1, "model_name", "is required (give --model)"),
        (2, "", "blank line"),
        (3, "model_name", "is required (give --model)"),
    ]


def test_text_invalid_utf8(tmp_path: Path) -> None:
    got = read(write(tmp_path, "in.txt", b"ok\nbad \xc3(\n"), default_model="m")
    assert [outcome(il) for il in got] == [
        (1, task("ok", "m")),
        (2, "user_prompt", "is not valid UTF-8 (byte 4)"),
    ]


# --- CSV --------------------------------------------------------------------------------------


def test_csv_good_and_bad_rows(tmp_path: Path) -> None:
    data = textwrap.dedent(
        '''\
        user_prompt,model_name,max_output_tokens,temperature,web_search,message_chain,tag
        plain,gpt-4o,,,,,
        "multi
        line, with comma",gpt-4o,100,0.5,true,,t1
        x,gpt-4o,abc,,,,
        x,gpt-4o,,hot,,,
        x,gpt-4o,,,maybe,,
        x,gpt-4o,,,0,"[{""role"": ""user"", ""message"": ""earlier""}]",
        x,gpt-4o,,,,"[{""role"": ""user""",
        x,gpt-4o,,,,"[{""role"": ""x"", ""message"": ""m""}]",
        too,few
        ,,,,,,
        x,gpt-4o,5,,,,
        "bad"quote,gpt-4o,,,,,
        x,,,,,,
        ,gpt-4o,,,,,
        x,o1,,1,,,
        x,gpt-4o,1_000,,,,
        '''
    ).encode()
    got = read(write(tmp_path, "in.csv", data))
    assert [outcome(il) for il in got] == [
        (2, task("plain", "gpt-4o")),
        (
            3,
            task(
                "multi\nline, with comma",
                "gpt-4o",
                max_output_tokens=100,
                temperature=0.5,
                web_search=True,
                tag="t1",
            ),
        ),
        (5, "max_output_tokens", "must be an integer, got 'abc'"),
        (6, "temperature", "must be a number, got 'hot'"),
        (7, "web_search", "must be true, false, 1 or 0, got 'maybe'"),
        (
            8,
            task(
                "x",
                "gpt-4o",
                web_search=False,
                message_chain=[{"role": "user", "message": "earlier"}],
            ),
        ),
        (
            9,
            "message_chain",
            "must be a JSON list of messages: is not valid JSON: the cell ends (byte 16) before "
            "the value is complete: a closing quote, } or ] is missing",
        ),
        (10, "message_chain[0].role", "Invalid enum value 'x'"),
        (11, "", "has 2 cells but the header has 7 columns"),
        (12, "", "blank line"),
        (13, "max_output_tokens", "must be 16..4096 for model 'gpt-4o'"),
        (14, "", "is not valid CSV: ',' expected after '\"'"),
        (15, "model_name", "is required (set model_name in the input or give --model)"),
        (16, "user_prompt", "is required"),
        (17, "temperature", "is not supported by reasoning model 'o1'"),
        (18, "max_output_tokens", "must be an integer, got '1_000'"),
    ]
    assert got[5].task is not None
    assert got[5].task.message_chain == [ChainMessage(role="user", message="earlier")]
    # The digest of a multi-line record covers all of its lines.
    assert got[1].digest == blake(b'"multi\nline, with comma",gpt-4o,100,0.5,true,,t1')


def test_csv_default_model_header_spaces_and_crlf_bom(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf user_prompt , tag\r\n"a\r\nb",t\r\nc,\r\n\r\n"unterminated'
    got = read(write(tmp_path, "in.csv", data), default_model=MODEL)
    assert [outcome(il) for il in got] == [
        (2, task("a\nb", tag="t")),
        (4, task("c")),
        (5, "", "blank line"),
        (6, "", "is not valid CSV: unexpected end of data"),
    ]
    assert got[0].digest == blake(b'"a\nb",t')


def test_csv_invalid_utf8_blames_the_column(tmp_path: Path) -> None:
    data = b"model_name,user_prompt\nm,fine\nm,bad\xff\nm,ok\n"
    assert [outcome(il) for il in read(write(tmp_path, "in.csv", data))] == [
        (2, task("fine", "m")),
        (3, "user_prompt", "is not valid UTF-8 (line 3, byte 5)"),
        (4, task("ok", "m")),
    ]


def test_csv_huge_record_is_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    huge_line = b"x" * 5000 + b",m"
    unterminated = b'"never closed\n' + b"more\n" * 300
    data = b"user_prompt,model_name\na,m\n" + huge_line + b"\nb,m\n" + unterminated
    got = read(write(tmp_path, "in.csv", data), max_line_bytes=1000)
    too_long = "is longer than 1,000 bytes"
    # The open quote on line 5 swallows lines until the record passes 1000 bytes, which is
    # on line 203 (13 + 198 * 5 > 1000); reading resumes on line 204, one record a line.
    assert [(il.line, il.reason.split(" (")[0]) for il in got] == [
        (2, ""),
        (3, too_long),
        (4, ""),
        (5, too_long),
        *[(n, "has 1 cell but the header has 2 columns") for n in range(204, 306)],
    ]
    assert got[1].digest == blake(huge_line)
    assert got[1].reason == f"{too_long} ({len(huge_line):,} bytes)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello,world\nfoo,bar\n", r"unknown column 'hello' in the header"),
        (b"user_prompt,modle_name\nx,y\n", r"unknown column 'modle_name'"),
        (b"user_prompt;model_name\nx;y\n", r"comma-separated"),
        (b"\nuser_prompt\nx\n", r"header line is empty"),
        (b",\nx,y\n", r"header line is empty"),
        (b"model_name\nm\n", r"no user_prompt column"),
        (b"user_prompt,tag,user_prompt\n", r"'user_prompt' appears twice"),
        (b"user_prompt,\nx,\n", r"column 2 of the header has no name"),
        (b'"user_prompt\n', r"header line is not valid CSV"),
        (b"user_prompt,tag\xff\n", r"header is not valid UTF-8"),
    ],
)
def test_csv_bad_header_fails_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, "in.csv", data)
    with pytest.raises(InputError, match=message) as info:
        read_lines(path)  # raised at once, not on first iteration
    assert str(info.value).startswith(f"{path}: ")


def test_every_task_field_can_be_a_csv_column(tmp_path: Path) -> None:
    # claude has every field (use_reasoning is not chat_gpt's).
    header = ",".join(StrictTask.__struct_fields__)
    cells = {
        "user_prompt": "q",
        "model_name": "claude-sonnet-4",
        "max_output_tokens": "100",
        "temperature": "0.7",
        "top_p": ".5",
        "system_message": "be brief",
        "message_chain": '"[{""role"": ""ai"", ""message"": ""hi""}]"',
        "web_search": "TRUE",
        "use_reasoning": "false",
        "force_web_search": "1",
        "web_search_country_iso_code": "US",
        "web_search_city": "Boston",
        "tag": "t",
        "postback_url": "https://example.com/p",
        "pingback_url": "https://example.com/q",
    }
    assert set(cells) == set(StrictTask.__struct_fields__)
    row = ",".join(cells[f] for f in StrictTask.__struct_fields__)
    (il,) = read(write(tmp_path, "in.csv", f"{header}\n{row}\n".encode()), engine="claude")
    assert il.task == task(
        "q",
        "claude-sonnet-4",
        max_output_tokens=100,
        temperature=0.7,
        top_p=0.5,
        system_message="be brief",
        message_chain=[{"role": "ai", "message": "hi"}],
        web_search=True,
        use_reasoning=False,
        force_web_search=True,
        web_search_country_iso_code="US",
        web_search_city="Boston",
        tag="t",
        postback_url="https://example.com/p",
        pingback_url="https://example.com/q",
    )


# --- every format -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["in.jsonl", "in.csv", "in.txt"])
@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf"])
def test_empty_input_has_no_lines_and_no_error(tmp_path: Path, name: str, data: bytes) -> None:
    assert read(write(tmp_path, name, data), default_model="m") == []


@pytest.mark.parametrize("name", ["in.jsonl", "in.csv", "in.txt"])
def test_utf16_input_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "user_prompt\nhello\n".encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16"):
        read_lines(path)


def test_unreadable_inputs_raise_input_error_naming_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=rf"^{missing}: no such file"):
        read_lines(missing)
    directory = tmp_path / "dir.jsonl"
    directory.mkdir()
    with pytest.raises(InputError, match=rf"^{directory}: is a directory"):
        read_lines(str(directory))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.jsonl", b"{}\n")
    os.chmod(path, 0)
    with pytest.raises(InputError, match="permission denied"):
        read_lines(path)


def test_a_reader_that_is_never_iterated_does_not_leak_its_file(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", b"{}\n{}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = read_lines(path)
        del reader
        half = read_lines(path)
        next(half)
        del half
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_close_releases_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", b"{}\n{}\n")
    reader = read_lines(path)
    assert isinstance(reader, Iterator)
    next(reader)
    reader.close()  # type: ignore[attr-defined]
    assert list(reader) == []


# --- stdin ------------------------------------------------------------------------------------


def test_stdin_is_jsonl_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'\xef\xbb\xbf{"user_prompt": "a"}\r\n\n{"user_prompt": 1}'
    stdin = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", stdin)
    got = list(read_lines("-", default_model="m"))
    assert [outcome(il) for il in got] == [
        (1, task("a", "m")),
        (2, "", "blank line"),
        (3, "user_prompt", "must be a string, got an integer"),
    ]
    assert not stdin.closed  # not ours to close


def test_stdin_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"user_prompt\nq\n")))
    assert [outcome(il) for il in read_lines("-", fmt="csv", default_model="m")] == [
        (2, task("q", "m"))
    ]


def test_stdin_from_a_real_pipe() -> None:
    code = (
        "import sys\n"
        "from llmtasks._input import read_lines\n"
        "for il in read_lines('-', fmt='text', default_model='m'):\n"
        "    print(il.line, il.skipped, il.task.user_prompt if il.task else il.reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=b"one\r\n\ntw\xc3\xb6",
        capture_output=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.decode().splitlines() == ["1 False one", "2 True blank line", "3 False twö"]


# --- memory -----------------------------------------------------------------------------------


def test_memory_stays_flat(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    with path.open("wb") as f:
        for i in range(100_000):
            f.write(b'{"user_prompt": "prompt number %d", "model_name": "m"}\n' % i)
    tracemalloc.start()
    try:
        n = sum(1 for il in read_lines(str(path)) if il.task is not None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_000
    # Holding the lines would take tens of megabytes; streaming takes the read buffer.
    assert peak < 2_000_000


# --- fuzzing ----------------------------------------------------------------------------------

VALID = [
    b'{"user_prompt": "hi", "model_name": "gpt-4o"}',
    b'{"user_prompt": "hi"}',
    b'{"user_prompt": "x", "max_output_tokens": 100}',
    b'{"message_chain": [{"role": "ai", "message": "m"}], "user_prompt": "\\u00e9"}',
    b"plain prompt",
    b"",
    b"  ",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\r",
    b'"',
    b",",
]
fragments = st.lists(st.one_of(st.sampled_from(VALID), st.binary(max_size=40)), max_size=12).map(
    b"".join
)
endings = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
documents = st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(fragments, endings), max_size=15).map(
        lambda parts: b"".join(a + b for a, b in parts)
    ),
)


def physical_lines(data: bytes, *, at_start: bool = True) -> list[bytes]:
    """The reference split: b"\\n" ends a line, b"\\r\\n" too, a final line may lack it."""
    if at_start and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data:
        return []
    *ended, last = data.split(b"\n")
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in ended]
    return [*lines, last] if last else lines


def check_states(got: list[InputLine]) -> None:
    for il in got:
        assert len(il.digest) == 8
        if il.task is not None:
            assert not il.skipped and not il.reason and not il.field
            assert il.task.user_prompt and il.task.model_name
        elif il.skipped:
            assert il.reason == "blank line"
        else:
            assert il.reason


fuzz = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@fuzz
@given(data=documents, fmt=st.sampled_from(["jsonl", "text"]), small=st.booleans())
def test_fuzz_line_formats(tmp_path: Path, data: bytes, fmt: str, small: bool) -> None:
    path = write(tmp_path, "fuzz.in", data)
    limit = 20 if small else 1_000_000
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        with pytest.raises(InputError):
            read_lines(path, fmt=fmt, default_model="m", max_line_bytes=limit)
        return
    # A tiny chunk makes long lines cross many chunk boundaries (and split b"\r\n").
    with mock.patch.object(_lines, "_CHUNK", 3):
        got = read(path, fmt=fmt, default_model="m" if small else None, max_line_bytes=limit)
    expected = physical_lines(data)
    assert [il.line for il in got] == list(range(1, len(expected) + 1))
    assert [il.digest for il in got] == [blake(raw) for raw in expected]
    check_states(got)
    for il, raw in zip(got, expected, strict=True):
        assert il.skipped == (not raw.strip() and len(raw) <= limit)
        if fmt == "text" and il.task is not None:
            assert il.task.user_prompt == raw.decode()


@fuzz
@given(data=documents, small=st.booleans())
def test_fuzz_csv(tmp_path: Path, data: bytes, small: bool) -> None:
    path = write(tmp_path, "fuzz.csv", b"user_prompt,model_name\n" + data)
    limit = 30 if small else 1_000_000
    got = read(path, max_line_bytes=limit)
    n_lines = 1 + len(physical_lines(data, at_start=False))
    numbers = [il.line for il in got]
    assert numbers == sorted(set(numbers))
    assert all(2 <= n <= n_lines for n in numbers)
    check_states(got)
    if b'"' not in data and b"\r" not in data.replace(b"\r\n", b"\n"):
        # Without quotes, every physical line is a record of its own.
        assert numbers == list(range(2, n_lines + 1))


@fuzz
@given(data=st.binary(max_size=200))
def test_fuzz_csv_header(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "fuzz.csv", data)
    try:
        got = read(path, default_model="m", max_line_bytes=50)
    except InputError as err:
        assert str(err).startswith(f"{path}: ")
        return
    check_states(got)
    assert [il.line for il in got] == sorted({il.line for il in got})


# --- the documentation ------------------------------------------------------------------------


def test_examples_in_the_docs_read_as_documented(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "input-formats.md").read_text()
    examples = re.findall(r"```(jsonl|csv|text)\n(.*?)```", doc, re.S)
    assert sorted(kind for kind, _ in examples) == ["csv", "jsonl", "text"]
    suffix = {"jsonl": "jsonl", "csv": "csv", "text": "txt"}
    for kind, body in examples:
        got = read(write(tmp_path, f"example.{suffix[kind]}", body.encode()), default_model=MODEL)
        assert [il for il in got if il.task is None and not il.skipped] == []
        starts = {"jsonl": [1, 2, 3, 4, 5], "csv": [2, 3, 5], "text": [1, 2, 3, 4]}[kind]
        assert [il.line for il in got] == starts


def test_a_field_given_twice_is_rejected_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_bytes(
        b'{"user_prompt": "a", "model_name": "gpt-4o", "user_prompt": "b"}\n'
        b'{"user_prompt": "a", "model_name": "gpt-4o", "tag": "x", "tag"  :  "y"}\n'
        b'{"user_prompt": "say \\"tag\\": twice", "model_name": "gpt-4o", "tag": "t"}\n'
        b'{"user_prompt": "tag", "model_name": "gpt-4o", "tag": "t"}\n'
        b'{"user_prompt": "c", "model_name": "gpt-4o", "message_chain": '
        b'[{"role": "user", "message": "hi"}, {"role": "ai", "message": "hello"}]}\n'
    )
    got = list(read_lines(str(path)))
    assert [(il.field, il.task is None) for il in got] == [
        ("user_prompt", True),
        ("tag", True),
        ("", False),
        ("", False),
        ("", False),
    ]
    assert "given twice" in got[0].reason


# --- whole-number floats in integer fields ---------------------------------------------------


def test_whole_number_floats_are_integers_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path,
        "in.jsonl",
        b'{"user_prompt": "a", "model_name": "gpt-4o", "max_output_tokens": 512.0}\n'
        b'{"user_prompt": "b", "model_name": "gpt-4o", "max_output_tokens": 5.12e2}\n'
        b'{"user_prompt": "c", "model_name": "gpt-4o", "max_output_tokens": 512.5}\n'
        b'{"user_prompt": "d", "model_name": "gpt-4o", "max_output_tokens": 5.0}\n'
        b'{"user_prompt": "e", "model_name": "gpt-4o", "max_output_tokens": 512.0, "x": 1}\n',
    )
    got = read(jsonl)
    assert [outcome(il) for il in got] == [
        (1, task("a", "gpt-4o", max_output_tokens=512)),
        (2, task("b", "gpt-4o", max_output_tokens=512)),
        (3, "max_output_tokens", "must be an integer, got a number"),
        (4, "max_output_tokens", "must be 16..4096 for model 'gpt-4o'"),
        (5, "x", "unknown field"),
    ]
    assert got[0].task is not None and type(got[0].task.max_output_tokens) is int
    # What is POSTed: the integer, not 512.0.
    assert b'"max_output_tokens":512}' in msgspec.json.encode(got[0].task)
    # The digest is of the line as written: a resume compares the same bytes.
    assert got[0].digest == blake(
        b'{"user_prompt": "a", "model_name": "gpt-4o", "max_output_tokens": 512.0}'
    )

    csv_path = write(
        tmp_path,
        "in.csv",
        b"user_prompt,model_name,max_output_tokens\na,gpt-4o,512.0\nb,gpt-4o, 512.5\n"
        b"c,gpt-4o,5.12e2\nd,gpt-4o,nan\n",
    )
    assert [outcome(il) for il in read(csv_path)] == [
        (2, task("a", "gpt-4o", max_output_tokens=512)),
        (3, "max_output_tokens", "must be an integer, got ' 512.5'"),
        (4, task("c", "gpt-4o", max_output_tokens=512)),
        (5, "max_output_tokens", "must be an integer, got 'nan'"),
    ]


# --- JSON decoding errors, in words ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b'{"user_prompt": "\\ud800", "model_name": "gpt-4o"}',
            "is not valid JSON: the escape \\ud800 at byte 17 is a lone high UTF-16 "
            "surrogate, not followed by a low one (\\udc00-\\udfff): it stands for no character "
            "(a character beyond \\uffff is written as a pair, as in \\ud83d\\ude00)",
        ),
        (  # msgspec calls this one "Input data was truncated"
            b'{"user_prompt": "\\ud800"}',
            "is not valid JSON: the escape \\ud800 at byte 17 is a lone high UTF-16 "
            "surrogate, not followed by a low one (\\udc00-\\udfff): it stands for no character "
            "(a character beyond \\uffff is written as a pair, as in \\ud83d\\ude00)",
        ),
        (
            b'{"user_prompt": "ok \\ud83d\\ude00 then \\udc00", "model_name": "gpt-4o"}',
            "is not valid JSON: the escape \\udc00 at byte 38 is a lone low UTF-16 "
            "surrogate, not preceded by a high one (\\ud800-\\udbff): it stands for no "
            "character (a character beyond \\uffff is written as a pair, as in \\ud83d\\ude00)",
        ),
        (
            b'{"user_prompt": "a\\u12", "model_name": "gpt-4o"}',
            "is not valid JSON: a \\u escape at byte 18 needs four hex digits (as in \\u00e9)",
        ),
        (
            b'{"user_prompt": "a\\qb", "model_name": "gpt-4o"}',
            "is not valid JSON: the escape \\q at byte 18 is not one JSON knows: after a \\ "
            'come only " \\ / b f n r t or u (write \\\\ for a backslash)',
        ),
        (
            b'{"user_prompt": "a\tb", "model_name": "gpt-4o"}',
            "is not valid JSON: a control character (a tab) at byte 18: inside a string it "
            "must be written as \\t",
        ),
        (
            b'{"user_prompt": "a\x01b", "model_name": "gpt-4o"}',
            "is not valid JSON: a control character (U+0001) at byte 18: inside a string it "
            "must be written as \\u0001",
        ),
        (
            b'{"user_prompt": "a", "model_name": "gpt-4o"} x',
            "is not valid JSON: more text follows the end of the JSON value at byte 45 (one "
            "object per line)",
        ),
        (
            b'{"user_prompt": "a", "model_name": "gpt-4o"}{}',
            "is not valid JSON: more text follows the end of the JSON value at byte 44 (one "
            "object per line)",
        ),
        (
            b'{"user_prompt": "a", "model_name": "gpt-4o"',
            "is not valid JSON: the line ends (byte 43) before the value is complete: a "
            "closing quote, } or ] is missing",
        ),
        (
            b'{"user_prompt": "a", "model_name": "gpt-4o",}',
            "is not valid JSON: a comma before the closing } at byte 44: remove it",
        ),
        (
            b'{"user_prompt" "a", "model_name": "gpt-4o"}',
            "is not valid JSON: a ':' is missing after the field name at byte 15",
        ),
        (
            b'{"user_prompt": "a" "model_name": "gpt-4o"}',
            "is not valid JSON: a ',' or } is missing at byte 20",
        ),
        (
            b"{'user_prompt': 'a'}",
            "is not valid JSON: a field name at byte 1 is not in double quotes",
        ),
        (
            b"{\"user_prompt\": 'a'}",
            "is not valid JSON: a single quote at byte 16: JSON puts names and strings in "
            "double quotes",
        ),
        (
            b'{"user_prompt": \xe2\x80\x9ca\xe2\x80\x9d}',
            "is not valid JSON: a typographic quote \u201c at byte 16: JSON needs plain double "
            'quotes (")',
        ),
        (
            b'{"user_prompt": tru}',
            "is not valid JSON: unexpected text 'tru' at byte 16: strings need double quotes, "
            "and true, false and null are lower case",
        ),
        (
            b'{"user_prompt": "a", "temperature": NaN}',
            "is not valid JSON: NaN and Infinity (byte 36) are not JSON numbers",
        ),
        (
            b'{"user_prompt": "a", "max_output_tokens": 0100}',
            "is not valid JSON: an invalid number near byte 43 (JSON numbers have no leading "
            "zeros and a digit on both sides of '.')",
        ),
        (
            b'{"user_prompt": "a", "max_output_tokens": +100}',
            "is not valid JSON: a number at byte 42 starts with '+': JSON numbers start with "
            "a digit or -",
        ),
        (b"// a comment", "is not valid JSON: a comment at byte 0: JSON has no comments"),
        (b'{"user_prompt": "caf\xe9"}', "is not valid UTF-8 (byte 20)"),
    ],
)
def test_json_errors_in_words_with_the_byte_offset(tmp_path: Path, raw: bytes, reason: str) -> None:
    (got,) = read(write(tmp_path, "in.jsonl", raw + b"\n"))
    assert (got.task, got.field, got.reason) == (None, "", reason)


def test_an_escaped_backslash_is_not_a_surrogate_escape(tmp_path: Path) -> None:
    (got,) = read(write(tmp_path, "in.jsonl", b'{"user_prompt": "\\\\ud800", "model_name": "m"}'))
    assert got.task is not None and got.task.user_prompt == "\\ud800"


def test_lines_and_the_replies_to_them_are_left_out_of_the_cyclic_gc(tmp_path: Path) -> None:
    # One InputLine and one TaskReply per task: msgspec tracks a Struct that holds another
    # Struct, and these two alone set off most of a run's collections. Neither can be in a
    # cycle, so they are built untracked.
    from llmtasks._wire import decode_envelope

    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"user_prompt": "a", "model_name": "gpt-4.1-mini",'
        ' "message_chain": [{"role": "user", "message": "hi"}]}\n'
    )
    [line] = list(read_lines(str(src), default_model=None))
    assert line.task is not None and line.task.message_chain
    assert not gc.is_tracked(line)
    env = decode_envelope(
        b'{"status_code": 20000, "tasks": [{"status_code": 20100, "id": "x",'
        b' "data": {"tag": "t"}}]}'
    )
    assert env.tasks is not None and env.tasks[0].data is not None
    assert env.tasks[0].data.tag == "t" and not gc.is_tracked(env.tasks[0])
