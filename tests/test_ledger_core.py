"""The ledger itself, in-process: opening and refusing, schema migration, the lock, engine
views, recovery of a killed run from its write-ahead rows, and the reads that resume,
reconcile and status rely on.

The design (../shared/design.md): nothing lost, nothing sent twice, every line exactly one
recorded outcome, resume refuses a changed input, one submit per ledger. The CLI tests show
the same through subprocesses; these drive ``Ledger`` and ``LedgerWriter`` the way
``Submitter`` does, in this process, so that mutation testing sees them.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import pytest

from llmtasks import ConfigError, InputError
from llmtasks._batching import Batch
from llmtasks._ledger import (
    SCHEMA_VERSION,
    BatchState,
    InFlightLine,
    Ledger,
    LineRef,
    NewLine,
    pack_lines,
)
from llmtasks._receipt import Receipt
from llmtasks._results_store import Collected, ResultRow


def _rows(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def _lock_exists(path: Path) -> bool:
    return Path(str(path) + ".lock").exists()


def _exists(path: str) -> bool:
    return Path(path).exists()


def _batch(lines: list[int], tags: list[str], user: list[tuple[int, bytes]] | None = None) -> Batch:
    batch = Batch()
    batch.lines, batch.tags = lines, tags
    batch.digests = [b"d%d" % line * 4 for line in lines]
    batch.parts = [b"{}" for _ in lines]
    batch.user_tags = user or []
    return batch


# -- opening, creating, refusing ---------------------------------------------------------


def test_a_new_ledger_records_its_run(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path, input_name="in.jsonl", engine="claude", shard="2/3")
    try:
        meta = ledger.meta()
        assert meta["schema"] == str(SCHEMA_VERSION) == "3"
        assert meta["engine"] == meta["engines"] == "claude"
        assert meta["input"] == "in.jsonl" and meta["shard"] == "2/3"
        assert len(meta["run_id"]) == 8 and int(meta["run_id"], 16) >= 0
        assert time.time() - 60 < float(meta["created_at"]) <= time.time() and set(meta) == {
            "schema",
            "run_id",
            "engine",
            "engines",
            "input",
            "created_at",
            "shard",
        }
        assert ledger.run_id == meta["run_id"] and ledger.input_name == "in.jsonl"
        assert ledger.engine == "claude" and ledger.engines == ("claude",)
        assert not ledger.fanout and ledger.tag_prefix == f"llmtasks:{ledger.run_id}:"
        assert ledger.path == str(path) and ledger.session_id is None
        # WAL: a killed process loses nothing committed.
        assert _rows(path, "PRAGMA journal_mode") == [("wal",)]
    finally:
        ledger.close()
    # Reopened: the same run (not a new id), whatever input name is given now.
    again = Ledger.open(path, engine="claude", shard="2/3")
    try:
        assert again.run_id == meta["run_id"] and again.input_name == "in.jsonl"
    finally:
        again.close()
    # A second run id is another random one.
    other = Ledger.open(tmp_path / "other.sqlite")
    try:
        assert other.run_id != meta["run_id"]
        assert other.input_name == "" and other.meta()["input"] == ""  # none given
    finally:
        other.close()


def test_a_fanout_ledger_names_its_engines_and_their_tags(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path, engine="gemini", engines=["claude", "gemini"])
    try:
        assert ledger.meta()["engines"] == "claude,gemini"
        assert ledger.meta()["engine"] == "claude"  # the first engine of the run
        assert ledger.engines == ("claude", "gemini") and ledger.engine == "gemini"
        assert ledger.fanout
        assert ledger.tag_prefix == f"llmtasks:{ledger.run_id}:gemini:"
    finally:
        ledger.close()
    first = Ledger.open_existing(path)
    try:
        assert first.engine == "claude" and first.tag_prefix.endswith(":claude:")
    finally:
        first.close()


def test_a_ledger_in_a_missing_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Ledger.open(tmp_path / "nowhere" / "run.sqlite")
    assert str(info.value) == f"ledger directory {tmp_path / 'nowhere'} does not exist"
    assert not (tmp_path / "nowhere").exists()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError) as info:
        Ledger.open(path)
    assert str(info.value).startswith(f"{path}: not a usable llmtasks ledger (")
    assert path.read_bytes() == b"this is not sqlite" * 100  # left as it was
    with pytest.raises(InputError) as info2:
        Ledger.open_existing(path)
    assert str(info2.value).startswith(f"{path}: not an llmtasks ledger (")


def test_open_existing_needs_a_ledger_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        Ledger.open_existing(tmp_path / "missing.sqlite")
    assert str(info.value) == f"{tmp_path / 'missing.sqlite'}: no such ledger"
    assert not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(InputError, match="no such ledger"):
        Ledger.open_existing(tmp_path / "dir.sqlite")
    # An SQLite file of something else: no run id.
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('engine', 'chat_gpt')")
    db.commit()
    db.close()
    with pytest.raises(InputError) as info:
        Ledger.open_existing(other)
    assert str(info.value) == f"{other}: not an llmtasks ledger (no run id)"
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not an llmtasks ledger"):
        Ledger.open_existing(empty)


def test_open_existing_reads_a_ledger_as_written(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    Ledger.open(path, input_name="x.jsonl", engine="gemini").close()
    ledger = Ledger.open_existing(path)
    try:
        assert ledger.engine == "gemini" and ledger.input_name == "x.jsonl"
        assert _rows(path, "PRAGMA journal_mode") == [("wal",)]
    finally:
        ledger.close()


def test_a_ledger_of_another_shard_is_refused_either_way(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    Ledger.open(path).close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(path, shard="1/2")
    assert str(info.value) == (
        f"ledger {path} belongs to shard 'none', not '1/2'; use another --ledger"
    )
    sharded = tmp_path / "shard.sqlite"
    Ledger.open(sharded, shard="1/2").close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(sharded)
    assert str(info.value) == (
        f"ledger {sharded} belongs to shard '1/2', not 'none'; use another --ledger"
    )
    with pytest.raises(ConfigError, match="belongs to shard '1/2', not '2/2'"):
        Ledger.open(sharded, shard="2/2")
    Ledger.open(sharded, shard="1/2").close()  # its own shard: fine


def test_a_ledger_without_a_shard_key_is_no_shards(tmp_path: Path) -> None:
    """Ledgers from before sharding have no ``shard`` in meta: they belong to no shard."""
    path = tmp_path / "run.sqlite"
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'shard'")
    db.commit()
    db.close()
    Ledger.open(path).close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(path, shard="1/2")
    assert "belongs to shard 'none', not '1/2'" in str(info.value)


def test_a_ledger_of_other_engines_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    Ledger.open(path).close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(path, engine="claude")
    assert str(info.value) == (
        f"ledger {path} belongs to engine 'chat_gpt', not 'claude'; use another --ledger"
    )
    with pytest.raises(ConfigError, match="not 'chat_gpt,claude'"):
        Ledger.open(path, engines=["chat_gpt", "claude"])
    fan = tmp_path / "fan.sqlite"
    Ledger.open(fan, engines=["chat_gpt", "claude"]).close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(fan, engines=["claude", "chat_gpt"])  # the order is the run's
    assert "belongs to engine 'chat_gpt,claude', not 'claude,chat_gpt'" in str(info.value)
    Ledger.open(fan, engine="claude", engines=["chat_gpt", "claude"]).close()


def test_a_ledger_of_one_engine_from_before_fanout_opens(tmp_path: Path) -> None:
    """Before fan-out meta had ``engine`` and no ``engines``: that one engine is the run's."""
    path = tmp_path / "run.sqlite"
    Ledger.open(path, engine="claude").close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'engines'")
    db.commit()
    db.close()
    ledger = Ledger.open(path, engine="claude")
    try:
        assert ledger.engines == ("claude",) and ledger.engine == "claude"
    finally:
        ledger.close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(path, engine="gemini")
    assert "belongs to engine 'claude', not 'gemini'" in str(info.value)


