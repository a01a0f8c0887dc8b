"""Limits enforced before work starts: the request body's size (for chunked uploads too) and how
many expensive requests on in-process models may run or wait at once."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TooBusy, error_response


class _BodyTooLarge(HTTPException):
    """An HTTPException so a route that is mid-read answers 413 through the usual handler."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> bytes:
        return (
            f"Request body is larger than {self.max_bytes} bytes "
            "(SELFINSTRUCT_MAX_BODY_BYTES); send less or split it."
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._send_413(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(413, self._refusal().decode())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._send_413(scope, receive, send)

    async def _send_413(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", self._refusal().decode())
        await response(scope, receive, send)


class LocalQueue:
    """Admits at most `size` requests on in-process models at once (running or waiting).

    The bundled model answers one prompt at a time on the CPU; a chat with `n=6` takes seconds,
    and without a bound every waiting client holds a connection and memory until a proxy times
    it out. Beyond the bound the answer is 429 with Retry-After: the queue's length times the
    recent time per request.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.active = 0
        self._mean_s = 5.0  # until measured: a short chat on the bundled model
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, what: str) -> Iterator[None]:
        with self._lock:
            if self.active >= self.size:
                wait = max(1, math.ceil(self._mean_s * self.active))
                raise TooBusy(
                    f"{self.active} requests on in-process models are running or waiting "
                    f"(SELFINSTRUCT_LOCAL_QUEUE_SIZE={self.size}); {what} was not started. "
                    f"Retry in about {wait} s.",
                    retry_after_s=wait,
                )
            self.active += 1
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self.active -= 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed
