"""Glasses / no-glasses verdicts over HTTP (BentoML 1.4), served from the model the registry picks.

    POST /predict        multipart field `image`           -> one verdict
    POST /predict_batch  repeated multipart field `images` -> verdicts in input order (bad items inline)
    GET  /model          the served model's card
    POST /infer          the batchable inference API: uint8 pixels (N, S, S, 3) -> P(glasses) (N,)

How a request flows (and why) -- design measured with benchmarks/bench_service.py, see docs/service.md:
  1. `read_uploads` parses the multipart body strictly (a 4xx for any client fault) and
     `decode_upload` decodes every image fully, in a thread pool, BEFORE anything is batched: a bad
     upload fails its own request and can never poison an adaptive batch.
  2. The decoded uint8 pixels go into BentoML's adaptive batching through the SAME in-process
     CorkDispatcher that serves the batchable `infer` API (`ServiceAppFactory.batch_infer`): no HTTP
     hop, no JSON/pickle of pixels, one compiled `tf.function` call per batch.
     Rejected alternatives: `self.to_async.infer` goes over HTTP with JSON arrays (18 req/s, 89%
     errors); a separate model service via `bentoml.depends` pays a pickle+HTTP hop per request and
     needs the `runner_connection` workaround for upstream #5540 (~260 req/s measured vs ~840 img/s
     in-process); `bentoml.depends` resolved inside the same worker is a plain object call with no
     batching at all.
  3. Workers/threads/batch limits (glasses/config.py) come from measurements on the 2-core machine:
     one worker uses both cores for TensorFlow's intra-op threads while the event loop and the decode
     threads overlap with it; see docs/service.md for the figures behind each value.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, BeforeValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from glasses.config import (
    DECODE_THREADS,
    MAX_BATCH_IMAGES,
    MAX_REQUEST_BYTES,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_LATENCY_MS,
    SERVE_THREADS,
    SERVE_WORKERS,
)
from glasses.registry import resolve_tag
from service.inference import (
    MODEL_FILE,
    Classifier,
    UploadError,
    check_servable,
    decode_upload,
    model_card,
    verdict,
)
from service.uploads import BodyLimitMiddleware, error_body, read_uploads

# Resolved once at import, so `bentoml build` records exactly this model: GLASSES_MODEL > promoted >
# newest > the bundled default (imported into an empty store).
MODEL_TAG = resolve_tag()
IMAGE_SIZE = int(model_card(bentoml.models.get(MODEL_TAG))["preprocessing"]["image_size"])


# --- schemas (OpenAPI) --------------------------------------------------------------------------
class Verdict(BaseModel):
    verdict: str  # "glasses" | "no_glasses"
    probability: float  # P(glasses)
    threshold: float
    model: str  # glasses_classifier:<version>


class ImageUpload(bentoml.IODescriptor):
    """multipart/form-data with the image file in field `image`. The API parses the body itself."""

    media_type = "multipart/form-data"
    model_config = {"json_schema_extra": {"properties": {"image": {"type": "string", "format": "binary"}},
                                          "required": ["image"]}}

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "ImageUpload":
        return cls()  # leave the body unread: read_uploads parses it strictly (BentoML's parser 500s)


class ImagesUpload(ImageUpload):
    """multipart/form-data with one or more image files, each in a field named `images`."""

    model_config = {"json_schema_extra": {
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        "required": ["images"]}}


def _as_pixels(value: Any) -> np.ndarray:
    """Validate /infer input before it joins a batch: uint8 (N, S, S, 3), else a 400."""
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise ValueError(f"pixels must be a nested list of integers: {exc}") from None
    if arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or arr.shape[0] < 1:
        raise ValueError(f"pixels must have shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
            raise ValueError("pixels must be integers in 0..255")
        arr = arr.astype(np.uint8)
    return arr


Pixels = Annotated[np.ndarray, BeforeValidator(_as_pixels)]


# --- GET /model (BentoML APIs are POST-only, so this one route is a mounted Starlette app) -------
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
        self.classifier = Classifier(Path(self.bento_model.path_of(MODEL_FILE)), IMAGE_SIZE)
        self.classifier.warm_up((1, 8, SERVE_MAX_BATCH_SIZE))
        self._batch_infer: Callable[..., Awaitable[np.ndarray]] | None = None
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self._ready = True  # only reached once the model is loaded and warmed up

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

        async def decode_one(i: int) -> None:
            try:
                decoded[i] = await self._decode(uploads[i].data)
            except UploadError as exc:
                decoded[i] = error_body(str(exc), exc.status, index=i, filename=uploads[i].filename)

        decoded: list[Any] = [None] * len(uploads)
        async with anyio.create_task_group() as tg:
            for i in range(len(uploads)):
                tg.start_soon(decode_one, i)
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        results: list[Any] = list(decoded)
        if good:
            probabilities = await self._infer(ctx.request, np.stack([decoded[i] for i in good]))
            for i, p in zip(good, probabilities):
                results[i] = verdict(p, self.threshold, self.tag)
        return JSONResponse(results)

    # --- helpers ----------------------------------------------------------------------------
    async def _decode(self, data: bytes) -> np.ndarray:
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(DECODE_THREADS)
        return await anyio.to_thread.run_sync(decode_upload, data, IMAGE_SIZE, limiter=self._decode_limiter)

    async def _infer(self, request: Request, pixels: np.ndarray) -> np.ndarray:
        """Queue decoded pixels on the adaptive batching dispatcher of the `infer` API (in-process)."""
        if self._batch_infer is None:
            self._batch_infer = _find_batch_infer(request.scope["app"], "infer")
        return await self._batch_infer((pixels,), {})


def _refuse(ctx: bentoml.Context, exc: UploadError) -> JSONResponse:
    """A client fault as a 4xx JSON response (BentoML applies ctx.response.status_code to it)."""
    ctx.response.status_code = exc.status
    return JSONResponse(error_body(str(exc), exc.status), status_code=exc.status)


def _find_batch_infer(app: Starlette, api_name: str) -> Callable[..., Awaitable[np.ndarray]]:
    """BentoML 1.4's `ServiceAppFactory.batch_infer` for `api_name`, found through the API's route.

    Each API route's endpoint is `functools.partial(factory.api_endpoint_wrapper, name)`; its factory
    owns the CorkDispatcher of every batchable API. Fails loudly if a BentoML upgrade changes this.
    """
    for route in app.router.routes:
        if getattr(route, "name", None) == api_name:
            factory = getattr(getattr(route.endpoint, "func", None), "__self__", None)
            if factory is not None and api_name in getattr(factory, "dispatchers", {}):
                return functools.partial(factory.batch_infer, api_name)
    raise RuntimeError(f"cannot find BentoML's batching dispatcher for API {api_name!r} (BentoML upgraded?)")


GlassesService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=MAX_REQUEST_BYTES)