def test_a_ledger_naming_an_engine_we_do_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'chat_gpt,bard' WHERE key = 'engines'")
    db.commit()
    db.close()
    with pytest.raises(InputError) as info:
        Ledger.open_existing(path)
    assert str(info.value) == (
        f"{path}: not a usable llmtasks ledger (engines ('chat_gpt', 'bard'))"
    )


def test_a_view_of_an_engine_the_ledger_does_not_hold_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path, engines=["chat_gpt", "claude"])
    try:
        with pytest.raises(ConfigError) as info:
            ledger.for_engine("gemini")
        assert str(info.value) == f"ledger {path} holds chat_gpt, claude tasks, not gemini"
    finally:
        ledger.close()


# -- schema migration ----------------------------------------------------------------------

_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (session_id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
    ended_at REAL, calls INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT '');
CREATE TABLE batches (batch_id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL,
    state TEXT NOT NULL, n_tasks INTEGER NOT NULL, sent_at REAL NOT NULL, done_at REAL,
    http_status INTEGER, status_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, note TEXT,
    lines BLOB);
CREATE TABLE lines (line INTEGER PRIMARY KEY, digest BLOB NOT NULL,
    state TEXT NOT NULL, tag TEXT, prompt_digest BLOB, task_id TEXT, status_code INTEGER,
    status_message TEXT, cost REAL, field TEXT, reason TEXT, batch_id INTEGER,
    collected INTEGER NOT NULL DEFAULT 0);
INSERT INTO meta VALUES ('schema', '1'), ('run_id', 'abcd1234'), ('engine', 'claude'),
    ('input', 'in.jsonl'), ('created_at', '0');
"""

_SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (session_id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
    ended_at REAL, calls INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT '');
CREATE TABLE batches (batch_id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL,
    state TEXT NOT NULL, n_tasks INTEGER NOT NULL, sent_at REAL NOT NULL, done_at REAL,
    http_status INTEGER, status_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, note TEXT,
    lines BLOB, engine TEXT NOT NULL);
CREATE TABLE lines (line INTEGER NOT NULL, engine TEXT NOT NULL, digest BLOB NOT NULL,
    state TEXT NOT NULL, tag TEXT, prompt_digest BLOB, task_id TEXT, status_code INTEGER,
    status_message TEXT, cost REAL, field TEXT, reason TEXT, batch_id INTEGER,
    collected INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (line, engine)) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema', '2'), ('run_id', 'abcd1234'), ('engine', 'chat_gpt'),
    ('engines', 'chat_gpt'), ('input', 'in.jsonl'), ('created_at', '0'), ('shard', '');
"""


def _build(path: Path, schema: str, sql: str = "", args: list[tuple[object, ...]] | None = None):
    db = sqlite3.connect(path)
    db.executescript(schema)
    if sql:
        db.executemany(sql, args or [])
    db.commit()
    db.close()


