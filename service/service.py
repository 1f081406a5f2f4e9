"""Glasses / no-glasses verdicts over HTTP (BentoML 1.4), served from the model the registry picks.

    POST /predict        multipart field `image`           -> one verdict
    POST /predict_batch  repeated multipart field `images` -> verdicts in input order (bad items inline)
    GET  /model          production's card, the aliases, what is loaded, refusals, shadow agreement
    POST /infer          the batchable inference API: uint8 pixels (N, S, S, 3) -> P(glasses) (N,) (internal)
    GET  /  /docs        the try-it page and the API documentation; POST /explain: why a verdict
                         (service/pages.py, mounted below; off the batching path)

Which version answers: the registry's `production`, followed live (service/live.py: every worker
re-reads the aliases each second, loads + checks a new target and swaps it in between batches), a
`candidate` canary share, or what the request asks for with `?model=` / `X-Glasses-Model`.

How a request flows (why, with the measured alternatives and how they were measured: docs/service.md):
  1. `read_uploads` parses the multipart body itself (BentoML's parser answers 500 to several client
     faults) and `decode_framed` decodes every image fully, in a thread pool, before anything is
     batched: a bad upload fails its own request (4xx) and never poisons an adaptive batch. A version
     with framing "face" also finds the face and crops to the training framing there (422 `no face
     found` without one; the verdict carries the face box).
  2. The decoded uint8 pixels join adaptive batching in-process (service/batching.py: ModelBatching,
     one BentoML dispatcher per served version, one batch at a time over all of them): no HTTP hop,
     no serialised pixels, a batch never mixes versions, and BentoML's adaptive_batch_size metric of
     the `infer` API covers every batch.
  3. `GreedyDispatcher` releases a batch as soon as the model is free, instead of upstream's wait rule.
  4. Two workers (each with its own GIL, model and batching), one LiteRT thread each, max_batch_size 64
     (glasses/config.py): the layout measured best on 2 cores; uvicorn on httptools + uvloop.
"""

from __future__ import annotations

import logging
import os
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
    BUNDLED_MODEL_FILE,
    DECODE_INLINE_BYTES,
    DECODE_THREADS,
    HEADER_TIMEOUT_S,
    IMAGE_SIZE as DEFAULT_IMAGE_SIZE,
    MAX_BATCH_IMAGES,
    MAX_REQUEST_BYTES,
    MODEL_ENV_VAR,
    MODEL_HEADER,
    SERVE_MAX_BATCH_SIZE,
    SERVE_ACCESS_LOG,
    SERVE_MAX_LATENCY_MS,
    SERVE_THREADS,
    SERVE_TRACING,
    SERVE_WORKERS,
)
from glasses.allocator import keep_freed_buffers
from glasses.cards import model_card
from glasses.registry import RegistryError, resolve, store_dir
from service import pages
from service.inference import UploadError, decode_framed, verdict
from service.limits import install_head_timeout
from service.live import LiveModels, UnknownModel, Version
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


def _model_at_import() -> tuple[str | None, str]:
    """(tag, why) of the version the registry picks, read-only: importing this module writes nothing.

    Resolved at import so `bentoml build` records exactly this model. An empty store gives (None, why)
    when the bundled default exists: start-up imports and promotes it (`import_bundled_default`), and the
    workers, which import this module afterwards, find it. A wrong choice stops here, in one line.
    """
    if not os.environ.get(MODEL_ENV_VAR) and not any(store_dir().glob("*/model.yaml")) and BUNDLED_MODEL_FILE.exists():
        return None, "empty store: the bundled default is imported at start-up"
    try:
        return resolve(import_default=False)
    except RegistryError as exc:
        sys.exit(f"glasses service: cannot start: {exc}")


MODEL_TAG, MODEL_REASON = _model_at_import()  # workers then follow the registry (service/live.py)
IMAGE_SIZE = (int(model_card(bentoml.models.get(MODEL_TAG))["preprocessing"]["image_size"]) if MODEL_TAG
              else DEFAULT_IMAGE_SIZE)  # the workers' import sees the imported default's own size
Pixels = pixels_type(IMAGE_SIZE)


# GET /model: BentoML APIs are POST-only, so this one route is a mounted Starlette app.
async def _get_model(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().live.describe())


model_app = Starlette(routes=[Route("/model", _get_model, methods=["GET"])])


