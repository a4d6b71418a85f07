"""One task_get result as flat values: the answer, the reasoning, the counts, the citations.

Joins and choices made once, here, for every export and the report:

- ``answer_text`` is the text of every section of every ``message`` item, in order, joined
  by a blank line; ``reasoning_text`` the same over ``reasoning`` items.
- A citation is one annotation of a message section; ``position`` counts them from 1 in the
  order they come in the answer. ``cited_text`` is the annotation's own ``text`` when the
  service sends one, else ``text[start_index:end_index]`` of its section (None when the
  indexes do not fit the text).
- ``domain`` is the registered domain (the Public Suffix List's ICANN section: the part a
  registrant owns, ``bbc.co.uk`` for ``www.bbc.co.uk``) of ``direct_url`` when present, else
  of ``url``. A gemini citation without ``direct_url`` has only a Google redirect as ``url``;
  it is not counted as google.com: its domain comes from its ``title`` when that is a host
  name (gemini titles its sources with their site's name), else it is None.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import urlsplit

from llmtasks._llm_result import Annotation, LlmResult

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

#: Hosts of gemini's grounding redirects: they say nothing about the source.
REDIRECT_HOSTS: Final = frozenset({"vertexaisearch.cloud.google.com"})
_HOSTNAME: Final = re.compile(
    r"(?i)^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+"
    r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})\.?$"
)
_JOIN: Final = "\n\n"


class Citation(NamedTuple):
    position: int
    title: str | None
    url: str | None
    direct_url: str | None
    domain: str | None
    start_index: int | None
    end_index: int | None
    cited_text: str | None


class Flat(NamedTuple):
    """The columns of one result row that come from the result itself."""

    model_name: str | None
    answer_text: str | None
    reasoning_text: str | None
    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    web_search: bool | None
    money_spent: float | None
    datetime: str | None
    fan_out_queries: list[str] | None
    citations: list[Citation]
    cited_domains: list[str]


EMPTY: Final = Flat(None, None, None, None, None, None, None, None, None, None, [], [])


def flatten(result: LlmResult | None) -> Flat:
    if result is None:
        return EMPTY
    answer: list[str] = []
    reasoning: list[str] = []
    citations: list[Citation] = []
    for item in result.items or ():
        kind = item.type
        for section in item.sections or ():
            text = section.text
            if kind == "message":
                if text is not None:
                    answer.append(text)
                for a in section.annotations or ():
                    citations.append(
                        Citation(
                            position=len(citations) + 1,
                            title=a.title,
                            url=a.url,
                            direct_url=a.direct_url,
                            domain=citation_domain(a.url, a.direct_url, a.title),
                            start_index=a.start_index,
                            end_index=a.end_index,
                            cited_text=a.text if a.text is not None else _span(text, a),
                        )
                    )
            elif kind == "reasoning" and text is not None:
                reasoning.append(text)
    domains = list(dict.fromkeys(c.domain for c in citations if c.domain is not None))
    return Flat(
        model_name=result.model_name,
        answer_text=_JOIN.join(answer) if answer else None,
        reasoning_text=_JOIN.join(reasoning) if reasoning else None,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        reasoning_tokens=result.reasoning_tokens,
        web_search=result.web_search,
        money_spent=result.money_spent,
        datetime=result.datetime,
        fan_out_queries=result.fan_out_queries,
        citations=citations,
        cited_domains=domains,
    )


def _span(text: str | None, a: Annotation) -> str | None:
    start, end = a.start_index, a.end_index
    if text is None or start is None or end is None or not 0 <= start <= end <= len(text):
        return None
    return text[start:end]


def citation_domain(url: str | None, direct_url: str | None, title: str | None) -> str | None:
    """The registered domain a citation points to (see the module's docstring)."""
    if direct_url:
        found = registered_domain(direct_url)
        if found is not None:
            return found
    host = _host(url) if url else None
    if host is None:
        return None
    if host in REDIRECT_HOSTS:
        if title and _HOSTNAME.match(title.strip()):
            return _registered(title.strip().lower().rstrip("."))
        return None
    return _registered(host)


def registered_domain(url: str) -> str | None:
    """``https://www.bbc.co.uk/news`` → ``bbc.co.uk``; an IP address or a name with no
    public suffix (``localhost``) is its own domain; None when there is no host."""
    host = _host(url)
    return None if host is None else _registered(host)


# scheme://[userinfo@]host[:port]: the common case, read without urlsplit (a third of an
# export's time went there). Anything else (IPv6 literals, no "//") goes to urlsplit.
_AUTHORITY: Final = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//(?:[^/?#@\s]*@)?([^/?#:\[\]\s@]+)(?::\d*)?(?=[/?#]|$)"
)


def _host(url: str) -> str | None:
    text = url.strip()
    m = _AUTHORITY.match(text)
    if m:
        host = m.group(1).lower()
    else:
        try:
            host = urlsplit(text if "//" in text else f"//{text}").hostname or ""
        except ValueError:  # e.g. an invalid IPv6 literal
            return None
    return host.rstrip(".") or None


@lru_cache(maxsize=65536)
def _registered(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    found = _psl().privatesuffix(host)
    return found if found else host


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # publicsuffixlist ships the list in its wheel (and is re-released as the list changes):
    # nothing is fetched at run time. only_icann: a registered domain, not a private suffix
    # such as github.io or blogspot.com, so foo.github.io counts as github.io.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)
