"""Adaptive batching plumbing: feed BentoML's dispatcher of a batchable API from inside the process.

BentoML keeps one CorkDispatcher per batchable API and only exposes it through HTTP. `batch_entry`
returns that API's in-process entry point, so other endpoints of the same worker queue decoded arrays
on the very dispatcher that serves the API (with BentoML's batching metrics) without an HTTP hop.
The BentoML internals this needs are reached through service/bentoml_compat.py only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import anyio
import numpy as np
from bentoml.exceptions import ServiceUnavailable

from service.bentoml_compat import (
    BatchInfer,
    CorkDispatcher,
    NonBlockSema,
    api_dispatchers,
    api_factory,
    batch_infer,
    observe_batch_size,
)

logger = logging.getLogger("bentoml.glasses")


class GreedyDispatcher(CorkDispatcher):
    """BentoML's CorkDispatcher with a release rule for CPU inference.

    A batch leaves as soon as the model is free, taking everything queued meanwhile (up to
    max_batch_size); a request queued longer than max_latency_ms is shed with 503, as upstream does.
    Upstream instead waits for company while its mean historical queue wait allows, which keeps idle
    batch-1 latency at burst level long after a burst; on a CPU a batch costs about linear time per
    image, so waiting while the model is idle buys nothing (figures: docs/service.md).
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
    """The in-process batch entry of the batchable API `api_name` of the BentoML `app`.

    With `greedy`, the API's dispatcher is first replaced by a `GreedyDispatcher` with the same
    limits (once per worker; requests already queued on the old one still complete).
    """
    factory = api_factory(app, api_name)
    dispatchers = api_dispatchers(factory)
    if api_name not in dispatchers:
        raise RuntimeError(f"cannot find BentoML's batching dispatcher for API {api_name!r} (BentoML upgraded?)")
    cork = dispatchers[api_name]
    if greedy and not isinstance(cork, GreedyDispatcher):
        dispatchers[api_name] = GreedyDispatcher(
            int(cork.max_latency * 1000), cork.max_batch_size, fallback=cork.fallback,
            get_batch_size=cork.get_batch_size, batch_dim=cork.batch_dim,
        )
    return batch_infer(factory, api_name)


def _overloaded() -> Any:
    raise ServiceUnavailable("process is overloaded")


class ModelBatching:
    """Adaptive batching for several model versions in one worker: one GreedyDispatcher per version.

    Every version's batches run one at a time overall (one shared semaphore, one model thread), and
    each is counted in BentoML's `adaptive_batch_size` histogram of the API `api_name`, as batches of
    the batchable API are. A request queued on a version is scored by that version, whatever is
    promoted meanwhile: that is what lets the service swap versions between batches.
    """

    def __init__(self, max_latency_ms: int, max_batch_size: int, api_name: str = "infer", greedy: bool = True) -> None:
        self.max_latency_ms, self.max_batch_size, self.api_name = max_latency_ms, max_batch_size, api_name
        self.dispatcher_class = GreedyDispatcher if greedy else CorkDispatcher
        self._sema = NonBlockSema(1)
        self._limiter: anyio.CapacityLimiter | None = None
        self._factory: Any = None

    def bind(self, app: Any) -> None:
        """Find BentoML's ServiceAppFactory (for its batch-size metric) from the request's app, once; the
        batchable API's own dispatcher (HTTP calls of it) gets the same release rule."""
        if self._factory is None:
            batch_entry(app, self.api_name, greedy=self.dispatcher_class is GreedyDispatcher)
            self._factory = api_factory(app, self.api_name)

    def batcher(self, predict: Callable[[np.ndarray], np.ndarray]) -> tuple[Callable, CorkDispatcher]:
        """(score, dispatcher): `await score(pixels (n, S, S, 3))` -> P (n,), batched with other requests.
        Create it on the event loop; `dispatcher.shutdown()` once nothing is queued on it any more."""
        dispatcher = self.dispatcher_class(self.max_latency_ms, self.max_batch_size, shared_sema=self._sema,
                                      fallback=_overloaded, get_batch_size=lambda a: a.shape[0], batch_dim=(0, 0))

        async def run(batches: tuple[np.ndarray, ...]) -> list[np.ndarray]:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(1)
            self._observe(len(batches))
            out = await anyio.to_thread.run_sync(predict, np.concatenate(batches), limiter=self._limiter)
            return np.split(out, np.cumsum([len(b) for b in batches])[:-1])

        return dispatcher(run), dispatcher

    def _observe(self, n: int) -> None:
        if self._factory is not None:
            observe_batch_size(self._factory, self.api_name, n)
