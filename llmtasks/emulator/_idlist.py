"""id_list's query rules, from the 2026 docs digest.

``datetime_from`` and ``datetime_to`` are required as ``yyyy-mm-dd hh:mm:ss +00:00``;
``datetime_to`` must not be in the future (judged by the service's clock, the one its ``Date``
headers show); the window reaches back 6 months, 1 month with ``include_metadata``; ``limit``
1..1000; ``sort`` asc/desc.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import msgspec

from llmtasks.emulator._rules import INVALID_POST, Refusal, invalid, unknown

LIMIT_MAX: Final = 1000
# "6 months" and "1 month" read generously, so a client counting months of 30 or 31 days
# is never refused for a window the docs allow.
REACH_S: Final = 184 * 86400.0
METADATA_REACH_S: Final = 31 * 86400.0
_FIELDS: Final = frozenset(
    ("datetime_from", "datetime_to", "limit", "offset", "sort", "include_metadata")
)
_FORMAT: Final = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}$")


class Query(msgspec.Struct, frozen=True):
    from_unix: float
    to_unix: float
    limit: int
    offset: int
    descending: bool
    include_metadata: bool


def _when(field: str, value: Any) -> float | Refusal:
    if value is None:
        return invalid(field, "is required")
    if type(value) is not str or not _FORMAT.match(value):
        return invalid(field, "must look like '2026-11-25 10:00:00 +00:00'")
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return invalid(field, f"is not a valid date and time: '{value}'")


def _whole(value: Any) -> bool:
    return type(value) is int or (type(value) is float and value.is_integer())


def parse_query(fields: Any, now_unix: float) -> Query | Refusal:
    """One element of the id_list POST array, judged at the service's ``now_unix``."""
    if type(fields) is not dict:
        return INVALID_POST, "Invalid POST data."
    extra = [k for k, v in fields.items() if v is not None and k not in _FIELDS]
    if extra:
        return unknown(extra)
    lo = _when("datetime_from", fields.get("datetime_from"))
    if isinstance(lo, tuple):
        return lo
    hi = _when("datetime_to", fields.get("datetime_to"))
    if isinstance(hi, tuple):
        return hi
    metadata = fields.get("include_metadata")
    if metadata is not None and type(metadata) is not bool:
        return invalid("include_metadata", "must be a boolean")
    if hi > now_unix:
        return invalid("datetime_to", "must not be in the future")
    if lo > hi:
        return invalid("datetime_from", "must not be later than datetime_to")
    reach, months = (METADATA_REACH_S, "1 month") if metadata else (REACH_S, "6 months")
    if lo < now_unix - reach:
        with_meta = " with include_metadata" if metadata else ""
        return invalid("datetime_from", f"must be within the last {months}{with_meta}")
    limit = fields.get("limit")
    if limit is None:
        limit = LIMIT_MAX
    elif not _whole(limit) or not 1 <= limit <= LIMIT_MAX:
        return invalid("limit", f"must be an integer 1..{LIMIT_MAX}")
    offset = fields.get("offset")
    if offset is None:
        offset = 0
    elif not _whole(offset) or offset < 0:
        return invalid("offset", "must be an integer >= 0")
    sort = fields.get("sort")
    if sort is not None and sort not in ("asc", "desc"):
        return invalid("sort", "must be 'asc' or 'desc'")
    return Query(lo, hi, int(limit), int(offset), sort == "desc", bool(metadata))
