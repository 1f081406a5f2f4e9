"""The HTTP edge of the service: request-size guard and strict multipart reading.

BentoML's own multipart handling answers 500 to many client faults (a text value where a file is
expected is fetched as a URL, a binary part under an unknown name is parsed as JSON, there is no body
limit), so the image endpoints read `ctx.request` themselves with these functions and turn every
client fault into an `UploadError` carrying a 4xx status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import BaseModel, BeforeValidator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from glasses.config import (
    BODY_TIMEOUT_S,
    MAX_REQUEST_BYTES,
    UPLOAD_BUDGET_BYTES,
    UPLOAD_BUDGET_MIN_BYTES,
    UPLOAD_WAIT_S,
)
from service.inference import UploadError
from service.limits import BodyTimeout, BudgetTimeout, UploadBudget, deadline_receive

MULTIPART = "multipart/form-data"

# Starlette spools an uploaded file to disk past 1 MiB, and then every ~64 KiB chunk is written
# through a thread-pool hop: ~25 hops and a temp file for a 1.6 MB PNG (2.9 ms of CPU against 0.75 ms
# in memory: benchmarks/bench_multipart.py). read_uploads reads every file into memory right after
# parsing anyway and then closes the form, and BodyLimitMiddleware caps the body at MAX_REQUEST_BYTES,
# so a request briefly holds at most about twice its body (parser buffer + bytes) instead of once.
MultiPartParser.spool_max_size = MAX_REQUEST_BYTES


# --- schemas: what the OpenAPI page shows --------------------------------------------------------
class FaceBox(BaseModel):
    box: list[float]  # x0, y0, x1, y1 in the uploaded photo's pixels (after EXIF orientation)
    score: float  # the face detector's confidence


class Verdict(BaseModel):
    verdict: str  # "glasses" | "no_glasses"
    probability: float  # P(glasses)
    threshold: float
    model: str  # glasses_classifier:<version>
    face: FaceBox | None = None  # where the face was found (versions with framing "face" only)


class ImageUpload(bentoml.IODescriptor):
    """multipart/form-data with the image file in field `image` (the API reads the body itself)."""

    media_type = MULTIPART
    model_config = {"json_schema_extra": {"properties": {"image": {"type": "string", "format": "binary"}},
                                          "required": ["image"]}}

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "ImageUpload":
        return cls()  # leave the body unread for `read_uploads`


class ImagesUpload(ImageUpload):
    """multipart/form-data with one or more image files, each in a field named `images`."""

    model_config = {"json_schema_extra": {
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        "required": ["images"]}}


def pixels_type(size: int) -> Any:
    """Annotated ndarray type that validates decoded pixels uint8 (N, size, size, 3) before batching.

    A wrong array fails its own request with 400 instead of breaking the concatenation of a batch.
    """

    def validate(value: Any) -> np.ndarray:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise ValueError(f"pixels must be a nested list of integers: {exc}") from None
        if arr.ndim != 4 or arr.shape[1:] != (size, size, 3) or arr.shape[0] < 1:
            raise ValueError(f"pixels must have shape (N, {size}, {size}, 3), got {arr.shape}")
        if arr.dtype != np.uint8:
            if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
                raise ValueError("pixels must be integers in 0..255")
            arr = arr.astype(np.uint8)
        return arr

    return Annotated[np.ndarray, BeforeValidator(validate)]


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its client-side name and its bytes."""

    filename: str
    data: bytes


def error_body(message: str, status: int, **extra: Any) -> dict[str, Any]:
    """The JSON body of every 4xx this service writes itself."""
    return {"error": message, "status": status, **extra}