def test_a_schema_1_ledger_is_migrated_its_rows_the_one_engines(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _build(
        path,
        _SCHEMA_1,
        "INSERT INTO lines (line, digest, state, tag) VALUES (?, ?, ?, ?)",
        [(1, b"d1", "created", "llmtasks:abcd1234:1"), (2, b"d2", "pending", None)],
    )
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO batches (session_id, state, n_tasks, sent_at, lines) "
        "VALUES (1, 'sending', 1, 5.0, ?)",
        (pack_lines([2]),),
    )
    db.commit()
    db.close()
    ledger = Ledger.open(path, engine="claude")
    try:
        assert ledger.engines == ("claude",) and ledger.tag_prefix == "llmtasks:abcd1234:"
        assert ledger.meta()["schema"] == "3"
        columns = {r[1] for r in _rows(path, "PRAGMA table_info(lines)")}
        assert "engine" in columns
        batch_columns = {r[1] for r in _rows(path, "PRAGMA table_info(batches)")}
        assert {"engine", "write_ahead"} <= batch_columns
        # Every old row is the ledger's one engine's.
        assert _rows(path, "SELECT line, engine FROM lines ORDER BY line") == [
            (1, "claude"),
            (2, "claude"),
        ]
        assert _rows(path, "SELECT engine, write_ahead FROM batches") == [("claude", None)]
        assert ledger.known(1, 2) == {1: (b"d1", "created"), 2: (b"d2", "pending")}
        # The batch in flight when that old run died: its pending line becomes unknown.
        assert ledger.in_flight() == [InFlightLine(2, 1)]
        assert ledger.recover_interrupted() == 1
        assert ledger.counts() == {"created": 1, "unknown": 1}
    finally:
        ledger.close()
    # Opened again: nothing more to do, and it stays schema 3.
    again = Ledger.open_existing(path)
    try:
        assert again.meta()["schema"] == "3" and again.counts() == {"created": 1, "unknown": 1}
    finally:
        again.close()


def test_a_schema_2_ledger_gets_its_write_ahead_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _build(path, _SCHEMA_2)
    ledger = Ledger.open_existing(path)
    try:
        assert ledger.meta()["schema"] == "3"
        assert "write_ahead" in {r[1] for r in _rows(path, "PRAGMA table_info(batches)")}
        assert ledger.tag_prefix == "llmtasks:abcd1234:"
    finally:
        ledger.close()


def test_a_ledger_from_a_newer_llmtasks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError) as info:
        Ledger.open(path)
    assert str(info.value) == (
        f"ledger {path} was written by a newer llmtasks (ledger schema 4, this version "
        "reads up to 3): upgrade llmtasks"
    )
    assert _rows(path, "SELECT value FROM meta WHERE key = 'schema'") == [("4",)]


def test_a_ledger_at_this_schema_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    Ledger.open(path).close()
    before = _rows(path, "SELECT sql FROM sqlite_master ORDER BY name")
    Ledger.open(path).close()
    assert _rows(path, "SELECT sql FROM sqlite_master ORDER BY name") == before


