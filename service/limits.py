"""Connection and memory limits at the HTTP edge: slow clients and large bodies cannot exhaust a worker.

    install_head_timeout(s)  uvicorn closes a connection whose request head (request line + headers)
                             is not complete s seconds after it opened or after its previous response.
                             uvicorn itself only times out idle keep-alive connections: a client that
                             sends half a header (or trickles it) was held forever.
    UploadBudget             bodies of min_bytes or more share a byte budget per worker: a request past
                             it waits with its body unread (uvicorn stops reading the socket after
                             64 KiB), so eight 30 MB uploads at once are handled two at a time.
    deadline_receive         an ASGI `receive` that gives up when the whole body has not arrived in
                             time (BodyLimitMiddleware answers 408 then).

BentoML 1.4 passes no header-timeout or connection-limit option to uvicorn, hence the patch of
uvicorn's HTTP protocol classes (uvicorn is pinned in pyproject.toml; the patch fails loudly if the
classes change, and tests/test_limits.py checks it against real half-sent requests).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import anyio

Receive = Callable[[], Awaitable[dict]]


class BodyTimeout(Exception):
    """The client did not send its whole body within the deadline."""


class BudgetTimeout(Exception):
    """The upload waited longer than allowed for memory to become free."""


def install_head_timeout(seconds: float) -> None:
    """Patch uvicorn's HTTP protocols (h11, and httptools when installed) with the request-head deadline."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    protocols: list[type] = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        protocols.append(HttpToolsProtocol)
    except ImportError:  # httptools not installed: uvicorn uses h11
        pass
    for cls in protocols:
        if not all(hasattr(cls, name) for name in ("connection_made", "on_response_complete")):
            raise RuntimeError(f"uvicorn's {cls.__name__} changed: cannot install the request-head timeout")
        if "_head_timeout" not in cls.__dict__:
            _wrap(cls)
        cls._head_timeout = seconds


def _wrap(cls: type) -> None:
    made, complete = cls.connection_made, cls.on_response_complete

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm(self, None)

    def on_response_complete(self: Any) -> None:
        finished = self.cycle  # captured first: completing may start the next request's cycle
        complete(self)
        _arm(self, finished)

    cls.connection_made, cls.on_response_complete = connection_made, on_response_complete


def _arm(protocol: Any, previous_cycle: Any) -> None:
    """Close the connection unless a new request head (a new cycle) has arrived by the deadline."""

    def expire() -> None:
        transport = protocol.transport
        if protocol.cycle is previous_cycle and transport is not None and not transport.is_closing():
            transport.close()

    protocol.loop.call_later(type(protocol)._head_timeout, expire)


class UploadBudget:
    """A byte budget shared by the large request bodies of one worker (an async weighted semaphore).

    One body larger than the whole budget is admitted alone, never refused for its size here (the
    body limit is BodyLimitMiddleware's job).
    """

    def __init__(self, budget_bytes: int, min_bytes: int) -> None:
        self.budget, self.min_bytes, self.in_use = budget_bytes, min_bytes, 0
        self._changed: asyncio.Condition | None = None

    def cost(self, declared: int | None, max_bytes: int) -> int:
        """Bytes a request reserves: its Content-Length, the body limit when unknown; 0 if small."""
        size = max_bytes if declared is None else declared
        return 0 if size < self.min_bytes else min(size, self.budget)

    async def acquire(self, cost: int, wait_s: float) -> None:
        """Wait until `cost` bytes fit (BudgetTimeout after `wait_s`)."""
        if cost == 0:
            return
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.in_use + cost <= self.budget), wait_s)
            except asyncio.TimeoutError:
                raise BudgetTimeout() from None
            self.in_use += cost

    async def release(self, cost: int) -> None:
        if cost == 0 or self._changed is None:
            return
        async with self._changed:
            self.in_use -= cost
            self._changed.notify_all()


def deadline_receive(receive: Receive, seconds: float) -> Receive:
    """`receive` that raises BodyTimeout when the body is not complete `seconds` after the first call."""
    state: dict[str, Any] = {"deadline": None, "done": False}

    async def wrapped() -> dict:
        if state["done"]:
            return await receive()  # after the body: e.g. waiting for http.disconnect
        if state["deadline"] is None:
            state["deadline"] = time.monotonic() + seconds
        try:
            with anyio.fail_after(max(0.0, state["deadline"] - time.monotonic())):
                message = await receive()
        except TimeoutError:
            wrapped.timed_out = True  # type: ignore[attr-defined]
            raise BodyTimeout() from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            state["done"] = True
        return message

    wrapped.timed_out = False  # type: ignore[attr-defined]
    return wrapped
