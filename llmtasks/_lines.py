"""Physical lines of an input: opening a file or stdin, splitting on b"\\n", the BOM, and
lines longer than the limit hashed and dropped chunk by chunk (memory stays flat).

Every format (``_input``, ``_input_csv``) reads through ``physical_lines``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Generator
from typing import BinaryIO, Final

from llmtasks._errors import InputError

STDIN: Final = "-"
DIGEST_BYTES: Final = 8

_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_CHUNK: Final = 1 << 16
_BUFFER_BYTES: Final = 1 << 18


def record_digest(raw: bytes) -> bytes:
    """The fingerprint of one input record kept in the ledger (resume checks it)."""
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


def open_source(source: str, name: str) -> tuple[BinaryIO, bool]:
    """(the byte stream of ``source``, whether the caller must close it). Raises InputError."""
    if source == STDIN:
        stdin = sys.stdin
        if stdin is None:
            raise InputError("<stdin>: there is no standard input")
        # sys.stdin is text; its .buffer has the bytes (a test may install a bare BytesIO).
        buffer: BinaryIO = getattr(stdin, "buffer", None) or stdin  # type: ignore[assignment]
        return buffer, False
    try:
        # Closed by the reader's finally (``_input._generate``): not a with block.
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
Physical = tuple[bytes, None] | tuple[None, tuple[bytes, int]]


def physical_lines(
    stream: BinaryIO, name: str, max_line_bytes: int
) -> Generator[Physical, None, None]:
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