def test_two_processes_migrating_the_same_old_ledger_both_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may add a column between our look and our ALTER: not an error. Any
    other failure to add one is."""
    path = tmp_path / "old.sqlite"
    _build(path, _SCHEMA_2)
    Ledger.open_existing(path).close()  # the other process: the column is there now
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    looks: list[tuple[str, str]] = []
    real = Ledger._has_column

    def looked_before_the_other(self: Ledger, table: str, column: str) -> bool:
        looks.append((table, column))
        # Our first look at write_ahead came before the other process added it.
        if looks.count(("batches", "write_ahead")) == 1 and column == "write_ahead":
            return False
        return real(self, table, column)

    monkeypatch.setattr(Ledger, "_has_column", looked_before_the_other)
    ledger = Ledger.open_existing(path)
    try:
        assert ledger.meta()["schema"] == "3"
        assert looks.count(("batches", "write_ahead")) == 2  # looked again after the ALTER
    finally:
        ledger.close()
    # A column that cannot be added and is not there: the error is not swallowed.
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    monkeypatch.setattr(Ledger, "_has_column", lambda self, table, column: False)
    with pytest.raises(sqlite3.OperationalError, match="duplicate column"):
        Ledger.open_existing(path)


# -- the lock -------------------------------------------------------------------------------


def test_one_lock_per_ledger_naming_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    lock_path = Path(str(path) + ".lock")
    holder = Ledger.open(path)
    holder.lock()
    holder.lock()  # taken already: nothing more
    assert lock_path.read_text() == f"pid {os.getpid()}"
    other = Ledger.open(path)
    try:
        with pytest.raises(ConfigError) as info:
            other.lock()
        assert str(info.value) == (
            f"ledger {path} is in use by another submit (pid {os.getpid()}); wait for it to "
            "finish or stop it first"
        )
        assert lock_path.read_text() == f"pid {os.getpid()}"  # the holder's, untouched
    finally:
        holder.close()
    assert not lock_path.exists()  # the holder removes it
    other.lock()  # free now
    assert lock_path.read_text() == f"pid {os.getpid()}"
    other.close()
    assert not lock_path.exists()


def test_a_lock_file_without_a_holder_name_still_refuses(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    with open(str(path) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError) as info:
            ledger.lock()
        assert "in use by another submit (another process);" in str(info.value)
    ledger.close()


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    lock_path = Path(str(path) + ".lock")
    lock_path.write_text("pid 999999999 and more text")  # its process is gone: no flock
    ledger = Ledger.open(path)
    ledger.lock()
    assert lock_path.read_text() == f"pid {os.getpid()}"
    ledger.close()
    assert not lock_path.exists()


def test_a_memory_ledger_and_views_take_no_lock(tmp_path: Path) -> None:
    mem = Ledger.open(":memory:")
    mem.lock()
    assert mem._lock is None
    mem.close()
    path = tmp_path / "run.sqlite"
    main = Ledger.open(path, engines=["chat_gpt", "claude"])
    view = main.for_engine("claude")
    view.lock()  # the view shares the run's lock: it takes none of its own
    assert not Path(str(path) + ".lock").exists()
    main.lock()
    assert Path(str(path) + ".lock").exists()
    view.close()
    assert Path(str(path) + ".lock").exists()  # closing a view leaves the run's lock
    main.close()
    assert not Path(str(path) + ".lock").exists()


# -- engine views ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "memory"])
def test_each_engine_view_reads_and_writes_its_own_lines(tmp_path: Path, where: str) -> None:
    path = ":memory:" if where == "memory" else str(tmp_path / "run.sqlite")
    main = Ledger.open(path, engines=["chat_gpt", "claude", "gemini"])
    claude = main.for_engine("claude")
    try:
        assert claude.engine == "claude" and main.engine == "chat_gpt"
        assert claude.engines == main.engines and claude.run_id == main.run_id
        assert claude.fanout and claude.path == main.path
        assert claude.tag_prefix == f"llmtasks:{main.run_id}:claude:"
        assert main.tag_prefix == f"llmtasks:{main.run_id}:chat_gpt:"
        main.add_lines([NewLine(1, b"a1", "created", "t1"), NewLine(2, b"a2", "rejected")])
        claude.add_lines([NewLine(1, b"c1", "pending", "u1")])
        assert main.known(1, 2) == {1: (b"a1", "created"), 2: (b"a2", "rejected")}
        assert claude.known(1, 2) == {1: (b"c1", "pending")}
        assert main.last_line() == 2 and claude.last_line() == 1
        assert main.counts() == {"created": 1, "rejected": 1}
        assert claude.counts() == {"pending": 1}
        assert main.counts(all_engines=True) == {"created": 1, "rejected": 1, "pending": 1}
        assert main.counts_by_engine() == {
            "chat_gpt": {"created": 1, "rejected": 1},
            "claude": {"pending": 1},
            "gemini": {},
        }
        assert claude.lookup_unrecorded("u1") == 1 and main.lookup_unrecorded("u1") is None
        # Each view's receipts carry the engine in a fan-out ledger.
        assert [(r.line, r.engine, r.state) for r in claude.receipts()] == [
            (1, "chat_gpt", "created"),
            (1, "claude", "pending"),
            (2, "chat_gpt", "rejected"),
        ]
        # A batch in flight is its engine's.
        claude.begin_session()
        b = claude.mark_sending([1])
        assert claude.batches_sending() == 1 and main.batches_sending() == 0
        assert main.in_flight() == [] and claude.in_flight() == [InFlightLine(1, b)]
        assert main.recover_interrupted() == 0 and claude.batches_sending() == 1
        assert claude.recover_interrupted() == 1
        assert claude.counts() == {"unknown": 1} and main.counts()["created"] == 1
        main.add_lines([NewLine(3, b"a3", "unknown", "t3")])
        assert claude.requeue_unknown() == 1
        assert main.counts() == {"created": 1, "rejected": 1, "unknown": 1}
        assert claude.counts() == {"pending": 1}
    finally:
        claude.close()  # a view of a :memory: ledger too: nothing of its own to let go
        main.close()


def test_a_view_of_a_file_ledger_has_its_own_connection(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    main = Ledger.open(path, engines=["chat_gpt", "claude"])
    view = main.for_engine("claude")
    assert view._db is not main._db
    assert _rows(path, "PRAGMA journal_mode") == [("wal",)]
    view.close()
    # The run's connection is still open after the view's is closed.
    assert main.counts() == {}
    main.close()


# -- recovery of a killed run ---------------------------------------------------------------


async def test_a_kill_mid_post_leaves_only_unknown_lines_and_the_next_run_resends_none(
    tmp_path: Path,
) -> None:
    """As Submitter does: lines rejected at read, one batch recorded, two batches written
    ahead and never answered (kill -9). Reopened: the two batches' lines become ``unknown``,
    keeping their digests (resume checks the input by them) and tags (reconcile looks them
    up); recorded lines keep their outcome; the count returned is the lines recovered."""
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path, input_name="in.jsonl")
    ledger.lock()
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    p = ledger.tag_prefix
    try:
        writer.add_lines([(1, b"d1" * 4, "rejected", None, None, "top_p", "too big")])
        done = _batch([2, 3], [f"{p}2", f"{p}3"])
        done_id = await writer.mark_sending(session, done)
        writer.record(
            done_id,
            ("done", 200, 20000, 1, None),
            done,
            [
                Receipt(2, "created", f"{p}2", "t-2", 20100, "Task Created.", 0.01),
                Receipt(3, "created", f"{p}3", "t-3", 20100, "Task Created.", 0.01),
            ],
        )
        lost = _batch([4, 5, 6], [f"{p}4", "mine", f"{p}6"], [(1, b"prompt-5")])
        lost_id = await writer.mark_sending(session, lost)
        lost2 = _batch([7], [f"{p}7"])
        lost2_id = await writer.mark_sending(session, lost2)
        await writer.flush()
    finally:
        await writer.close()
        ledger.close()  # the replies never recorded, as after a kill -9
    assert not _lock_exists(path)
    again = Ledger.open(path, input_name="in.jsonl")
    try:
        assert again.batches_sending() == 2
        assert again.batch_summary().sending == 2
        assert again.in_flight() == [
            InFlightLine(4, lost_id, b"d4" * 4, f"{p}4"),
            InFlightLine(5, lost_id, b"d5" * 4, "mine", b"prompt-5"),
            InFlightLine(6, lost_id, b"d6" * 4, f"{p}6"),
            InFlightLine(7, lost2_id, b"d7" * 4, f"{p}7"),
        ]
        # A result may arrive for a line in flight before its reply is recorded.
        assert again.lookup_unrecorded("mine") == 5
        assert again.lookup_unrecorded(f"{p}7") == 7
        assert again.lookup_unrecorded(f"{p}2") is None  # created: recorded
        assert again.recover_interrupted() == 4
        assert again.batches_sending() == 0 and again.in_flight() == []
        assert again.recover_interrupted() == 0  # once only
        assert _rows(path, "SELECT batch_id, state, note FROM batches ORDER BY batch_id") == [
            (done_id, "done", None),
            (lost_id, "unknown", "interrupted while sending"),
            (lost2_id, "unknown", "interrupted while sending"),
        ]
        assert [(r.line, r.state, r.tag, r.task_id, r.reason) for r in again.receipts()] == [
            (1, "rejected", None, None, "too big"),
            (2, "created", f"{p}2", "t-2", None),
            (3, "created", f"{p}3", "t-3", None),
            (4, "unknown", f"{p}4", None, "interrupted while sending"),
            (5, "unknown", "mine", None, "interrupted while sending"),
            (6, "unknown", f"{p}6", None, "interrupted while sending"),
            (7, "unknown", f"{p}7", None, "interrupted while sending"),
        ]
        assert again.known(4, 7) == {
            4: (b"d4" * 4, "unknown"),
            5: (b"d5" * 4, "unknown"),
            6: (b"d6" * 4, "unknown"),
            7: (b"d7" * 4, "unknown"),
        }
        assert again.lines_in_state("unknown") == [
            LineRef(4, f"{p}4", None, lost_id),
            LineRef(5, "mine", b"prompt-5", lost_id),
            LineRef(6, f"{p}6", None, lost_id),
            LineRef(7, f"{p}7", None, lost2_id),
        ]
        assert again.lookup_unrecorded("mine") == 5  # unknown: still unrecorded
        assert again.last_line() == 7
    finally:
        again.close()


async def test_a_kill_after_a_line_was_left_pending_by_an_earlier_stop(tmp_path: Path) -> None:
    """A line left ``pending`` (a run that stopped) is sent again and the process dies: the
    row becomes unknown; a line that got its outcome meanwhile keeps it."""
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    session = ledger.begin_session()
    p = ledger.tag_prefix
    ledger.add_lines(
        [
            NewLine(1, b"d1" * 4, "pending", f"{p}1", b"old-prompt"),
            NewLine(2, b"d2" * 4, "created", f"{p}2"),
        ]
    )
    writer = ledger.writer()
    writer.start()
    try:
        # Line 2's batch is written ahead again by a buggy caller: its outcome stands.
        await writer.mark_sending(session, _batch([1, 2], [f"{p}1", f"{p}2"]))
        await writer.flush()
    finally:
        await writer.close()
        ledger.close()
    again = Ledger.open(path)
    try:
        assert again.recover_interrupted() == 1
        assert [(r.line, r.state) for r in again.receipts()] == [(1, "unknown"), (2, "created")]
        # The old prompt digest is kept when the write-ahead has none.
        assert again.lines_in_state("unknown")[0].prompt_digest == b"old-prompt"
    finally:
        again.close()


def test_a_schema_2_batch_in_flight_is_recovered_from_its_pending_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _build(
        path,
        _SCHEMA_2,
        "INSERT INTO lines (line, engine, digest, state, tag) VALUES (?, 'chat_gpt', ?, ?, ?)",
        [
            (1, b"d1", "created", "llmtasks:abcd1234:1"),
            (2, b"d2", "pending", "llmtasks:abcd1234:2"),
            (3, b"d3", "pending", "llmtasks:abcd1234:3"),
            (4, b"d4", "created", "llmtasks:abcd1234:4"),
            (5, b"d5", "pending", "llmtasks:abcd1234:5"),
        ],
    )
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO batches (session_id, state, n_tasks, sent_at, lines, engine) "
        "VALUES (1, 'sending', ?, 1.0, ?, 'chat_gpt')",
        [(3, pack_lines([2, 3, 4])), (1, pack_lines([5]))],
    )
    db.commit()
    db.close()
    ledger = Ledger.open(path)
    try:
        assert ledger.in_flight() == [
            InFlightLine(2, 1),
            InFlightLine(3, 1),
            InFlightLine(4, 1),
            InFlightLine(5, 2),
        ]
        # Old rows: a pending line of a batch in flight is found by its tag.
        assert ledger.lookup_unrecorded("llmtasks:abcd1234:2") == 2
        assert ledger.recover_interrupted() == 3  # line 4 had its outcome already
        assert ledger.known(1, 5) == {
            1: (b"d1", "created"),
            2: (b"d2", "unknown"),
            3: (b"d3", "unknown"),
            4: (b"d4", "created"),
            5: (b"d5", "unknown"),
        }
        assert _rows(
            path, "SELECT line, batch_id, reason FROM lines WHERE state = 'unknown' ORDER BY 1"
        ) == [
            (2, 1, "interrupted while sending"),
            (3, 1, "interrupted while sending"),
            (5, 2, "interrupted while sending"),
        ]
        assert _rows(path, "SELECT state, note FROM batches") == [
            ("unknown", "interrupted while sending"),
            ("unknown", "interrupted while sending"),
        ]
    finally:
        ledger.close()


# -- reads for resume, reconcile, status ----------------------------------------------------


def test_known_reads_exactly_the_range_asked(tmp_path: Path) -> None:
    ledger = Ledger.open(":memory:")
    ledger.add_lines([NewLine(i, b"d%d" % i, "created") for i in range(1, 8)])
    assert set(ledger.known(3, 5)) == {3, 4, 5}
    assert ledger.known(7, 9) == {7: (b"d7", "created")}
    assert ledger.known(8, 9) == {}
    assert ledger.last_line() == 7
    ledger.close()
    empty = Ledger.open(":memory:")
    assert empty.last_line() == 0 and empty.counts() == {}
    empty.close()


def test_lookup_unrecorded_finds_only_one_unrecorded_line(tmp_path: Path) -> None:
    ledger = Ledger.open(":memory:")
    ledger.add_lines(
        [
            NewLine(1, b"1", "pending", "a"),
            NewLine(2, b"2", "unknown", "b"),
            NewLine(3, b"3", "created", "c"),
            NewLine(4, b"4", "pending", "twice"),
            NewLine(5, b"5", "unknown", "twice"),
            NewLine(6, b"6", "failed", "f"),
        ]
    )
    assert ledger.lookup_unrecorded("a") == 1
    assert ledger.lookup_unrecorded("b") == 2
    assert ledger.lookup_unrecorded("c") is None
    assert ledger.lookup_unrecorded("f") is None
    assert ledger.lookup_unrecorded("twice") is None  # which one? not guessed
    assert ledger.lookup_unrecorded("nobody") is None
    ledger.close()


def test_receipts_filter_by_state_and_first_line(tmp_path: Path) -> None:
    ledger = Ledger.open(":memory:")
    ledger.add_lines(
        [
            NewLine(1, b"1", "created", "t1"),
            NewLine(2, b"2", "rejected", None, None, "top_p", "too big"),
            NewLine(3, b"3", "skipped", None, None, None, "blank"),
            NewLine(4, b"4", "created", "t4"),
        ]
    )
    assert [r.line for r in ledger.receipts()] == [1, 2, 3, 4]
    assert [r.line for r in ledger.receipts(first_line=3)] == [3, 4]
    assert [r.line for r in ledger.receipts(states=["rejected", "skipped"])] == [2, 3]
    assert [r.line for r in ledger.receipts(states=["created"], first_line=2)] == [4]
    assert list(ledger.receipts(states=[])) == []
    (rejected,) = ledger.receipts(states=["rejected"])
    assert rejected == Receipt(2, "rejected", field="top_p", reason="too big")
    assert rejected.engine is None  # one engine: receipts name none
    ledger.close()


def test_record_resolve_and_requeue(tmp_path: Path) -> None:
    """The non-writer path (reconcile, tests): a batch's outcome, reconcile's verdicts on
    unknown lines only, and --resend-unknown."""
    ledger = Ledger.open(tmp_path / "run.sqlite")
    session = ledger.begin_session("submit in.jsonl")
    ledger.add_lines([NewLine(i, b"%d" % i, "pending", f"t{i}") for i in range(1, 5)])
    batch = ledger.mark_sending([1, 2, 3, 4])
    assert ledger.in_flight() == [InFlightLine(i, batch) for i in range(1, 5)]
    assert _rows(
        tmp_path / "run.sqlite", "SELECT session_id, state, n_tasks, lines, engine FROM batches"
    ) == [(session, "sending", 4, pack_lines([1, 2, 3, 4]), "chat_gpt")]
    ledger.record(
        batch,
        [
            Receipt(1, "created", "t1", "id-1", 20100, "Task Created.", 0.5),
            Receipt(2, "unknown", "t2", reason="lost"),
            Receipt(3, "failed", "t3", None, 40501, "bad", field="x", reason="why"),
            Receipt(4, "unknown", "t4", reason="lost"),
        ],
        batch_state=BatchState.DONE,
        attempts=2,
        http_status=200,
        status_code=20000,
        note="n",
    )
    assert _rows(
        tmp_path / "run.sqlite",
        "SELECT state, http_status, status_code, attempts, note, done_at > 0 FROM batches",
    ) == [("done", 200, 20000, 2, "n", 1)]
    assert ledger.batches_sending() == 0 and ledger.retries() == 1
    assert list(ledger.receipts()) == [
        Receipt(1, "created", "t1", "id-1", 20100, "Task Created.", 0.5),
        Receipt(2, "unknown", "t2", reason="lost"),
        Receipt(3, "failed", "t3", None, 40501, "bad", field="x", reason="why"),
        Receipt(4, "unknown", "t4", reason="lost"),
    ]
    assert ledger.lines_in_state("created") == [LineRef(1, "t1", None, batch)]
    # Reconcile: line 2 was created after all; a verdict on a line not unknown is ignored.
    ledger.resolve(
        [
            Receipt(2, "created", "t2", "id-2", 20100, "found", 0.25, reason=None),
            Receipt(1, "pending", "t1"),
        ]
    )
    assert [(r.line, r.state, r.task_id, r.cost) for r in ledger.receipts()][:2] == [
        (1, "created", "id-1", 0.5),
        (2, "created", "id-2", 0.25),
    ]
    assert ledger.created_totals() == (0.75, 0)
    assert ledger.requeue_unknown() == 1
    (four,) = ledger.receipts(states=["pending"])
    assert four == Receipt(4, "pending", "t4")  # the reason is cleared
    assert ledger.requeue_unknown() == 0
    ledger.end_session(calls=3, cost=0.75)
    (row,) = ledger.sessions()
    assert row.session_id == session and row.calls == 3 and row.cost == 0.75
    assert row.ended_at is not None and row.ended_at >= row.started_at > 0
    assert _rows(tmp_path / "run.sqlite", "SELECT command FROM sessions") == [("submit in.jsonl",)]
    ledger.close()


def test_sessions_of_a_fanout_run_are_one(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    main = Ledger.open(path, engines=["chat_gpt", "claude"])
    view = main.for_engine("claude")
    try:
        first = main.begin_session()
        second = view.begin_session()
        assert second == first + 1 and view.session_id == second
        view.join_session(first)
        assert view.session_id == first
        assert [s.session_id for s in main.sessions()] == [first]
        view.mark_sending([1])
        assert _rows(path, "SELECT session_id FROM batches") == [(first,)]
        main.end_session(calls=2, cost=0.5)
        (s,) = main.sessions()
        assert (s.calls, s.cost) == (2, 0.5)
    finally:
        view.close()
        main.close()


def test_a_batch_written_ahead_without_a_session_is_session_0() -> None:
    ledger = Ledger.open(":memory:")
    ledger.mark_sending([1, 2])
    assert ledger._query("SELECT session_id, n_tasks FROM batches") == [(0, 2)]
    assert ledger._query("SELECT n_tasks FROM batches WHERE n_tasks = ?", (3,)) == []
    ledger.begin_session()  # submit's: no command recorded
    assert ledger._query("SELECT command FROM sessions") == [("",)]
    ledger.close()


def test_lines_never_sent_are_in_batch_0() -> None:
    """Reconcile reads a line's last POST from lines_in_state: 0 for one never sent."""
    ledger = Ledger.open(":memory:")
    ledger.add_lines([NewLine(1, b"1", "pending", "t1"), NewLine(2, b"2", "unknown", "t2")])
    assert ledger.lines_in_state("pending") == [LineRef(1, "t1", None, 0)]
    assert ledger.lines_in_state("unknown") == [LineRef(2, "t2", None, 0)]
    ledger.close()


