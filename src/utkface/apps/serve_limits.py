"""What keeps the web demo (`serve.py`) alive under load and abuse: its error type, the request
body limit, and the admission gate in front of the model.

Each worker process runs at most `concurrency` predictions at once and lets at most `queue` more
requests wait for one; each admitted request may hold an upload of up to `max_bytes` in memory,
so a worker holds at most `(concurrency + queue) * max_bytes` of uploads. A prediction request
past that bound is answered at once, before its body is read:

    503 {"error": "busy", "detail": ...}            with Retry-After: seconds

A request that is admitted but cannot finish in time is answered with:

    408 {"error": "upload_timeout", ...}            its body did not arrive in `upload_timeout` s
    503 {"error": "queue_timeout", ...}             it waited `queue_timeout` s for a free slot
                                                    (with Retry-After)

A prediction that has started is not cut short (a forward pass cannot be cancelled); its slot is
held until it ends. uvicorn's own `limit_concurrency` also answers 503, but it counts every
connection and task (the page and `/api/info` too), without `Retry-After` or a JSON body, so the
gate is ours.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import anyio
from fastapi.responses import JSONResponse

from utkface.runtime.errors import OptionError

CONCURRENCY = 1  # predictions at once per worker: one forward pass already uses every core
QUEUE = 16  # requests that may wait per worker beyond those running
UPLOAD_TIMEOUT_S = 30.0  # seconds to receive a body: 10 MB needs about 3 Mbit/s
QUEUE_TIMEOUT_S = 15.0  # seconds to wait for a slot before giving up with 503
SERVICE_TIME_S = 0.05  # first guess of one prediction's time, before one is measured

T = TypeVar("T")


class ApiError(Exception):
    """A request that cannot be served: answered as `{"error": code, "detail": detail}` with
    `status` and `headers`."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.code, "detail": self.detail}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Admission:
    """The gate before the model: `concurrency` predictions run, `queue` requests wait, the
    rest get 503 with `Retry-After`. One per app (so one per worker process); it lives on the
    event loop's thread, so plain counters are safe."""

    def __init__(
        self,
        concurrency: int = CONCURRENCY,
        queue: int = QUEUE,
        upload_timeout: float = UPLOAD_TIMEOUT_S,
        queue_timeout: float = QUEUE_TIMEOUT_S,
    ):
        if concurrency < 1 or queue < 0:
            raise OptionError(
                f"concurrency must be >= 1 and queue >= 0, got {concurrency}, {queue}"
            )
        if upload_timeout <= 0 or queue_timeout <= 0:
            raise OptionError("upload_timeout and queue_timeout must be positive seconds")
        self.concurrency, self.queue = concurrency, queue
        self.upload_timeout, self.queue_timeout = upload_timeout, queue_timeout
        self.admitted = 0  # requests between admission and their answer
        self.service_time = SERVICE_TIME_S  # moving average of one prediction, seconds
        self._slots = anyio.CapacityLimiter(concurrency)
        self._threads = anyio.CapacityLimiter(concurrency)  # anyio's default pool stops at 40

    @property
    def capacity(self) -> int:
        return self.concurrency + self.queue

    def limits(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "queue": self.queue,
            "upload_timeout_s": self.upload_timeout,
            "queue_timeout_s": self.queue_timeout,
        }

    def retry_after(self) -> str:
        """Whole seconds until the requests now admitted should be done (at least 1)."""
        waves = math.ceil(max(self.admitted, 1) / self.concurrency)
        return str(max(1, math.ceil(waves * self.service_time)))

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place among the `concurrency + queue` admitted requests, or raise 503."""
        if self.admitted >= self.capacity:
            raise ApiError(
                503,
                "busy",
                f"the server is busy ({self.concurrency} running, {self.queue} waiting); "
                "retry after the time in the Retry-After header",
                {"Retry-After": self.retry_after()},
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def upload(self, receiving: Awaitable[T]) -> T:
        """Await the request body, or raise 408 after `upload_timeout` seconds."""
        with anyio.move_on_after(self.upload_timeout):
            return await receiving
        raise ApiError(
            408,
            "upload_timeout",
            f"the upload did not arrive within {self.upload_timeout:g} s",
            {"Connection": "close"},  # the rest of the body is not read
        )

    async def run(self, function, *args):
        """`function(*args)` in a worker thread once a slot is free; 503 after waiting
        `queue_timeout` seconds for one. A prediction that has started runs to its end."""
        acquired = False
        with anyio.move_on_after(self.queue_timeout):
            await self._slots.acquire()
            acquired = True
        if not acquired:
            raise ApiError(
                503,
                "queue_timeout",
                f"waited {self.queue_timeout:g} s for a free slot; the server is busy",
                {"Retry-After": self.retry_after()},
            )
        try:
            started = time.perf_counter()
            result = await anyio.to_thread.run_sync(function, *args, limiter=self._threads)
            elapsed = time.perf_counter() - started
            self.service_time = 0.8 * self.service_time + 0.2 * elapsed
            return result
        finally:
            self._slots.release()


class BodyLimit:
    """ASGI middleware: 413 as soon as a request body passes `max_bytes` (by Content-Length or
    by counting a streamed body), before anything is parsed or spooled."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode()
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large()(scope, None, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large()(scope, None, send)

    def _too_large(self) -> JSONResponse:
        return ApiError(
            413, "too_large", f"the upload is larger than {self.max_bytes / 2**20:.0f} MB"
        ).response()


class _TooLarge(Exception):
    pass
