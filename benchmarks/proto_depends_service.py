"""Rejected alternative kept for the benchmark: the model in a separate BentoML service (bentoml.depends).

    bentoml serve benchmarks.proto_depends_service:DependsFront --port 3112

The front decodes strictly exactly like service/service.py, then calls the model service's batchable
API over HTTP with pickle transport. `runner_connection` works around upstream #5540 (the client
otherwise drops a request every 100th call). Compared with the in-process dispatcher: docs/service.md.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.responses import JSONResponse

from glasses.config import DECODE_THREADS, MODEL_FILE, SERVE_MAX_BATCH_SIZE, SERVE_MAX_LATENCY_MS
from service.inference import Classifier, UploadError, decode_upload, verdict
from service.service import IMAGE_SIZE, MODEL_TAG, _refuse
from service.uploads import ImageUpload, read_uploads


@bentoml.service(workers=1, threads=1, runner_connection={"max_requests": 10**9, "max_age": 86400.0})
class DependsModel:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.classifier = Classifier(Path(self.bento_model.path_of(MODEL_FILE)), IMAGE_SIZE)
        self.classifier.warm_up((1, 8, SERVE_MAX_BATCH_SIZE))
        self.threshold = float(self.bento_model.info.metadata.get("threshold", 0.5))

    @bentoml.api(batchable=True, max_batch_size=SERVE_MAX_BATCH_SIZE, max_latency_ms=SERVE_MAX_LATENCY_MS)
    def infer(self, pixels: np.ndarray) -> np.ndarray:
        return self.classifier(pixels)


@bentoml.service(workers=1)
class DependsFront:
    model = bentoml.depends(DependsModel)

    def __init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(DECODE_THREADS)

    @bentoml.api(route="/predict", input_spec=ImageUpload)
    async def predict(self, ctx: bentoml.Context) -> dict:
        try:
            [upload] = await read_uploads(ctx.request, "image", max_files=1)
            pixels = await anyio.to_thread.run_sync(decode_upload, upload.data, IMAGE_SIZE, limiter=self.limiter)
        except UploadError as exc:
            return _refuse(ctx, exc)
        [p] = await self.model.to_async.infer(pixels[np.newaxis])
        return JSONResponse(verdict(p, 0.5, MODEL_TAG))
