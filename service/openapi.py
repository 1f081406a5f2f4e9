"""The OpenAPI document of the service as it really answers (GET /docs.json, shown at /docs).

BentoML 1.4 generates one from the service's APIs, but titles it with the service's internal name and
version "None", credits the BentoML team, lists the internal /infer API first, leaves out routes of
mounted Starlette apps (/model, /explain, the pages) and documents error bodies this service never
sends (400/404/500 {"error", "detail"}). This module keeps what BentoML gets right (request bodies,
the Verdict schema, the infrastructure endpoints) and states the rest as the code behaves:
    - every fault this service words itself: {"error": str, "status": int} (service/uploads.py error_body);
    - a request shed after SERVE_MAX_LATENCY_MS in the batching queue: 503 with BentoML's own
      {"error": str} body (BentoML words it; the service cannot reach into that path); the other 503
      (large uploads over the worker's budget) and the 408 (slow body) of the body guard are ours;
    - /infer (JSON pixels, for benchmarks and internal callers) under the tag "internal".
"""

from __future__ import annotations

import copy
from typing import Any

from glasses.config import (
    BODY_TIMEOUT_S,
    EXPLAIN_CONCURRENCY,
    EXPLAIN_QUEUE,
    EXPLAIN_WAIT_S,
    MAX_BATCH_IMAGES,
    MAX_REQUEST_BYTES,
    SERVE_MAX_LATENCY_MS,
    UPLOAD_WAIT_S,
)
from glasses.version import PACKAGE, package_version

TITLE = "Glasses verdict service"
ERROR = {"$ref": "#/components/schemas/Error"}
BUSY = f"server busy with large uploads for {UPLOAD_WAIT_S:g} s"
FAULTS = {
    400: "malformed multipart body, missing or non-file field `{field}`",
    413: f"body over {MAX_REQUEST_BYTES:,} bytes",
    408: f"request body not received within {BODY_TIMEOUT_S:g} s (the connection is closed)",
    415: "not multipart/form-data",
    422: "not a usable image: empty, not an image, truncated or corrupt, unsupported format, over the pixel limit",
    429: f"{EXPLAIN_CONCURRENCY} explanation(s) running and {EXPLAIN_QUEUE} waiting already: retry in a few seconds",
    503: f"{BUSY}, or no explanation slot freed within {EXPLAIN_WAIT_S:g} s",
}
MODEL_CHOICE = [  # service/live.py: which served version answers (default: production or the canary share)
    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "a served alias (`production`, `candidate`) or tag (`glasses_classifier:abc` or `abc`); "
                    "GET /model lists them. Default: production, or the candidate for its canary share"},
    {"name": "X-Glasses-Model", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the same as ?model="}]
UNKNOWN_MODEL = {"description": "?model= / X-Glasses-Model names no version served here",
                 "content": {"application/json": {"schema": ERROR}}}
SHED = {"description": f"{BUSY} ({{error, status}}), or queued longer than {SERVE_MAX_LATENCY_MS} ms behind the "
                       f"model (overload; BentoML's body {{error}})",
        "content": {"application/json": {"schema": {"oneOf": [ERROR, {"$ref": "#/components/schemas/ShedError"}]}}}}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "status"], "properties": {
        "error": {"type": "string", "description": "what is wrong, for a person"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"}}},
    "ItemError": {"type": "object", "required": ["error", "status", "index", "filename"], "properties": {
        "error": {"type": "string"}, "status": {"type": "integer", "example": 422},
        "index": {"type": "integer", "description": "position of the file in the request"},
        "filename": {"type": "string"}}},
    "ShedError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "ValidationError": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}}},
    "Explanation": {"type": "object", "properties": {
        "verdict": {"type": "string", "enum": ["glasses", "no_glasses"]},
        "probability": {"type": "number", "description": "P(glasses)"},
        "threshold": {"type": "number"}, "model": {"type": "string"},
        "method": {"type": "string", "enum": ["occlusion"]},
        "peak": {"type": "object", "description": "hottest point, as fractions of width and height",
                 "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
        "max_evidence": {"type": "number", "description": "largest logit change one hidden patch caused"},
        "positions": {"type": "integer", "description": "occluded copies scored"},
        "heatmap": {"type": "array", "description": "16 x 16 heat in [0, 1], rows top to bottom",
                    "items": {"type": "array", "items": {"type": "number"}}}}},
    "ModelCard": {"type": "object", "description": "the served version (glasses/registry.py model_card)",
                  "properties": {k: {} for k in ("tag", "name", "version", "created", "threshold", "metrics",
                                                 "class_map", "positive_class", "preprocessing", "labels",
                                                 "data_source", "data_fingerprint", "profile", "objective",
                                                 "hyperparameters", "aliases", "served", "refused", "shadow",
                                                 "worker_pid", "pinned", "reload")}},
}


def _errors(*codes: int, field: str = "image") -> dict[int, dict]:
    out = {}
    for code in codes:
        out[code] = {"description": FAULTS[code].format(field=field), "content": {"application/json": {"schema": ERROR}}}
    return out


def _multipart(field: str, many: bool = False) -> dict:
    item = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item, "maxItems": MAX_BATCH_IMAGES} if many else item
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "properties": {field: prop}}}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _paths(infer_body: dict) -> dict[str, Any]:
    verdict = {"$ref": "#/components/schemas/Verdict"}
    headers = {h: {"schema": {"type": "string"}, "description": d} for h, d in (
        ("X-Verdict", "glasses | no_glasses"), ("X-Probability", "P(glasses)"), ("X-Threshold", "the model's"),
        ("X-Model", "served tag"), ("X-Explain-Method", "occlusion"), ("X-Explain-Peak", "x,y of the peak"))}
    return {
        "/predict": {"post": {"tags": ["verdicts"], "operationId": "predict", "summary": "one photo -> verdict",
                              "parameters": MODEL_CHOICE, "requestBody": _multipart("image"),
                              "responses": {200: _json(verdict), **_errors(400, 408, 413, 415, 422), 404: UNKNOWN_MODEL,
                                            503: SHED}}},
        "/predict_batch": {"post": {
            "tags": ["verdicts"], "operationId": "predict_batch",
            "summary": f"1..{MAX_BATCH_IMAGES} photos -> verdicts in input order; a bad file gets an ItemError in place",
            "parameters": MODEL_CHOICE, "requestBody": _multipart("images", many=True),
            "responses": {200: _json({"type": "array", "items": {"oneOf": [verdict, {"$ref": "#/components/schemas/ItemError"}]}}),
                          **_errors(400, 408, 415, field="images"), 404: UNKNOWN_MODEL,
                          413: {"description": f"body over {MAX_REQUEST_BYTES:,} bytes or more than {MAX_BATCH_IMAGES} images",
                                "content": {"application/json": {"schema": ERROR}}}, 503: SHED}}},
        "/explain": {"post": {
            "tags": ["verdicts"], "operationId": "explain",
            "summary": "one photo -> PNG of it with an occlusion heat map of what drove the verdict",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["png", "json"], "default": "png"}}],
            "requestBody": _multipart("image"),
            "responses": {200: {"description": "PNG (verdict in headers), or JSON with ?format=json", "headers": headers,
                                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                            "application/json": {"schema": {"$ref": "#/components/schemas/Explanation"}}}},
                          **_errors(400, 408, 413, 415, 422, 429, 503)}}},
        "/model": {"get": {"tags": ["model"], "operationId": "model",
                           "summary": "production's card, the aliases, what this worker serves, refused versions",
                           "responses": {200: _json({"$ref": "#/components/schemas/ModelCard"})}}},
        "/": {"get": {"tags": ["pages"], "summary": "the try-it page", "responses": {200: {"description": "HTML"}}}},
        "/docs": {"get": {"tags": ["pages"], "summary": "this documentation", "responses": {200: {"description": "HTML"}}}},
        "/infer": {"post": {
            "tags": ["internal"], "operationId": "infer", "deprecated": False,
            "summary": "internal: decoded uint8 pixels (N, S, S, 3) as JSON -> P(glasses) per image",
            "description": "The batchable API the image endpoints feed in-process. Over HTTP, JSON arrays are slow: "
                           "use /predict or /predict_batch.",
            "requestBody": infer_body,
            "responses": {200: _json({"type": "array", "items": {"type": "number"}}),
                          400: _json({"$ref": "#/components/schemas/ValidationError"},
                                     "pixels of the wrong shape or outside 0..255 (BentoML's validation body)"),
                          **_errors(408, 413), 503: SHED}}},
    }


