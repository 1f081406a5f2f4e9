"""Glasses / no-glasses verdicts over HTTP (BentoML 1.4), served from the model the registry picks.

    POST /predict        multipart field `image`           -> one verdict
    POST /predict_batch  repeated multipart field `images` -> verdicts in input order (bad items inline)
    GET  /model          the served model's card
    POST /infer          the batchable inference API: uint8 pixels (N, S, S, 3) -> P(glasses) (N,) (internal)
    GET  /  /docs        the try-it page and the API documentation; POST /explain: why a verdict
                         (service/pages.py, mounted below; off the batching path)

How a request flows, and why (figures and how they were measured: docs/service.md):
  1. `read_uploads` parses the multipart body itself (BentoML's parser answers 500 to several client
     faults) and `decode_upload` decodes every image fully, in a thread pool, BEFORE anything is
     batched: a bad upload fails its own request (4xx) and can never poison an adaptive batch.
  2. The decoded uint8 pixels join BentoML's adaptive batching IN-PROCESS: /predict calls
     `ServiceAppFactory.batch_infer("infer", ...)`, the same dispatcher that serves the batchable
     `infer` API over HTTP, so there is no HTTP hop and no JSON/pickle of pixels, and BentoML's
     adaptive_batch_size metric covers every batch. Compared in one run, interleaved:
       - a separate model service via `bentoml.depends` (pickle + HTTP hop, `runner_connection`
         workaround for upstream #5540): 10.0-11.9 ms server CPU per request vs 5.5-9.0 ms in-process;
       - `self.to_async.infer` goes over HTTP with JSON arrays (18 req/s, 89% errors: team notes);
       - `bentoml.depends` resolved inside the same worker is a plain method call: no batching.
  3. Release rule: `service.batching.GreedyDispatcher` replaces upstream's CORK wait rule. Upstream waits for
     company as long as the mean historical queue wait allows; after a burst that mean stays high and
     batch-1 latency stayed at 83-135 ms p50 instead of 9-12 ms, with equal throughput and CPU per
     request. On a CPU a batch costs ~linear time per image: releasing as soon as the model is free
     (taking everything queued meanwhile) gives batches of ~15 at concurrency 32 anyway.
  4. Layout on the 2-core box: ONE worker (TensorFlow's intra-op threads use both cores while the
     event loop and decode threads overlap with them). Two workers halved the batches (mean 2-6
     instead of ~15), used as much or more CPU per request (5.8-8.0 ms) and doubled memory.
     max_batch_size 64 (a full /predict_batch plus concurrent singles fits in one call; batches past
     ~16 gain little per image on CPU); max_latency_ms 3000 is only the shedding bound (503) for a
     queue that cannot drain, generous for a shared CI box. threads=1: one batch runs at a time.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from glasses.config import (
    DECODE_THREADS,
    HEADER_TIMEOUT_S,
    MAX_BATCH_IMAGES,
    MAX_REQUEST_BYTES,
    SERVE_DISPATCH,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_LATENCY_MS,
    SERVE_RUNTIME,
    SERVE_THREADS,
    SERVE_WORKERS,
)
from glasses.registry import RegistryError, check_servable, model_card, resolve
from glasses.runtimes import load_classifier
from service import pages
from service.batching import BatchInfer, batch_entry
from service.inference import UploadError, decode_upload, verdict
from service.limits import install_head_timeout
from service.uploads import (
    BodyLimitMiddleware,
    ImagesUpload,
    ImageUpload,
    Verdict,
    error_body,
    pixels_type,
    read_uploads,
)

log = logging.getLogger("bentoml.glasses")  # under BentoML's logger: its format and handlers

# Resolved once at import, so `bentoml build` records exactly this model: GLASSES_MODEL > promoted >
# newest > the bundled default (imported into an empty store). A wrong choice stops here, in one line.
try:
    MODEL_TAG, MODEL_REASON = resolve()
except RegistryError as exc:
    sys.exit(f"glasses service: cannot start: {exc}")
if MODEL_REASON.startswith("bundled"):  # said once, by the process that did it
    print(f"glasses service: {MODEL_TAG}: {MODEL_REASON}", file=sys.stderr, flush=True)
IMAGE_SIZE = int(model_card(bentoml.models.get(MODEL_TAG))["preprocessing"]["image_size"])
Pixels = pixels_type(IMAGE_SIZE)


# GET /model: BentoML APIs are POST-only, so this one route is a mounted Starlette app.
async def _get_model(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().card)


model_app = Starlette(routes=[Route("/model", _get_model, methods=["GET"])])


@bentoml.service(
    name="glasses_classifier_service",
    workers=SERVE_WORKERS,
    threads=SERVE_THREADS,
    traffic={"timeout": 60},
)
@bentoml.asgi_app(model_app, path="/")
class GlassesService:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.card = model_card(self.bento_model)
        check_servable(self.card)
        self.tag = self.card["tag"]
        self.threshold = self.card["threshold"]
        self.classifier = load_classifier(self.bento_model, SERVE_RUNTIME, IMAGE_SIZE)  # tf | litert
        self.card["runtime"] = self.classifier.runtime
        self.classifier.warm_up((1, 8, SERVE_MAX_BATCH_SIZE))
        self._batch_infer: BatchInfer | None = None
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self._ready = True  # only reached once the model is loaded and warmed up
        log.info("serving %s (%s), image size %d, threshold %.3f", self.tag, MODEL_REASON, IMAGE_SIZE,
                 self.threshold)

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.api(batchable=True, max_batch_size=SERVE_MAX_BATCH_SIZE, max_latency_ms=SERVE_MAX_LATENCY_MS)
    def infer(self, pixels: Pixels) -> np.ndarray:
        """Batchable inference over decoded uint8 pixels (N, S, S, 3) -> P(glasses) (N,)."""
        return self.classifier(pixels)

    @bentoml.api(route="/predict", input_spec=ImageUpload)
    async def predict(self, ctx: bentoml.Context) -> Verdict:
        """One image (multipart field `image`) -> its verdict."""
        try:
            [upload] = await read_uploads(ctx.request, "image", max_files=1)
            pixels = await self._decode(upload.data)
        except UploadError as exc:
            return _refuse(ctx, exc)
        [probability] = await self._infer(ctx.request, pixels[np.newaxis])
        return JSONResponse(verdict(probability, self.threshold, self.tag))

    @bentoml.api(route="/predict_batch", input_spec=ImagesUpload)
    async def predict_batch(self, ctx: bentoml.Context) -> list[Verdict]:
        """Several images (repeated field `images`) -> verdicts in input order; a bad item is
        reported in its place as {"error", "status", "index", "filename"} and the others still run."""
        try:
            uploads = await read_uploads(ctx.request, "images", max_files=MAX_BATCH_IMAGES)
        except UploadError as exc:
            return _refuse(ctx, exc)
        results: list[Any] = [None] * len(uploads)

        async def decode_one(i: int) -> None:
            try:
                results[i] = await self._decode(uploads[i].data)
            except UploadError as exc:
                results[i] = error_body(str(exc), exc.status, index=i, filename=uploads[i].filename)

        async with anyio.create_task_group() as tg:
            for i in range(len(uploads)):
                tg.start_soon(decode_one, i)
        good = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
        if good:
            probabilities = await self._infer(ctx.request, np.stack([results[i] for i in good]))
            for i, p in zip(good, probabilities):
                results[i] = verdict(p, self.threshold, self.tag)
        return JSONResponse(results)

    async def _decode(self, data: bytes) -> np.ndarray:
        """Strict decode in a worker thread (PIL releases the GIL while decoding and resizing)."""
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(DECODE_THREADS)
        return await anyio.to_thread.run_sync(decode_upload, data, IMAGE_SIZE, limiter=self._decode_limiter)

    async def _infer(self, request: Request, pixels: np.ndarray) -> np.ndarray:
        """Queue decoded pixels on the adaptive batching dispatcher of the `infer` API, in-process."""
        if self._batch_infer is None:
            self._batch_infer = batch_entry(request.scope["app"], "infer", greedy=SERVE_DISPATCH == "greedy")
        return await self._batch_infer((pixels,), {})


def _refuse(ctx: bentoml.Context, exc: UploadError) -> JSONResponse:
    """A client fault as a 4xx JSON response (BentoML applies ctx.response.status_code to it)."""
    ctx.response.status_code = exc.status
    return JSONResponse(error_body(str(exc), exc.status), status_code=exc.status)


GlassesService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=MAX_REQUEST_BYTES)  # size, memory, body time
pages.mount(GlassesService)  # GET / /docs /docs.json /static/*, POST /explain
install_head_timeout(HEADER_TIMEOUT_S)  # slow or idle clients: uvicorn closes them (service/limits.py)
