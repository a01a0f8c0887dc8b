"""The lean HTTP/1.1 client that carries a run's model requests: answers read whole over kept-alive
connections, against a real server (raw asyncio, so each test decides how it frames answers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from generators.http1 import Http1Client

pytestmark = pytest.mark.anyio

Frame = Callable[[bytes], bytes]  # the request's body -> the raw answer


def length_framed(body: bytes) -> bytes:
    payload = json.dumps({"echo": json.loads(body or b"null"), "text": "你好"}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\nX-Request-Id: r1\r\n\r\n"
    return head.encode() + payload


def chunked(body: bytes) -> bytes:
    payload = json.dumps({"echo": json.loads(body or b"null")}).encode()
    half = len(payload) // 2
    parts = [payload[:half], payload[half:]]
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


class Server:
    """Answers each request with `frame`; counts connections; may close after each answer."""

    def __init__(self, frame: Frame, *, close_after: bool = False) -> None:
        self.frame = frame
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                writer.write(self.frame(body))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


async def serve(server: Server) -> AsyncIterator[Server]:
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with server.server:
        yield server


def client() -> Http1Client:
    return Http1Client(headers={"Authorization": "Bearer k"}, timeout_s=5, connect_timeout_s=5)


async def test_answers_come_back_whole_over_one_kept_alive_connection() -> None:
    async for server in serve(Server(length_framed)):
        http = client()
        for i in range(3):
            answer = await http.request("POST", f"{server.url}/completions", {"prompt": i})
            assert answer.status_code == 200 and answer.is_success
            assert answer.json() == {"echo": {"prompt": i}, "text": "你好"}
            assert answer.headers.get("x-request-id") == "r1"
        assert server.connections == 1  # reused, not reopened
        assert b"Authorization: Bearer k" in server.requests[0]
        await http.aclose()


async def test_chunked_answers_are_joined() -> None:
    async for server in serve(Server(chunked)):
        http = client()
        answer = await http.request("POST", f"{server.url}/completions", {"prompt": "long"})
        assert answer.json() == {"echo": {"prompt": "long"}}
        await http.aclose()


async def test_a_connection_the_server_closed_is_replaced_without_a_failure() -> None:
    async for server in serve(Server(length_framed, close_after=True)):
        http = client()
        for _ in range(3):
            answer = await http.request("GET", f"{server.url}/models", None)
            assert answer.json()["echo"] is None
        assert server.connections == 3
        await http.aclose()


async def test_nobody_listening_is_httpx_connect_error() -> None:
    async for server in serve(Server(length_framed)):
        url = server.url
    http = client()
    with pytest.raises(httpx.ConnectError):
        await http.request("GET", f"{url}/models", None)


async def test_a_silent_server_is_a_read_timeout() -> None:
    async for server in serve(Server(lambda body: b"")):
        http = Http1Client(headers={}, timeout_s=0.2, connect_timeout_s=5)
        with pytest.raises(httpx.ReadTimeout):
            await http.request("POST", f"{server.url}/completions", {"prompt": "x"})
        await http.aclose()