def test_counts_by_engine_counts_every_row_even_of_an_engine_the_run_does_not_name(
    tmp_path: Path,
) -> None:
    """Status never hides a line: rows of an engine the meta does not list (a ledger put
    together by hand) are counted under their engine."""
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO lines (line, engine, digest, state) VALUES (1, 'claude', x'00', 'created')"
    )
    db.commit()
    db.close()
    try:
        assert ledger.counts_by_engine() == {"chat_gpt": {}, "claude": {"created": 1}}
    finally:
        ledger.close()


def test_status_reads(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "run.sqlite", engines=["chat_gpt", "claude"])
    claude = ledger.for_engine("claude")
    try:
        assert ledger.batch_summary() == (0, 0, None, None)
        assert ledger.call_times() == [] and ledger.retries() == 0
        assert ledger.created_totals() == (0.0, 0)
        ledger.begin_session()
        ledger.add_lines([NewLine(1, b"1", "pending"), NewLine(2, b"2", "pending")])
        claude.add_lines([NewLine(1, b"1", "pending")])
        b1 = ledger.mark_sending([1, 2])
        b2 = claude.mark_sending([1])
        b3 = ledger.mark_sending([3])
        ledger.record(
            b1,
            [
                Receipt(1, "created", "t1", "id-1", 20100, "ok", 0.5),
                Receipt(2, "failed", "t2", None, 40501, "bad"),
            ],
            batch_state="done",
            attempts=3,
        )
        claude.record(
            b2,
            [Receipt(1, "created", "c1", "cid-1", 20100, "ok", 0.25)],
            batch_state="done",
            attempts=0,
        )
        assert ledger.status_code_counts() == {20100: 2, 40501: 1}
        assert ledger.created_totals() == (0.75, 0)
        # A row is one POST: the row of a call's third attempt is one retry (its first two
        # attempts are rows of their own); a row of attempt 0 or 1 is none.
        assert ledger.retries() == 1
        summary = ledger.batch_summary()
        assert summary.calls == 3 and summary.sending == 1
        times = ledger.call_times()
        assert len(times) == 3 and times == sorted(times)
        assert summary.first_call_at == times[0]
        assert summary.last_call_at is not None and summary.last_call_at >= times[-1]
        assert ledger.batch_times([b1, b3, b1, 99]) == {
            b1: times[0],
            b3: pytest.approx(times[2]),
        }
        assert sorted(ledger.line_counts()) == [
            ("chat_gpt", "created", Collected.WAITING, 1),
            ("chat_gpt", "failed", Collected.WAITING, 1),
            ("claude", "created", Collected.WAITING, 1),
        ]
        assert ledger.uncollected_cost() == {"chat_gpt": 0.5, "claude": 0.25}
        assert ledger.first_result("chat_gpt") is None
        ledger.store_results([ResultRow("id-1", 1, "t1", True, 20000, "ok", '{"a": 1}', "get")])
        claude.store_results([ResultRow("cid-1", 1, "c1", True, 20000, "ok", '{"c": 1}', "get")])
        assert ledger.first_result("chat_gpt") == '{"a": 1}'
        assert ledger.first_result("claude") == '{"c": 1}'
        assert ledger.first_result("gemini") is None
        assert ledger.created_totals() == (0.75, 2)
        assert ledger.uncollected_cost() == {}
        assert sorted(ledger.line_counts()) == [
            ("chat_gpt", "created", Collected.COLLECTED, 1),
            ("chat_gpt", "failed", Collected.WAITING, 1),
            ("claude", "created", Collected.COLLECTED, 1),
        ]
    finally:
        claude.close()
        ledger.close()