async def read_uploads(request: Request, field: str, max_files: int) -> list[Upload]:
    """The files posted under `field` of a multipart body (1..max_files of them), else UploadError."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != MULTIPART:
        raise UploadError(
            f"expected a {MULTIPART} body with the image file in field {field!r} "
            f"(e.g. curl -F {field}=@face.jpg), got Content-Type {content_type or 'none'!r}",
            status=415,
        )
    parser_max_files = max_files + 4  # the parser stops early past this; what it finds is checked below
    try:
        form = await request.form(max_files=parser_max_files, max_fields=max_files + 16)
    except (HTTPException, MultiPartException) as exc:  # HTTPException: Starlette's wrapper inside an app
        message = exc.detail if isinstance(exc, HTTPException) else exc.message
        if str(message).startswith("Too many files"):
            raise _too_many(field, f"more than {parser_max_files}", max_files) from None
        raise UploadError(f"malformed multipart body: {message}") from None
    except Exception as exc:  # python-multipart parse errors on hostile bodies: still the client's
        raise UploadError(f"malformed multipart body: {type(exc).__name__}: {exc}") from None
    values = form.getlist(field)
    if not values:
        received = sorted(set(form.keys()))
        hint = f"; received field(s) {received}" if received else "; the body has no fields"
        raise UploadError(f"missing file field {field!r}{hint}")
    if any(not isinstance(v, UploadFile) for v in values):
        raise UploadError(f"field {field!r} must be a file upload (curl -F {field}=@face.jpg), not a text value")
    if len(values) > max_files:
        raise _too_many(field, str(len(values)), max_files)
    uploads = [Upload(v.filename or "", await v.read()) for v in values]
    await form.close()  # free the parser's copies now, not at the end of the request
    return uploads


def _too_many(field: str, count: str, max_files: int) -> UploadError:
    """400 for a second file on /predict (wrong endpoint), 413 past the batch limit."""
    if max_files == 1:
        return UploadError(f"send exactly one image in field {field!r}; use /predict_batch for several")
    return UploadError(f"too many images: {count} in one request, the limit is {max_files}", status=413)


class BodyLimitMiddleware:
    """ASGI middleware: request-body guard of every POST (size, memory, time).

    - over `max_bytes`: 413 before the body is read in full (with a Content-Length header the check is
      immediate; a chunked body is buffered up to the limit and replayed to the application, so every
      endpoint, BentoML's own parsers included, sees a complete body known to be small enough);
    - large bodies share `budget` (service.limits.UploadBudget): past it a request waits, unread, and
      gets 503 after `wait_s`;
    - a body not complete `body_timeout_s` after reading starts gets 408 and the connection is closed
      (whatever the application made of the cut-off body is replaced by that answer).
    """

    def __init__(self, app: Any, max_bytes: int, budget: UploadBudget | None = None,
                 body_timeout_s: float = BODY_TIMEOUT_S, wait_s: float = UPLOAD_WAIT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget or UploadBudget(UPLOAD_BUDGET_BYTES, UPLOAD_BUDGET_MIN_BYTES)
        self.body_timeout_s, self.wait_s = body_timeout_s, wait_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and not length.strip().isdigit():
            return await self._reject(send, 400, "invalid Content-Length header")
        declared = None if length is None else int(length)
        if declared is not None and declared > self.max_bytes:
            return await self._too_large(send, declared)
        cost = self.budget.cost(declared, self.max_bytes)
        try:
            await self.budget.acquire(cost, self.wait_s)
        except BudgetTimeout:
            return await self._reject(send, 503, f"server busy with large uploads for {self.wait_s:.0f} s; retry later")
        timed = deadline_receive(receive, self.body_timeout_s)
        guarded_send = _TimeoutAnswer(send, timed, self.body_timeout_s)
        try:
            if declared is not None:
                return await self.app(scope, timed, guarded_send)
            return await self._chunked(scope, timed, guarded_send)
        except BodyTimeout:
            await guarded_send.answer()
        finally:
            await self.budget.release(cost)

    async def _chunked(self, scope: dict, receive: Any, send: Any) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send, None)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send: Any, length: int | None) -> None:
        got = f"{length:,} bytes" if length is not None else "more than that"
        await self._reject(send, 413, f"request body too large: the limit is {self.max_bytes:,} bytes, got {got}")

    @staticmethod
    async def _reject(send: Any, status: int, message: str) -> None:
        body = json.dumps(error_body(message, status)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TimeoutAnswer:
    """`send` for one request: once its body deadline passed, the response is a 408 (sent once)."""

    def __init__(self, send: Any, receive: Any, seconds: float) -> None:
        self.send, self.receive, self.seconds = send, receive, seconds
        self.started = self.answered = False

    async def __call__(self, message: dict) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start" and getattr(self.receive, "timed_out", False):
            return await self.answer()
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)

    async def answer(self) -> None:
        if self.answered or self.started:
            return
        self.answered = True
        await BodyLimitMiddleware._reject(self.send, 408, f"request body not received within {self.seconds:g} s")
