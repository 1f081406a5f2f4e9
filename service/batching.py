"""Adaptive batching plumbing: feed BentoML's dispatcher of a batchable API from inside the process.

BentoML 1.4 keeps one CorkDispatcher per batchable API in its `ServiceAppFactory` and only exposes it
through HTTP. `batch_entry` finds that factory through the API's route (each route's endpoint is
`functools.partial(factory.api_endpoint_wrapper, name)`) and returns `factory.batch_infer` bound to
the API, so other endpoints of the same worker queue decoded arrays on the very dispatcher that
serves the API, with BentoML's batching metrics, without an HTTP hop. It fails loudly if a BentoML
upgrade changes these internals (bentoml is pinned to 1.4.40).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Awaitable, Callable

from bentoml._internal.marshal.dispatcher import CorkDispatcher

logger = logging.getLogger("bentoml.glasses")

BatchInfer = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


class GreedyDispatcher(CorkDispatcher):
    """BentoML's CorkDispatcher with a release rule for CPU inference.

    A batch leaves as soon as the model is free, taking everything queued meanwhile (up to
    max_batch_size); a request that has queued longer than max_latency_ms is shed with 503, as
    upstream does. Upstream's controller instead waits while
    `n * (age of newest + tick) <= mean historical queue wait * 0.95`: after a burst that mean is
    large (it includes time spent behind the running batch), each later single request waits about
    that long and logs the same wait again, so idle batch-1 latency stays at burst level for minutes
    (measured here: 83-135 ms p50 instead of 9-12 ms). On a CPU a batch costs roughly linear time
    per image, so waiting for company while the model is idle buys nothing.
    """

    async def controller(self) -> None:
        while True:
            try:
                async with self._wake_event:  # block until there's any request in queue
                    await self._wake_event.wait_for(self._queue.__len__)
                if time.time() - self._queue[0].enqueue_time >= self.max_latency:
                    self._queue.popleft().future.cancel()  # -> fallback -> 503 ServiceUnavailable
                    continue
                if self._sema.is_locked():  # one batch at a time, as upstream
                    await asyncio.sleep(self.TICKET_INTERVAL)
                    continue
                self._sema.acquire()
                self._loop.create_task(self.outbound_call(tuple(self._get_inputs())))
            except Exception:
                logger.exception("error dispatching a batch")


def batch_entry(app: Any, api_name: str, greedy: bool = True) -> BatchInfer:
    """`ServiceAppFactory.batch_infer` of the batchable API `api_name` of the BentoML `app`.

    With `greedy`, the API's dispatcher is first replaced by a `GreedyDispatcher` with the same
    limits (once per worker; requests already queued on the old one still complete).
    """
    for route in app.router.routes:
        if getattr(route, "name", None) != api_name:
            continue
        factory = getattr(getattr(route.endpoint, "func", None), "__self__", None)
        dispatchers = getattr(factory, "dispatchers", {})
        if api_name not in dispatchers:
            break
        cork = dispatchers[api_name]
        if greedy and not isinstance(cork, GreedyDispatcher):
            dispatchers[api_name] = GreedyDispatcher(
                int(cork.max_latency * 1000), cork.max_batch_size, fallback=cork.fallback,
                get_batch_size=cork.get_batch_size, batch_dim=cork.batch_dim,
            )
        return functools.partial(factory.batch_infer, api_name)
    raise RuntimeError(f"cannot find BentoML's batching dispatcher for API {api_name!r} (BentoML upgraded?)")
