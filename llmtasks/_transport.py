"""HTTP to the service, and the classification of every reply.

The one question this module answers for each call is *could it have created tasks?*
Only what certainly created nothing may be retried; a reply lost after the request left
is ``unknown`` and must never be resent silently.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import functools
import ipaddress
from collections.abc import Callable, Iterable
from typing import Final, Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import msgspec

from llmtasks._errors import AuthError, ConfigError, FundsError, LlmtasksError, ServiceError
from llmtasks._wire import Envelope, decode_envelope

DEFAULT_BASE_URL: Final = "https://api.dataforseo.com"

RETRY_CODES: Final = frozenset({40202, 40209})
AUTH_CODES: Final = frozenset({40100, 40101, 40104})
FUNDS_CODES: Final = frozenset({40200, 40210, 40203})
#: Per-task codes meaning "this task itself is bad": reject it, never resend.
INVALID_TASK_CODES: Final = frozenset({40501, 40503})

Kind = Literal["ok", "retry", "unknown", "auth", "funds", "fatal"]


class Reply(NamedTuple):
    kind: Kind
    http_status: int | None
    status_code: int | None
    message: str
    envelope: Envelope | None = None
    body: bytes = b""
    server_time: float | None = None
    """The reply's HTTP ``Date`` header as a Unix time (second resolution): the service's
    "now", for requests that must not name a future time (id_list)."""


def classify(http_status: int, body: bytes) -> Reply:
    """Classify an HTTP reply that did arrive."""
    try:
        env = decode_envelope(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        env = None
    if env is None:
        if http_status == 429:
            return Reply("retry", http_status, None, "HTTP 429 Too Many Requests")
        if http_status == 401:
            return Reply("auth", http_status, None, "HTTP 401 Unauthorized")
        if http_status == 402:
            return Reply("funds", http_status, None, "HTTP 402 Payment Required")
        if http_status == 404:
            return Reply("fatal", http_status, None, "HTTP 404 Not Found")
        # 5xx or a garbled 2xx: the service may have created the tasks before failing.
        return Reply("unknown", http_status, None, f"HTTP {http_status} without an API envelope")
    code, msg = env.status_code, env.status_message
    if code in RETRY_CODES or http_status == 429:
        return Reply("retry", http_status, code, msg, env)
    if code in AUTH_CODES or http_status == 401:
        return Reply("auth", http_status, code, msg, env)
    if code in FUNDS_CODES or http_status == 402:
        return Reply("funds", http_status, code, msg, env)
    if code == 40400 or http_status == 404:
        return Reply("fatal", http_status, code, msg, env)
    if code >= 50000 or http_status >= 500:
        return Reply("unknown", http_status, code, msg, env)
    return Reply("ok", http_status, code, msg, env, body)


def check_base_url(base_url: str, *, allow_insecure: bool = False) -> str:
    """Refuse plain http except to loopback, and never accept credentials in the URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--base-url must be an http(s) URL such as https://api.dataforseo.com")
    if parts.username or parts.password:
        # Do not echo the URL: it holds a secret.
        raise ConfigError("--base-url must not contain credentials; use DATAFORSEO_LOGIN/PASSWORD")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing plain http to {parts.hostname}: credentials would travel unencrypted; "
            "use https, or pass --allow-insecure if you really mean it"
        )
    return base_url.rstrip("/")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: the only hosts plain http may go to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transport:
    """An aiohttp session with Basic auth. ``post``/``get`` never raise for network trouble:
    they return a classified ``Reply``."""

    def __init__(
        self,
        *,
        base_url: str,
        login: str,
        password: str,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 30,
        allow_insecure: bool = False,
    ) -> None:
        self.base_url = check_base_url(base_url, allow_insecure=allow_insecure)
        # Built here once and kept only in the session's default headers: never logged.
        token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
        self._headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=connector,
            headers=self._headers,
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, path: str, body: bytes) -> Reply:
        return await self._call("POST", path, body)

    async def get(self, path: str) -> Reply:
        return await self._call("GET", path, None)

    async def _call(self, method: str, path: str, body: bytes | None) -> Reply:
        assert self._session is not None, "use 'async with Transport(...)'"
        url = self.base_url + path
        try:
            async with self._session.request(method, url, data=body) as resp:
                raw = await resp.read()
                reply = classify(resp.status, raw)
                when = parse_http_date(resp.headers.get("Date"))
                return reply if when is None else reply._replace(server_time=when)
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            # The connection never opened: nothing reached the service.
            return Reply("retry", None, None, f"cannot connect: {_describe(exc)}")
        except TimeoutError:
            return Reply("unknown", None, None, "no reply before the timeout")
        except aiohttp.ClientError as exc:
            return Reply("unknown", None, None, f"connection lost: {_describe(exc)}")


class MemoryTransport:
    """A transport without a network, for unit tests: each call gets the next of
    ``replies`` (or ``answer(method, path, body)``'s reply); ``requests`` records them."""

    def __init__(
        self,
        replies: Iterable[Reply] | Callable[[str, str, bytes | None], Reply],
        *,
        base_url: str = "memory:",
    ) -> None:
        self.base_url = base_url
        self._answer = replies if callable(replies) else None
        self._replies = iter(()) if callable(replies) else iter(replies)
        self.requests: list[tuple[str, str, bytes | None]] = []

    async def get(self, path: str) -> Reply:
        return self._reply("GET", path, None)

    async def post(self, path: str, body: bytes) -> Reply:
        return self._reply("POST", path, body)

    def _reply(self, method: str, path: str, body: bytes | None) -> Reply:
        self.requests.append((method, path, body))
        if self._answer is not None:
            return self._answer(method, path, body)
        reply = next(self._replies, None)
        assert reply is not None, f"no reply left for {method} {path}"
        return reply


# Every reply has one and it changes once a second: parsed once per distinct value.
@functools.lru_cache(maxsize=8)
def parse_http_date(value: str | None) -> float | None:
    """An HTTP ``Date`` header (``Tue, 01 Dec 2026 02:00:00 GMT``) as a Unix time, or None."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name host and port, never headers, so no credential can leak here.
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def describe_code(reply: Reply) -> str:
    """``status 40100, HTTP 401``: what the service said, for messages."""
    parts = []
    if reply.status_code is not None:
        parts.append(f"status {reply.status_code}")
    if reply.http_status is not None:
        parts.append(f"HTTP {reply.http_status}")
    return ", ".join(parts) or "no reply"


def stop_error(reply: Reply, successes: int) -> LlmtasksError:
    """The error that stops a run after an ``auth``, ``funds`` or ``fatal`` reply."""
    what = f"{reply.message} ({describe_code(reply)})"
    if reply.kind == "auth":
        if successes:
            return AuthError(f"the service stopped accepting the credentials: {what}")
        return AuthError(f"the service refused the credentials: {what}")
    if reply.kind == "funds":
        return FundsError(f"the account cannot pay for more tasks: {what}")
    return ServiceError(f"the service refused the call: {what}")