def test_batch_times_of_many_batches(tmp_path: Path) -> None:
    """Reconcile asks for the send times of every unknown line's batch: more than one
    statement's worth of ids."""
    ledger = Ledger.open(":memory:")
    ids = [ledger.mark_sending([i]) for i in range(1, 1203)]
    times = ledger.batch_times(ids)
    assert set(times) == set(ids) and len(times) == 1202
    assert all(isinstance(t, float) and t > 0 for t in times.values())
    assert ledger.batch_times([]) == {}
    ledger.close()


async def test_the_writer_of_a_memory_ledger_writes_into_that_ledger() -> None:
    """``:memory:`` is a database per connection: the writer must use the ledger's own."""
    mem = Ledger.open(":memory:", engines=["chat_gpt", "claude"], engine="claude")
    session = mem.begin_session()
    writer = mem.writer()
    writer.start()
    p = mem.tag_prefix
    try:
        batch = _batch([1, 2], [f"{p}1", f"{p}2"])
        batch_id = await writer.mark_sending(session, batch)
        assert mem.in_flight() == [
            InFlightLine(1, batch_id, b"d1" * 4, f"{p}1"),
            InFlightLine(2, batch_id, b"d2" * 4, f"{p}2"),
        ]
        writer.record(
            batch_id,
            ("done", 200, 20000, 1, None),
            batch,
            [Receipt(1, "created", f"{p}1", "t1", 20100, "ok", 0.1), Receipt(2, "failed", f"{p}2")],
        )
        await writer.flush()
        assert mem.counts() == {"created": 1, "failed": 1}
        assert mem.counts_by_engine() == {"chat_gpt": {}, "claude": {"created": 1, "failed": 1}}
    finally:
        await writer.close()
    assert mem.counts() == {"created": 1, "failed": 1}  # the writer left the connection open
    mem.close()