def service_spec(service: Any, card: dict) -> dict[str, Any]:
    """The OpenAPI document for the BentoML `service` serving the model described by `card`."""
    base = service.openapi_spec.asdict()
    version = package_version()  # installed metadata, else pyproject.toml (the container)
    schemas = {k: v for k, v in base.get("components", {}).get("schemas", {}).items()
               if k not in ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse")}
    infer_body = copy.deepcopy(base["paths"].get("/infer", {}).get("post", {}).get("requestBody", {}))
    infra = {path: item for path, item in base["paths"].items() if path in ("/healthz", "/livez", "/readyz", "/metrics")}
    paths = {**_paths(infer_body), **infra}
    for item in paths.values():
        for op in item.values():
            op["responses"] = {str(code): r for code, r in op["responses"].items()}
    return {
        "openapi": base.get("openapi", "3.0.2"),
        "info": {"title": TITLE, "version": version,
                 "description": f"Glasses / no-glasses verdicts for face photos (package {PACKAGE} {version}), "
                                f"serving model `{card['tag']}` at threshold {card['threshold']:.4f}. "
                                f"P(glasses) is `probability`; the verdict is `glasses` when it reaches the threshold.",
                 "x-served-model": card["tag"]},
        "servers": [{"url": ".", "description": "this server (paths relative to this page)"}],
        "tags": [{"name": "verdicts"}, {"name": "model"}, {"name": "pages"}, {"name": "Infrastructure"},
                 {"name": "internal", "description": "not for clients: may change without notice"}],
        "paths": paths,
        "components": {"schemas": {**schemas, **SCHEMAS}},
    }
