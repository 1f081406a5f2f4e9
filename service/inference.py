"""Heavy logic of the prediction service, importable without a server (tests and benchmarks use it).

    upload bytes --decode_upload--> uint8 (S, S, 3)      strict: glasses.preprocessing.to_uint8
    uint8 (N, S, S, 3) --Classifier--> P(glasses) (N,)   rescale x/255 + model, one compiled graph
    P(glasses) --verdict--> {"verdict", "probability", "threshold", "model"}

The classifier takes uint8 pixels (4x less to batch and move than float32) and rescales inside the
compiled graph with `tf.cast(x, tf.float32) / 255.0`, which is bit-identical to
`glasses.preprocessing.rescale`, so the service sees exactly the tensor training saw.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from glasses import calibration as cal
from glasses import preprocessing
from glasses.config import CLASS_NAMES

logger = logging.getLogger(__name__)

class UploadError(ValueError):
    """A client fault in a request; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, size: int) -> np.ndarray:
    """Strictly decode one upload into uint8 pixels (size, size, 3); UploadError (422) if unusable.

    Everything that can fail about an image fails here, per request, before anything is batched.
    """
    try:
        return preprocessing.to_uint8(data, size)
    except preprocessing.ImageDecodeError as exc:
        raise UploadError(str(exc), status=422) from None
    except Exception as exc:  # any other PIL failure on hostile input is still the client's file
        raise UploadError(f"could not decode image: {type(exc).__name__}: {exc}", status=422) from None


class Classifier:
    """A Keras model behind one compiled `tf.function` with a fixed input signature."""

    def __init__(self, model_file: Path, image_size: int, calibration: dict | None = None) -> None:
        import keras
        import tensorflow as tf

        self.image_size = image_size
        self.calibration = calibration  # glasses.calibration: fitted on validation, stored with the version
        self.model = keras.saving.load_model(model_file, compile=False, safe_mode=True)
        expected = (None, image_size, image_size, 3)
        if tuple(self.model.input_shape) != expected:
            raise ValueError(f"model input shape {self.model.input_shape} does not match {expected}")

        @tf.function(
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def probabilities(pixels: tf.Tensor) -> tf.Tensor:
            x = tf.cast(pixels, tf.float32) / 255.0  # == preprocessing.rescale, bit for bit
            return tf.reshape(self.model(x, training=False), [-1])

        self._probabilities = probabilities

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 calibrated P(glasses) (N,)."""
        return cal.apply(self._probabilities(pixels).numpy(), self.calibration)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        """Trace the graph and touch each batch-size regime once, so the first request is not slow."""
        for n in batch_sizes:
            out = self(np.zeros((n, self.image_size, self.image_size, 3), np.uint8))
            if out.shape != (n,) or not np.all(np.isfinite(out)):
                raise RuntimeError(f"warm-up failed: model returned {out.shape} / non-finite values")


def verdict(probability: float, threshold: float, tag: str) -> dict[str, Any]:
    """One prediction as the API returns it."""
    p = float(probability)
    return {
        "verdict": CLASS_NAMES[1] if p >= threshold else CLASS_NAMES[0],
        "probability": p,
        "threshold": threshold,
        "model": tag,
    }
