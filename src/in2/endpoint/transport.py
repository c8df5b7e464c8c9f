"""A wall-clock deadline and a size cap on every HTTP attempt, in the httpx client of the SDK.

httpx's timeouts bound each socket operation, so a server that drips a byte every few seconds
never times out, and a body is read whatever its size. Here each attempt gets one deadline
(`timeout_s` from the moment it is handed to the transport): the connect, pool, write and
response-header waits are each given only what is left of it, and the body is checked after
every chunk; a body beyond `max_response_mb` (by Content-Length, or as it arrives) ends the
attempt. Both surface through the SDK as a timeout / connection error, which in2.endpoint.retry
retries. Cost: a clock read per chunk and per socket wait.

Limit: the body's read timeout is fixed when the body starts (what is left then), so a server
that sends part of the body and then stalls is cut off at most that much after the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2


class ResponseTooLarge(httpx2.TransportError):
    """The body is larger than `max_response_mb`."""


class _Remaining(dict):
    """httpcore's timeout extension whose every value is what is left of the deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def get(self, key: str, default: Any = None) -> float:
        return max(0.001, self.deadline - time.monotonic())


class _CappedStream(httpx2.SyncByteStream):
    def __init__(
        self, inner: httpx2.SyncByteStream, request: httpx2.Request, deadline: float, cap: float
    ) -> None:
        self.inner, self.request, self.deadline, self.cap = inner, request, deadline, cap

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self.inner:
            size += len(chunk)
            if size > self.cap:
                raise ResponseTooLarge(f"body over {self.cap:,} bytes", request=self.request)
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout("attempt deadline passed", request=self.request)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class BoundedClient(httpx2.Client):
    """An httpx client (env proxies and all) whose every attempt is bounded as the module says."""

    def __init__(self, timeout_s: float, max_response_mb: float | None, connections: int) -> None:
        """`max_response_mb=None`: no size cap (Batch API result files run to hundreds of MB)."""
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        super().__init__(timeout=timeout_s, limits=limits, follow_redirects=True)
        self.timeout_s = timeout_s
        self.max_bytes = float("inf") if max_response_mb is None else int(max_response_mb * 2**20)

    def send(
        self, request: httpx2.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx2.Response:
        asked = (request.extensions.get("timeout") or {}).get("read")  # the call's own timeout
        deadline = time.monotonic() + min(asked or self.timeout_s, self.timeout_s)
        request.extensions = {**request.extensions, "timeout": _Remaining(deadline)}
        response = super().send(request, stream=True, **kwargs)
        try:
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise ResponseTooLarge(
                    f"Content-Length {int(length):,} over {self.max_bytes:,} bytes",
                    request=request,
                )
            assert isinstance(response.stream, httpx2.SyncByteStream)
            response.stream = _CappedStream(response.stream, request, deadline, self.max_bytes)
            if not stream:
                response.read()
        except BaseException:
            response.close()
            raise
        return response
