"""Flattening the documented task_get result, and the export tables built from a ledger.

The envelopes here are written by hand from the API digest's description of ``task_get``
(2026): message items with sections and annotations, reasoning items, fan_out_queries,
gemini's redirect urls with ``direct_url``, and fields the digest does not name.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmtasks._errors import InputError
from llmtasks._export import CITATION_COLUMNS, RESULT_COLUMNS, export_table
from llmtasks._flatten import citation_domain, flatten, registered_domain
from llmtasks._input import record_digest
from llmtasks._ledger import Ledger, NewLine, ResultRow
from llmtasks._llm_result import decode_result
from llmtasks._receipt import Receipt

ANSWER_1 = "E-bikes from Brand A lead in Europe. Brand B is close behind."
ANSWER_2 = "Prices start at 1,500 EUR."

CHAT_GPT_RESULT: dict[str, Any] = {
    "model_name": "gpt-4.1-mini-2025-04-14",
    "input_tokens": 24,
    "output_tokens": 310,
    "reasoning_tokens": 0,
    "web_search": True,
    "money_spent": 0.0011,
    "datetime": "2026-11-25 10:03:12 +00:00",
    "fan_out_queries": ["best e-bike brands europe 2026", "e-bike market share"],
    "a_field_added_later": {"nested": [1, 2, 3]},
    "items": [
        {
            "type": "reasoning",
            "sections": [{"type": "summary_text", "text": "The user asks about brands."}],
        },
        {
            "type": "message",
            "sections": [
                {
                    "type": "text",
                    "text": ANSWER_1,
                    "annotations": [
                        {
                            "title": "BBC News",
                            "url": "https://www.bbc.co.uk/news/ebikes?utm=1",
                            "start_index": 0,
                            "end_index": 35,
                        },
                        {
                            "title": "Brand B",
                            "url": "http://shop.brand-b.com:8080/x",
                            "start_index": 37,
                            "end_index": 61,
                        },
                    ],
                },
                {
                    "type": "text",
                    "text": ANSWER_2,
                    "annotations": [
                        {
                            "title": "BBC again",
                            "url": "https://bbc.co.uk/prices",
                            "start_index": 0,
                            "end_index": 26,
                        }
                    ],
                },
            ],
        },
    ],
}

GEMINI_RESULT: dict[str, Any] = {
    "model_name": "gemini-2.5-flash",
    "input_tokens": 10,
    "output_tokens": 20,
    "reasoning_tokens": None,
    "web_search": True,
    "money_spent": None,
    "datetime": "2026-11-25 10:04:00 +00:00",
    "fan_out_queries": None,
    "items": [
        {
            "type": "message",
            "sections": [
                {
                    "type": "text",
                    "text": "Wikipedia says so.",
                    "annotations": [
                        {
                            "title": "wikipedia.org",
                            "url": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/AbC",
                            "direct_url": "https://en.wikipedia.org/wiki/Electric_bicycle",
                            "start_index": 0,
                            "end_index": 9,
                        },
                        {
                            "title": "reuters.com",
                            "url": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/XyZ",
                            "start_index": 10,
                            "end_index": 18,
                        },
                        {
                            "title": "A page with no host name in its title",
                            "url": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/Q",
                            "start_index": 5,
                            "end_index": 500,
                        },
                    ],
                }
            ],
        }
    ],
}

NO_SEARCH_RESULT: dict[str, Any] = {
    "model_name": "claude-sonnet-4-20250514",
    "input_tokens": 12.0,  # an integer sent as a float: still read
    "output_tokens": 40,
    "web_search": False,
    "money_spent": 0.0002,
    "datetime": "2026-11-25 10:05:00 +00:00",
    "items": [
        {"type": "message", "sections": [{"type": "text", "text": "No.", "annotations": None}]}
    ],
}


def _decode(result: dict[str, Any]) -> Any:
    return decode_result(orjson.dumps([result]))


def test_answer_reasoning_counts_and_citations_of_a_chat_gpt_result() -> None:
    flat = flatten(_decode(CHAT_GPT_RESULT))
    assert flat.model_name == "gpt-4.1-mini-2025-04-14"
    assert flat.answer_text == f"{ANSWER_1}\n\n{ANSWER_2}"
    assert flat.reasoning_text == "The user asks about brands."
    assert (flat.input_tokens, flat.output_tokens, flat.reasoning_tokens) == (24, 310, 0)
    assert flat.web_search is True and flat.money_spent == 0.0011
    assert flat.fan_out_queries == ["best e-bike brands europe 2026", "e-bike market share"]
    assert [c.position for c in flat.citations] == [1, 2, 3]
    assert [c.domain for c in flat.citations] == ["bbc.co.uk", "brand-b.com", "bbc.co.uk"]
    assert flat.cited_domains == ["bbc.co.uk", "brand-b.com"]  # unique, first-cited order
    # Each span is cut from its own section's text.
    assert flat.citations[0].cited_text == ANSWER_1[0:35] == "E-bikes from Brand A lead in Europe"
    assert flat.citations[1].cited_text == "Brand B is close behind."
    assert flat.citations[2].cited_text == ANSWER_2[:26]
    assert flat.citations[2].title == "BBC again"


def test_gemini_redirects_count_as_their_source_not_as_google() -> None:
    flat = flatten(_decode(GEMINI_RESULT))
    first, second, third = flat.citations
    assert first.domain == "wikipedia.org" and first.direct_url.endswith("Electric_bicycle")
    assert first.url.startswith("https://vertexaisearch.cloud.google.com/")
    assert second.domain == "reuters.com"  # no direct_url: the title names the site
    assert third.domain is None  # neither: unknown, never google.com
    assert third.cited_text is None  # end_index beyond the text
    assert flat.cited_domains == ["wikipedia.org", "reuters.com"]
    assert flat.reasoning_text is None and flat.fan_out_queries is None


def test_no_search_means_no_citations_and_lenient_numbers() -> None:
    flat = flatten(_decode(NO_SEARCH_RESULT))
    assert flat.answer_text == "No." and flat.citations == [] and flat.cited_domains == []
    assert flat.input_tokens == 12 and flat.reasoning_tokens is None


def test_an_annotation_that_carries_its_own_text_keeps_it() -> None:
    result = {
        "items": [
            {
                "type": "message",
                "sections": [
                    {
                        "text": "abcdef",
                        "annotations": [
                            {"url": "https://a.example.org", "start_index": 0, "end_index": 3},
                            {"url": "https://b.example.org", "text": "cde", "start_index": 2},
                        ],
                    }
                ],
            }
        ]
    }
    flat = flatten(_decode(result))
    assert [c.cited_text for c in flat.citations] == ["abc", "cde"]
    assert [c.domain for c in flat.citations] == ["example.org", "example.org"]


def test_nulls_everywhere_and_unknown_items_are_read() -> None:
    result = {"items": [{"type": "web_search_call", "sections": None}, {"type": None}]}
    flat = flatten(_decode(result))
    assert flat.answer_text is None and flat.citations == [] and flat.model_name is None
    assert decode_result(b"null") is None and decode_result(b"[]") is None
    assert flatten(None).answer_text is None


@pytest.mark.parametrize(
    ("url", "domain"),
    [
        ("https://www.bbc.co.uk/news", "bbc.co.uk"),
        ("HTTPS://WWW.Example.COM./a", "example.com"),
        ("https://user:pw@forum.example.com:8443/x", "example.com"),
        ("www.theguardian.com/uk", "theguardian.com"),
        ("https://news.example.com?q=1", "example.com"),
        ("https://news.example.com#top", "example.com"),
        ("https://news.example.com:/", "example.com"),
        ("https://foo.github.io/page", "github.io"),  # ICANN section: github.io is registered
        ("https://xn--80ak6aa92e.com/", "xn--80ak6aa92e.com"),
        ("https://a.b.пример.рф/", "пример.рф"),
        ("http://192.168.1.20:8080/", "192.168.1.20"),
        ("http://[2001:db8::1]/", "2001:db8::1"),
        ("http://localhost:3000/", "localhost"),
        ("https://", None),
        ("http://[bad", None),
    ],
)
def test_registered_domain(url: str, domain: str | None) -> None:
    assert registered_domain(url) == domain


def test_direct_url_wins_over_url() -> None:
    assert citation_domain("https://x.example.com", "https://y.other.org", None) == "other.org"
    assert citation_domain(None, None, "example.com") is None


# -- export tables from a ledger ------------------------------------------------------------


def _ledger_with_results(
    tmp_path: Path, results: list[Any | None], *, engine: str = "gemini"
) -> tuple[Path, Path]:
    """An input file and a ledger in which line i was created and collected with
    ``results[i]`` (None: the task failed on the service)."""
    src = tmp_path / "in.jsonl"
    raw_lines = [
        orjson.dumps({"user_prompt": f"question {i}?", "web_search": i % 2 == 0})
        for i in range(len(results))
    ]
    src.write_bytes(b"".join(r + b"\n" for r in raw_lines))
    path = tmp_path / "in.jsonl.ledger.sqlite"
    ledger = Ledger.open(path, input_name=str(src), engine=engine)
    ledger.add_lines(
        [
            NewLine(i + 1, record_digest(raw), "pending", f"t{i + 1}", b"")
            for i, raw in enumerate(raw_lines)
        ]
    )
    batch = ledger.mark_sending(list(range(1, len(results) + 1)))
    ledger.record(
        batch,
        [
            Receipt(line=i + 1, state="created", tag=f"t{i + 1}", task_id=f"id-{i + 1}", cost=0.01)
            for i in range(len(results))
        ],
        batch_state="done",
        attempts=1,
    )
    ledger.ensure_results()
    ledger.store_results(
        [
            ResultRow(
                task_id=f"id-{i + 1}",
                line=i + 1,
                tag=f"t{i + 1}",
                ok=r is not None,
                status_code=20000 if r is not None else 50000,
                status_message="Ok." if r is not None else "Task failed.",
                result=None
                if r is None
                else (r if isinstance(r, str) else orjson.dumps([r]).decode()),
                via="direct",
            )
            for i, r in enumerate(results)
        ]
    )
    ledger.close()
    return src, path


def _export(path: Path, what: Any, fmt: Any, out: Path, **kw: Any) -> tuple[int, list[str]]:
    warnings: list[str] = []
    ledger = Ledger.open_existing(path)
    try:
        n = export_table(what, ledger, str(out), fmt=fmt, warn=warnings.append, **kw)
    finally:
        ledger.close()
    return n, warnings


def test_results_table_in_every_format(tmp_path: Path) -> None:
    _src, path = _ledger_with_results(
        tmp_path, [CHAT_GPT_RESULT, NO_SEARCH_RESULT, None, GEMINI_RESULT]
    )
    n, warnings = _export(path, "results", "jsonl", tmp_path / "r.jsonl")
    assert n == 4 and warnings == []
    rows = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [list(r) for r in rows] == [[c.name for c in RESULT_COLUMNS]] * 4
    first, second, failed, gemini = rows
    assert first["line"] == 1 and first["engine"] == "gemini" and first["tag"] == "t1"
    assert first["prompt"] == "question 0?" and first["web_search_requested"] is True
    assert first["answer_text"] == f"{ANSWER_1}\n\n{ANSWER_2}"
    assert first["citations_count"] == 3 and first["cited_domains"] == ["bbc.co.uk", "brand-b.com"]
    assert first["datetime"] == "2026-11-25 10:03:12 +00:00" and first["cost"] == 0.01
    assert second["citations_count"] == 0 and second["web_search"] is False
    assert failed["status_code"] == 50000 and failed["answer_text"] is None
    assert failed["prompt"] == "question 2?"  # the input columns stand even without a result
    assert gemini["cited_domains"] == ["wikipedia.org", "reuters.com"]

    n, _ = _export(path, "results", "csv", tmp_path / "r.csv")
    table = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert n == 4 and len(table) == 4
    assert table[0]["cited_domains"] == '["bbc.co.uk","brand-b.com"]'
    assert table[0]["web_search"] == "true" and table[2]["model_name"] == ""
    assert table[0]["answer_text"] == first["answer_text"]

    pq = pytest.importorskip("pyarrow.parquet")
    n, _ = _export(path, "results", "parquet", tmp_path / "r.parquet")
    t = pq.read_table(tmp_path / "r.parquet")
    assert n == 4 and t.num_rows == 4
    types = {f.name: str(f.type) for f in t.schema}
    assert types["line"] == "int64" and types["web_search"] == "bool"
    assert types["money_spent"] == "double" and types["datetime"] == "timestamp[us, tz=UTC]"
    assert types["cited_domains"].startswith("list<") and types["answer_text"] == "string"
    got = t.to_pylist()
    assert got[0]["cited_domains"] == ["bbc.co.uk", "brand-b.com"]
    assert got[0]["datetime"].isoformat() == "2026-11-25T10:03:12+00:00"


def test_citations_table_in_every_format(tmp_path: Path) -> None:
    _src, path = _ledger_with_results(tmp_path, [CHAT_GPT_RESULT, NO_SEARCH_RESULT, GEMINI_RESULT])
    n, _ = _export(path, "citations", "jsonl", tmp_path / "c.jsonl")
    rows = [orjson.loads(x) for x in (tmp_path / "c.jsonl").read_bytes().splitlines()]
    assert n == 6 and [list(r) for r in rows] == [[c.name for c in CITATION_COLUMNS]] * 6
    assert [(r["line"], r["position"], r["domain"]) for r in rows] == [
        (1, 1, "bbc.co.uk"),
        (1, 2, "brand-b.com"),
        (1, 3, "bbc.co.uk"),
        (3, 1, "wikipedia.org"),
        (3, 2, "reuters.com"),
        (3, 3, None),
    ]
    assert rows[0]["cited_text"] == "E-bikes from Brand A lead in Europe"
    assert rows[3]["direct_url"] == "https://en.wikipedia.org/wiki/Electric_bicycle"
    assert rows[0]["task_id"] == "id-1" and rows[0]["engine"] == "gemini"

    _export(path, "citations", "csv", tmp_path / "c.csv")
    table = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert [r["domain"] for r in table] == [r["domain"] or "" for r in rows]

    pq = pytest.importorskip("pyarrow.parquet")
    _export(path, "citations", "parquet", tmp_path / "c.parquet")
    t = pq.read_table(tmp_path / "c.parquet")
    assert t.column("domain").to_pylist() == [r["domain"] for r in rows]
    assert str(t.schema.field("position").type) == "int64"


def test_an_unreadable_result_keeps_its_row_and_is_reported(tmp_path: Path) -> None:
    _src, path = _ledger_with_results(tmp_path, ['[{"input_tokens": "many"}]', NO_SEARCH_RESULT])
    n, warnings = _export(path, "results", "jsonl", tmp_path / "r.jsonl")
    rows = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert n == 2 and rows[0]["answer_text"] is None and rows[1]["answer_text"] == "No."
    assert len(warnings) == 1 and "line 1, task id-1: result not readable" in warnings[0]


def test_the_prompt_columns_come_only_from_the_input_the_run_read(tmp_path: Path) -> None:
    src, path = _ledger_with_results(tmp_path, [NO_SEARCH_RESULT, NO_SEARCH_RESULT])
    lines = src.read_bytes().splitlines()
    changed = tmp_path / "changed.jsonl"
    changed.write_bytes(lines[0] + b"\n" + b'{"user_prompt": "another question"}\n')
    with pytest.raises(InputError, match=r"changed.jsonl:2: is not the line the run sent"):
        _export(path, "results", "csv", tmp_path / "r.csv", input_path=str(changed))
    assert not (tmp_path / "r.csv").exists()  # nothing half-written
    short = tmp_path / "short.jsonl"
    short.write_bytes(lines[0] + b"\n")
    with pytest.raises(InputError, match="has no line 2"):
        _export(path, "results", "csv", tmp_path / "r.csv", input_path=str(short))

    n, warnings = _export(path, "results", "jsonl", tmp_path / "r.jsonl", no_input=True)
    rows = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert n == 2 and warnings == [] and rows[0]["prompt"] is None

    src.rename(tmp_path / "moved.jsonl")
    n, warnings = _export(path, "results", "jsonl", tmp_path / "r.jsonl")
    assert n == 2 and len(warnings) == 1 and "not found" in warnings[0]
    n, warnings = _export(
        path, "results", "jsonl", tmp_path / "r.jsonl", input_path=str(tmp_path / "moved.jsonl")
    )
    rows = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert warnings == [] and [r["prompt"] for r in rows] == ["question 0?", "question 1?"]


def test_the_compare_engines_guide_code_runs_on_the_exports(tmp_path: Path) -> None:
    """docs/compare-engines.md's pandas and DuckDB examples, run as written over exports."""
    for module in ("pandas", "duckdb", "pyarrow"):
        pytest.importorskip(module)
    guide = (Path(__file__).resolve().parent.parent / "docs" / "compare-engines.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert len(blocks) == 2
    where = tmp_path / "exports"
    where.mkdir()
    answers = {"chat_gpt": [CHAT_GPT_RESULT], "claude": [NO_SEARCH_RESULT, CHAT_GPT_RESULT],
               "gemini": [GEMINI_RESULT, NO_SEARCH_RESULT]}  # fmt: skip
    # One fan-out run, as the guide does it: one ledger, an outcome per (line, engine).
    src = tmp_path / "in.jsonl"
    raw_lines = [orjson.dumps({"user_prompt": f"question {i}?"}) for i in range(2)]
    src.write_bytes(b"".join(r + b"\n" for r in raw_lines))
    path = tmp_path / "compare.sqlite"
    main = Ledger.open(path, input_name=str(src), engine="chat_gpt", engines=tuple(answers))
    for engine, results in answers.items():
        view = main if engine == main.engine else main.for_engine(engine)
        view.add_lines(
            [
                NewLine(i + 1, record_digest(raw), "pending", f"{engine}{i + 1}", b"")
                for i, raw in enumerate(raw_lines)
            ]
        )
        created = range(1, len(results) + 1)
        batch = view.mark_sending(list(created))
        view.record(
            batch,
            [
                Receipt(line=i, state="created", tag=f"{engine}{i}", task_id=f"{engine}-{i}")
                for i in created
            ],
            batch_state="done",
            attempts=1,
        )
        view.ensure_results()
        view.store_results(
            [
                ResultRow(
                    f"{engine}-{i}",
                    i,
                    f"{engine}{i}",
                    True,
                    20000,
                    "Ok.",
                    orjson.dumps([r]).decode(),
                    "direct",
                )
                for i, r in zip(created, results, strict=True)
            ]
        )
        if view is not main:
            view.close()
    main.close()
    for table in ("results", "citations"):
        _export(path, table, "parquet", where / f"compare.{table}.parquet")
    outputs = []
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr
        outputs.append(result.stdout)
    pandas_out, duckdb_out = outputs
    # Citations by domain and engine: the chat_gpt-shaped answer (given once by chat_gpt and
    # once by claude) cites bbc.co.uk twice; gemini's cites wikipedia.org and reuters.com.
    assert re.search(r"bbc\.co\.uk\s+2\s+2\s+0\s+4", pandas_out), pandas_out
    assert re.search(r"wikipedia\.org\s+0\s+0\s+1\s+1", pandas_out), pandas_out
    # Share of answers citing a domain: claude cites bbc.co.uk in one answer of two.
    assert re.search(r"bbc\.co\.uk\s+1\.0\s+0\.5", pandas_out), pandas_out
    assert re.search(r"bbc\.co\.uk\s+│\s+2\s+│\s+2\s+│\s+0\s+│\s+4", duckdb_out), duckdb_out
