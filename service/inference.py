"""Heavy logic of the prediction service, importable without a server (tests and benchmarks use it).

    upload bytes --decode_framed--> uint8 (S, S, 3)      strict: glasses.preprocessing.framed_uint8, with
                                                         the version's framing (and its face box)
    uint8 (N, S, S, 3) --classifier--> P(glasses) (N,)   glasses.runtimes.load_classifier (tf or litert)
    P(glasses) --verdict--> {"verdict", "probability", "threshold", "model"}

Classifiers take uint8 pixels (4x less to batch and move than float32) and rescale exactly as
`glasses.preprocessing.rescale`, so the service sees the tensor training saw, on either runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from glasses import preprocessing
from glasses.config import CLASS_NAMES
from glasses.faces import Face
from glasses.runtimes import TFClassifier as Classifier  # noqa: F401  (the tf runtime; loader: glasses.runtimes)

logger = logging.getLogger(__name__)


class UploadError(ValueError):
    """A client fault in a request; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, size: int) -> np.ndarray:
    """Strictly decode one upload into uint8 pixels (size, size, 3), no framing; UploadError (422) if unusable."""
    return decode_framed(data, size)[0]


def decode_framed(data: bytes, size: int, framing: str = "none") -> tuple[np.ndarray, Face | None]:
    """Strictly decode one upload with a version's framing: (uint8 pixels (size, size, 3), the face
    found or None); UploadError (422) if unusable, "no face found" included.

    Everything that can fail about an image fails here, per request, before anything is batched.
    """
    try:
        return preprocessing.framed_uint8(data, size, framing)
    except preprocessing.ImageDecodeError as exc:
        raise UploadError(str(exc), status=422) from None
    except Exception as exc:  # any other PIL failure on hostile input is still the client's file
        raise UploadError(f"could not decode image: {type(exc).__name__}: {exc}", status=422) from None


def verdict(probability: float, threshold: float, tag: str, face: Face | None = None) -> dict[str, Any]:
    """One prediction as the API returns it (with the face box when the version frames faces)."""
    p = float(probability)
    out = {
        "verdict": CLASS_NAMES[1] if p >= threshold else CLASS_NAMES[0],
        "probability": p,
        "threshold": threshold,
        "model": tag,
    }
    if face is not None:
        out["face"] = face.as_json()
    return out