async def test_the_writer_of_a_file_ledger_writes_its_engine_and_closes_its_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.sqlite"
    main = Ledger.open(path, engines=["chat_gpt", "claude"])
    view = main.for_engine("claude")
    session = view.begin_session()
    writer = view.writer()
    writer.start()
    try:
        batch = _batch([1], [f"{view.tag_prefix}1"])
        batch_id = await writer.mark_sending(session, batch)
        writer.record(batch_id, ("done", 200, 20000, 1, None), batch, [Receipt(1, "created")])
        await writer.flush()
    finally:
        await writer.close()
    assert main.counts_by_engine() == {"chat_gpt": {}, "claude": {"created": 1}}
    assert view.counts() == {"created": 1}  # the view's connection is still usable
    view.close()
    main.close()
    # Every connection closed: the last one folds the write-ahead log into the database.
    assert not _exists(f"{path}-wal")
    assert _rows(path, "SELECT line, engine, state FROM lines") == [(1, "claude", "created")]


class _HolderLetGo:
    """``fcntl`` as seen by ``lock()`` when the holder removes the lock file (or another
    process puts a new one in its place) between our open and our flock: the lock we get
    is on a file that is no longer at the path."""

    LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

    def __init__(self, lock_path: Path, replace: bool) -> None:
        self.lock_path, self.replace, self.calls = lock_path, replace, 0

    def flock(self, f: object, how: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.lock_path.unlink()
            if self.replace:
                self.lock_path.write_text("")
        fcntl.flock(f, how)  # type: ignore[arg-type]


@pytest.mark.parametrize("replace", [False, True])
def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    import llmtasks._ledger as ledger_module

    path = tmp_path / "run.sqlite"
    lock_path = Path(f"{path}.lock")
    lock_path.write_text("pid 1")  # the holder's, as it lets go
    shim = _HolderLetGo(lock_path, replace)
    monkeypatch.setattr(ledger_module, "fcntl", shim)
    ledger = Ledger.open(path)
    ledger.lock()
    assert shim.calls == 2  # the first lock guarded nothing: the path was opened again
    assert lock_path.read_text() == f"pid {os.getpid()}"
    # The lock held is on the file at the path: another opener is refused.
    monkeypatch.undo()
    other = Ledger.open(path)
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        other.lock()
    other.close()
    ledger.close()
    assert not lock_path.exists()


def test_closing_after_the_lock_file_was_removed_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    ledger.lock()
    Path(f"{path}.lock").unlink()
    ledger.close()
    # The lock was let go: the next submit takes it.
    again = Ledger.open(path)
    again.lock()
    assert Path(f"{path}.lock").read_text() == f"pid {os.getpid()}"
    again.close()


def test_a_ledger_opened_twice_in_one_process_is_locked_once(tmp_path: Path) -> None:
    """flock is per open file: the same process opening the ledger twice is refused too."""
    path = tmp_path / "run.sqlite"
    first = Ledger.open(path)
    first.lock()
    second = Ledger.open(path)
    with pytest.raises(ConfigError):
        second.lock()
    first.close()
    second.close()


def test_a_ledger_being_written_can_be_opened_and_read(tmp_path: Path) -> None:
    """``status`` while ``submit`` runs: opening a ledger at this schema takes no write
    lock, so a writer's transaction in progress does not stop it."""
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    ledger.add_lines([NewLine(1, b"1", "created")])
    ledger.close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO lines (line, engine, digest, state) VALUES (2, 'chat_gpt', x'00', 'created')"
    )
    try:
        reader = Ledger.open_existing(path)
        try:
            assert reader.counts() == {"created": 1}  # the writer's line is not committed
        finally:
            reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_ledger_without_a_schema_number_is_the_first_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _build(path, _SCHEMA_1)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'schema'")
    db.commit()
    db.close()
    ledger = Ledger.open_existing(path)
    try:
        assert "engine" in {r[1] for r in _rows(path, "PRAGMA table_info(lines)")}
        assert ledger.engines == ("claude",) and ledger.counts() == {}
    finally:
        ledger.close()


