"""The benchmark's naive baseline: what most tutorials deploy — one process, `model.predict` per request.

    GLASSES_NAIVE_MODEL=/path/to/model.keras python -m uvicorn loadtests.naive_app:app --host 127.0.0.1 --port 8000

Same preprocessing contract and the same model file as the real service, so the benchmark compares
serving strategies only. Not for production: no batching, the event loop blocks during inference.
"""

from __future__ import annotations

import os

import keras
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from glasses.config import CLASS_NAMES, DEFAULT_THRESHOLD
from glasses.preprocessing import ImageDecodeError, preprocess

MODEL = keras.saving.load_model(os.environ["GLASSES_NAIVE_MODEL"], compile=False)


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "missing multipart file field 'image'"}, status_code=400)
    try:
        pixels = preprocess(await upload.read())
    except ImageDecodeError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    probability = float(MODEL.predict(pixels[None], verbose=0)[0, 0])
    verdict = CLASS_NAMES[int(probability >= DEFAULT_THRESHOLD)]
    return JSONResponse({"verdict": verdict, "probability": probability, "threshold": DEFAULT_THRESHOLD})


async def readyz(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
