"""A lean HTTP/1.1 client for the model server's plain JSON requests.

Why not httpx for these: a run sends hundreds of small requests a second, and httpx with httpcore
spent about 0.3 ms of CPU on each (request and URL objects, an h11 state machine, anyio
wrappers, and a `poll` system call per idle connection every time a request was placed, to see
whether the server had closed it), a quarter of the service's CPU per accepted task
(docs/BENCHMARKS.md). Here each connection is an asyncio protocol parsed by httptools (llhttp,
the C parser uvicorn uses), and the event loop reports a closed connection as it happens, so
nothing is polled.

Only what OpenAIBackend needs: one request at a time per connection, kept alive and reused last
in first out; bodies by Content-Length, chunked, or until the server closes; connect and read
timeouts. Failures raise httpx's own exception classes (`ConnectError`, `ReadTimeout`,
`RemoteProtocolError`, ...) so the backend's retry rules and messages stay what they were.
Streams, proxies and the odd probe stay on httpx (`generators.openai_compat`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query
    host_header: str


@lru_cache(maxsize=256)  # base URL + path: a handful per endpoint
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, host, port, path, parts.netloc.rsplit("@", 1)[-1])


def direct(url: str) -> bool:
    """Whether requests to `url` go straight to the server: no proxy from the environment
    applies (httpx honours HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY; such URLs stay on
    httpx)."""
    target = _target(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(target.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(target.host))


@dataclass(frozen=True, slots=True)
class _Sent:
    url: str


class Answer:
    """A whole response: the parts of `httpx.Response` that OpenAIBackend reads."""

    __slots__ = ("_reason", "content", "headers", "request", "status_code")
    is_stream_consumed = True

    def __init__(
        self, status_code: int, headers: Mapping[str, str], content: bytes, url: str, reason: str
    ) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.content = content
        self.request = _Sent(url)
        self._reason = reason

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def reason_phrase(self) -> str:
        if self._reason:
            return self._reason
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for its whole answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.got_bytes = False  # of the current exchange's answer
        self._waiter: asyncio.Future[Answer] | None = None
        self._url = ""

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.got_bytes = True
        self._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._until_close:
            self._complete()  # a body delimited by the end of the connection
        elif exc is not None:
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        else:
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))

    # --- httptools callbacks ---

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        h = self._headers
        status = self._parser.get_status_code()
        self._until_close = (
            "content-length" not in h
            and "transfer-encoding" not in h
            and status >= 200
            and status not in (204, 304)
            and self._method != "HEAD"
        )

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # --- the exchange ---

    async def exchange(self, method: str, url: str, head: bytes, payload: bytes) -> Answer:
        assert self.transport is not None
        self._method = method
        self._url = url
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._reason = ""
        self._headers_done = self._until_close = self.got_bytes = False
        self._waiter = self.loop.create_future()
        self._last_read = self.loop.time()
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.read_timeout_s, self._check_timeout
        )
        self.transport.write(head + payload if len(payload) < 65536 else head)
        if len(payload) >= 65536:
            self.transport.write(payload)
        try:
            return await self._waiter
        except BaseException:
            self.close()  # cancelled or failed midway: its state is unknown
            raise
        finally:
            self._waiter = None
            self._cancel_timer()

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        content = b"".join(self._body)
        encoding = self._headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            try:
                content = _decode(content, encoding)
            except (zlib.error, ValueError) as exc:
                waiter.set_exception(httpx.DecodingError(f"{encoding} body: {exc}"))
                return
        status = self._parser.get_status_code()
        if not self._until_close and not self._parser.should_keep_alive():
            self.close()
        waiter.set_result(Answer(status, self._headers, content, self._url, self._reason))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _check_timeout(self) -> None:
        self._timer = None
        idle = self.loop.time() - self._last_read
        if idle < self.read_timeout_s:  # bytes came meanwhile: the timeout counts from them
            self._timer = self.loop.call_later(self.read_timeout_s - idle, self._check_timeout)
            return
        self._fail(httpx.ReadTimeout(f"no answer within {self.read_timeout_s} s"))

    def _cancel_timer(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _decode(content: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(content, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(content)
        except zlib.error:
            return zlib.decompress(content, -zlib.MAX_WBITS)
    raise ValueError(f"unsupported content-encoding {encoding!r}")


class Http1Client:
    """Keep-alive connections per server, for JSON requests answered whole.

    Belongs to the event loop it is first used on, as httpx clients do. The caller bounds the
    requests in flight (generators.pool), so connections are never queued for here.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.tls = tls
        fixed = {"Accept-Encoding": "identity", **headers, "Connection": "keep-alive"}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def request(self, method: str, url: str, body: dict[str, Any] | None) -> Answer:
        """One request; its whole answer, or an httpx exception for what went wrong."""
        target = _target(url)
        payload = b""
        extra = ""
        if body is not None:  # as httpx encodes `json=`
            payload = json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            extra = f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        elif method in ("POST", "PUT", "PATCH"):
            extra = "Content-Length: 0\r\n"
        head = (
            f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"{self._fixed}{extra}\r\n"
        ).encode("latin-1")
        key = (target.scheme, target.host, target.port)
        connection = self._take_idle(key)
        if connection is not None:
            try:
                return await self._exchange(key, connection, method, url, head, payload)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if connection.got_bytes:
                    raise
                # The server closed the kept-alive connection as the request went out: the
                # request never reached it, so it goes again on a new connection.
        connection = await self._connect(target)
        return await self._exchange(key, connection, method, url, head, payload)

    async def _exchange(
        self,
        key: tuple[str, str, int],
        connection: _Connection,
        method: str,
        url: str,
        head: bytes,
        payload: bytes,
    ) -> Answer:
        try:
            answer = await connection.exchange(method, url, head, payload)
        finally:
            if connection.closed:
                self._open.discard(connection)
        if not connection.closed:
            self._idle.setdefault(key, []).append(connection)
        return answer

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if target.scheme == "https":
            tls = self.tls or ssl.create_default_context()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self.timeout_s),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {target.host}:{target.port} within {self.connect_timeout_s} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self._open.add(protocol)
        return protocol

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