def test_closing_twice_is_harmless_and_lets_the_next_run_lock(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    ledger.lock()
    ledger.close()
    ledger.close()
    nxt = Ledger.open(path)
    nxt.lock()
    assert Path(f"{path}.lock").read_text() == f"pid {os.getpid()}"
    ledger.close()  # the first one, closed a third time: the next run's lock stays
    assert Path(f"{path}.lock").exists()
    nxt.close()


async def test_a_write_ahead_never_holds_the_loop_while_the_file_is_locked(
    tmp_path: Path,
) -> None:
    """The write-ahead's quick path inserts on the event loop's thread: when another
    connection holds the file's write lock it must give up at once (busy timeout 0) and hand
    the row to the writer thread, never wait on the loop (every sender would stall)."""
    path = tmp_path / "run.sqlite"
    ledger = Ledger.open(path)
    ledger.lock()
    session = ledger.begin_session()
    writer = ledger.writer()
    writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another writer would hold it
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = asyncio.ensure_future(writer.mark_sending(session, _batch([1], ["t1"])))
        await asyncio.sleep(0.01)
        assert loop.time() - started < 0.5  # the loop ran on: the insert did not wait
        assert not pending.done()
        other.execute("COMMIT")
        batch_id = await asyncio.wait_for(pending, 30)
        await writer.flush()
        assert batch_id >= 1 and ledger.batches_sending() == 1
    finally:
        other.close()
        await writer.close()
        ledger.close()
