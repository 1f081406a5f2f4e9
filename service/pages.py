"""The service for people: a page to try it, Swagger without tracking, and POST /explain.

    GET  /            service/static/index.html: choose, drop or photograph faces, see verdicts and why
    GET  /static/...  the page's own files (plain JS and CSS, nothing from another origin)
    GET  /docs        Swagger UI from BentoML's bundled assets (/static_content), with no tracking script
    GET  /docs.json   the OpenAPI document as the service really answers (service/openapi.py)
    POST /explain     multipart `image` -> PNG of the photo with an occlusion heat map, verdict in X-*
                      headers; ?format=json -> the verdict, the peak and a 16x16 heat grid

One Starlette app, mounted at / with `mount(service)`; BentoML matches mounted routes before its own
index and /docs.json. /explain runs production's classifier off the adaptive-batching path, on a
replica of its own (`explain_classifier`: LiteRT's interpreter takes one call at a time, so sharing
it made /predict's batches wait behind the 225 occluded copies), at most EXPLAIN_CONCURRENCY at a
time with EXPLAIN_QUEUE waiting: past that 429, after waiting EXPLAIN_WAIT_S 503, so a burst of
explanations cannot queue up in front of /predict.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from glasses.config import (
    EXPLAIN_CONCURRENCY,
    EXPLAIN_QUEUE,
    EXPLAIN_RUNTIME,
    EXPLAIN_RUNTIMES,
    EXPLAIN_THREADS,
    EXPLAIN_WAIT_S,
)
from glasses.runtimes import Classifier
from service.explain import Explanation, explain_upload
from service.inference import UploadError
from service.live import Version
from service.openapi import service_spec
from service.uploads import error_body, read_uploads

STATIC_DIR = Path(__file__).resolve().parent / "static"
FORMATS = ("png", "json")
if EXPLAIN_RUNTIME not in EXPLAIN_RUNTIMES:
    sys.exit(f"glasses service: cannot start: GLASSES_EXPLAIN_RUNTIME={EXPLAIN_RUNTIME!r}, "
             f"expected one of {list(EXPLAIN_RUNTIMES)}")
_REPLICA_LOCK = threading.Lock()


class ExplainSlots:
    """Admission for /explain: `running` at once, `waiting` more queued, none queued over `wait_s`."""

    def __init__(self, running: int, waiting: int, wait_s: float) -> None:
        self.running = running
        self.capacity = running + waiting
        self.wait_s = wait_s
        self.admitted = 0
        self._limiter: anyio.CapacityLimiter | None = None

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Run the body in a slot; UploadError 429 when running + waiting are full, 503 after wait_s."""
        if self.admitted >= self.capacity:
            raise UploadError(f"too many explanations at once ({self.running} running, {self.capacity - self.running} "
                              f"waiting); retry in a few seconds", status=429)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.running)
        self.admitted += 1
        try:
            try:
                with anyio.fail_after(self.wait_s):
                    await self._limiter.acquire()
            except TimeoutError:
                raise UploadError(f"no explanation slot freed within {self.wait_s:g} s; retry later",
                                  status=503) from None
            try:
                yield
            finally:
                self._limiter.release()
        finally:
            self.admitted -= 1


SLOTS = ExplainSlots(EXPLAIN_CONCURRENCY, EXPLAIN_QUEUE, EXPLAIN_WAIT_S)


def explain_classifier(version: Version, mode: str = EXPLAIN_RUNTIME) -> Classifier:
    """The classifier /explain runs for `version`: with mode "own", its replica (EXPLAIN_THREADS
    threads), made on first use and kept on the Version, so a promoted version brings a new one and a
    retired one goes with it; with "shared", the classifier /predict's batches run."""
    if mode == "shared":
        return version.classifier
    with _REPLICA_LOCK:
        if version.explainer is None:
            version.explainer = version.classifier.replica(EXPLAIN_THREADS)
        return version.explainer


def _explain_on(version: Version, data: bytes) -> tuple[Explanation, bytes]:
    """explain_upload on `version` (in a worker thread: a first call builds the replica)."""
    return explain_upload(data, explain_classifier(version), version.image_size, version.threshold, version.framing)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(message, status), status_code=status)


async def explain(request: Request) -> Response:
    """POST /explain: the served model's verdict on one upload and the occlusion map behind it."""
    fmt = request.query_params.get("format", "png")
    if fmt not in FORMATS:
        return _error(f"format must be one of {list(FORMATS)}, got {fmt!r}", 400)
    svc = bentoml.get_current_service()
    version = svc.live.production()  # one consistent view of the model, whatever is promoted meanwhile
    threshold, tag = version.threshold, version.tag
    try:
        [upload] = await read_uploads(request, "image", max_files=1)
        async with SLOTS.hold():
            explanation, png = await anyio.to_thread.run_sync(_explain_on, version, upload.data)
    except UploadError as exc:
        return _error(str(exc), exc.status)
    if fmt == "json":
        return JSONResponse(explanation.as_json(threshold, tag))
    headers = {
        "X-Verdict": explanation.verdict,
        "X-Probability": repr(explanation.probability),
        "X-Threshold": repr(threshold),
        "X-Model": tag,
        "X-Explain-Method": "occlusion",
        "X-Explain-Peak": f"{explanation.peak[0]:.4f},{explanation.peak[1]:.4f}",
        "Cache-Control": "no-store",
    }
    return Response(png, media_type="image/png", headers=headers)


def build_app(service: Any) -> Starlette:
    """The pages app for the BentoML `service` (its OpenAPI document is built from it)."""

    async def index(_: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    async def docs(_: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html")

    async def spec(_: Request) -> JSONResponse:
        return JSONResponse(service_spec(service, bentoml.get_current_service().live.production().card))

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/docs.json", spec, methods=["GET"]),
        Route("/explain", explain, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ])


def mount(service: Any) -> None:
    """Mount the pages at / of the BentoML `service` (call once, after the class is defined)."""
    service.mount_asgi_app(build_app(service), path="/", name="pages")