@bentoml.service(
    name="glasses_classifier_service",
    workers=SERVE_WORKERS,
    threads=SERVE_THREADS,
    traffic={"timeout": 60},
    logging={"access": {"enabled": SERVE_ACCESS_LOG}},
    tracing={} if SERVE_TRACING else {"excluded_urls": ["/"]},  # "/" matches every URL: no spans
)
@bentoml.asgi_app(model_app, path="/")
class GlassesService:
    if MODEL_TAG:  # recorded by `bentoml build`; resolved by BentoML before start-up
        bento_model = bentoml.models.BentoModel(MODEL_TAG)

    @bentoml.on_deployment
    def import_bundled_default() -> None:
        """Once per server, before any worker starts: an empty store gets the bundled default model,
        imported and promoted (said once, on stderr)."""
        if MODEL_TAG is None:
            try:
                tag, why = resolve()
            except RegistryError as exc:
                sys.exit(f"glasses service: cannot start: {exc}")
            print(f"glasses service: {tag}: {why}", file=sys.stderr, flush=True)

    def __init__(self) -> None:
        self.live = LiveModels(pin=os.environ.get(MODEL_ENV_VAR))  # loads, checks and warms up production
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self._ready = True  # only reached once the model is loaded and warmed up
        production = self.live.production()
        log.info("serving %s (%s), runtime %s, image size %d, threshold %.3f", production.tag,
                 "pinned by $GLASSES_MODEL" if self.live.pin else "production in the registry, followed live",
                 production.runtime, production.image_size, production.threshold)

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.api(batchable=True, max_batch_size=SERVE_MAX_BATCH_SIZE, max_latency_ms=SERVE_MAX_LATENCY_MS)
    def infer(self, pixels: Pixels) -> np.ndarray:
        """Batchable inference over decoded uint8 pixels (N, S, S, 3) -> P(glasses) (N,), by production."""
        return self.live.production().classifier(pixels)

    @bentoml.api(route="/predict", input_spec=ImageUpload)
    async def predict(self, ctx: bentoml.Context) -> Verdict:
        """One image (multipart field `image`) -> its verdict, from production unless the request asks
        for a served alias or version with `?model=candidate|TAG` or the `X-Glasses-Model` header
        (an unknown one is a 404)."""
        try:
            [upload] = await read_uploads(ctx.request, "image", max_files=1)
            version = self._pick(ctx.request)
        except UploadError as exc:
            return _refuse(ctx, exc)
        try:
            pixels, face = await self._decode_framed(upload.data, version)
            pixels = pixels[np.newaxis]
            probabilities = await self.live.score(version, pixels, ctx.request.scope["app"])
        except UploadError as exc:
            return _refuse(ctx, exc)
        finally:
            self.live.done(version)
        self.live.shadow(version, pixels, probabilities, [upload.data], self._decode, ctx.request.scope["app"])
        return JSONResponse(verdict(probabilities[0], version.threshold, version.tag, face))

    @bentoml.api(route="/predict_batch", input_spec=ImagesUpload)
    async def predict_batch(self, ctx: bentoml.Context) -> list[Verdict]:
        """Several images (repeated field `images`) -> verdicts in input order; a bad item is
        reported in its place as {"error", "status", "index", "filename"} and the others still run.
        `?model=` / `X-Glasses-Model` as for /predict."""
        try:
            uploads = await read_uploads(ctx.request, "images", max_files=MAX_BATCH_IMAGES)
            version = self._pick(ctx.request)
        except UploadError as exc:
            return _refuse(ctx, exc)
        results: list[Any] = [None] * len(uploads)
        faces: list[Any] = [None] * len(uploads)

        async def decode_one(i: int) -> None:
            try:
                results[i], faces[i] = await self._decode_framed(uploads[i].data, version)
            except UploadError as exc:
                results[i] = error_body(str(exc), exc.status, index=i, filename=uploads[i].filename)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(uploads)):
                    tg.start_soon(decode_one, i)
            good = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
            if good:
                pixels = np.stack([results[i] for i in good])
                probabilities = await self.live.score(version, pixels, ctx.request.scope["app"])
                self.live.shadow(version, pixels, probabilities, [uploads[i].data for i in good], self._decode,
                                 ctx.request.scope["app"])
                for i, p in zip(good, probabilities):
                    results[i] = verdict(p, version.threshold, version.tag, faces[i])
        finally:
            self.live.done(version)
        return JSONResponse(results)

    def _pick(self, request: Request) -> Version:
        """The version that answers this request (counted in flight until `live.done`)."""
        try:
            return self.live.pick(request.query_params.get("model") or request.headers.get(MODEL_HEADER))
        except UnknownModel as exc:
            raise UploadError(str(exc), status=404) from None

    async def _decode_framed(self, data: bytes, version: Version) -> tuple[np.ndarray, Any]:
        """Strict decode with the version's size and framing -> (pixels, face or None): a small upload
        on the event loop (a thread hop costs more than it saves), a larger one in a worker thread (PIL
        and LiteRT release the GIL while decoding, resizing and finding the face)."""
        if len(data) < DECODE_INLINE_BYTES:
            return decode_framed(data, version.image_size, version.framing)
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(DECODE_THREADS)
        return await anyio.to_thread.run_sync(decode_framed, data, version.image_size, version.framing,
                                              limiter=self._decode_limiter)

    async def _decode(self, data: bytes, version: Version) -> np.ndarray:
        """The pixels of `_decode_framed` (shadow scoring re-decodes for a candidate that differs)."""
        return (await self._decode_framed(data, version))[0]


def _refuse(ctx: bentoml.Context, exc: UploadError) -> JSONResponse:
    """A client fault as a 4xx JSON response (BentoML applies ctx.response.status_code to it)."""
    ctx.response.status_code = exc.status
    return JSONResponse(error_body(str(exc), exc.status), status_code=exc.status)


GlassesService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=MAX_REQUEST_BYTES)  # size, memory, body time
pages.mount(GlassesService)  # GET / /docs /docs.json /static/*, POST /explain
install_head_timeout(HEADER_TIMEOUT_S)  # slow or idle clients: uvicorn closes them (service/limits.py)
keep_freed_buffers()  # framed photos reuse heap memory instead of fresh pages (glasses/allocator.py)
