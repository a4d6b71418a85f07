"""Local validation (``_task`` and ``_rules``) judged by the documented rules alone.

Every expected value comes from the 2026 digest (../shared/api/README.md, "A task ... the
rules as documented in 2026"): a task the service certainly refuses is refused locally with
the field named; one the docs leave unsettled is sent with one warning per kind and run.
"""

from __future__ import annotations

import msgspec
import pytest

from llmtasks._task import decode_task


def test_user_prompt_is_at_most_500_characters() -> None:
    assert decode_task('{"user_prompt": "%s"}' % ("x" * 500)).user_prompt == "x" * 500
    with pytest.raises(msgspec.ValidationError):
        decode_task('{"user_prompt": "%s"}' % ("x" * 501))
