"""Batching: input lines in chunks, and the batch of up to 100 tasks one POST carries."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Final

import msgspec

from llmtasks._decode import InputLine

#: Input lines handed over at a time (one worker-thread hop per chunk when reading a file).
READ_CHUNK: Final = 1024


def prompt_digest(prompt: str) -> bytes:
    """What the write-ahead keeps of a user's own tag's prompt: reconcile tells apart the
    lines that share a tag by it (a generated tag names its line)."""
    return hashlib.blake2b(prompt.encode(), digest_size=8).digest()


class Batch:
    """Up to 100 tasks on their way: line numbers, tags, input digests and each task's JSON,
    encoded once when read (the tag and push URLs spliced in, no copy of the task object).

    ``user_tags``: the lines whose tag is the user's own, as (index in the batch, prompt
    digest); every other tag is generated from the line number (``Ledger.tag_prefix``)."""

    __slots__ = ("digests", "lines", "parts", "prepared", "tags", "user_tags")

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.tags: list[str] = []
        self.parts: list[bytes] = []
        self.digests: list[bytes] = []
        self.user_tags: list[tuple[int, bytes]] = []
        #: The id of the write-ahead row made for its next POST and not yet used (see
        #: ``LedgerWriter.prepare``).
        self.prepared: int | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def body(self) -> bytes:
        return b"[" + b",".join(self.parts) + b"]"

    def cut(self, size: int) -> list[Batch]:
        """The full batches of ``size`` lines at the front; this one keeps the rest."""
        if len(self.lines) < size:
            return []
        full: list[Batch] = []
        n = len(self.lines) // size * size
        for i in range(0, n, size):
            b = Batch()
            b.lines = self.lines[i : i + size]
            b.tags = self.tags[i : i + size]
            b.parts = self.parts[i : i + size]
            b.digests = self.digests[i : i + size]
            if self.user_tags:
                b.user_tags = [(j - i, d) for j, d in self.user_tags if i <= j < i + size]
            full.append(b)
        del self.lines[:n], self.tags[:n], self.parts[:n], self.digests[:n]
        self.user_tags = [(j - n, d) for j, d in self.user_tags if j >= n]
        return full

    def write_ahead(self) -> bytes:
        """What the write-ahead record keeps of these lines besides their numbers: their
        digests, and the tags the line numbers do not give (see ``Ledger.in_flight``)."""
        user = [(i, self.tags[i], digest) for i, digest in self.user_tags]
        return _encode_write_ahead((self.digests, user))


_encode_write_ahead = msgspec.msgpack.Encoder().encode


async def chunked(
    lines: Iterable[InputLine] | AsyncIterable[InputLine],
) -> AsyncIterator[list[InputLine]]:
    """The lines in lists of ``READ_CHUNK``; a sync iterator (a file) is read in a worker
    thread so the loop never waits on I/O."""
    if isinstance(lines, AsyncIterable):
        chunk: list[InputLine] = []
        async for il in lines:
            chunk.append(il)
            if len(chunk) >= READ_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    it: Iterator[InputLine] = iter(lines)
    while chunk := await asyncio.to_thread(take, it, READ_CHUNK):
        yield chunk


def take(it: Iterator[InputLine], n: int) -> list[InputLine]:
    return list(itertools.islice(it, n))
