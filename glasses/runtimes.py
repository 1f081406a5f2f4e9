"""Model runtimes: how a registered version is loaded and run, TensorFlow or LiteRT, behind one loader.

    load_classifier(bento_model | version directory, runtime="auto") -> Classifier
        "tf"      model.keras behind one compiled tf.function (uint8 in, x / 255 inside the graph)
        "litert"  model.tflite on ai_edge_litert's interpreter (XNNPACK); x / 255 is
                  glasses.preprocessing.rescale, bit-identical to the graph's tf.cast(x) / 255.0
        "auto"    litert when the version has a model.tflite (training/convert.py writes it at
                  registration, only when it matches Keras within LITERT_TOLERANCE), else tf

Every classifier maps uint8 pixels (N, S, S, 3) to float32 P(glasses) (N,) and has `runtime`,
`image_size`, `warm_up` and `replica` (a classifier of the same model that a second caller can run
without waiting for this one: LiteRT builds another interpreter; TensorFlow's is already concurrent).
TensorFlow and Keras are imported only by the tf runtime, so a process serving LiteRT never loads
them (the container has no TensorFlow at all).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from glasses import calibration, preprocessing, quiet
from glasses.config import (
    IMAGE_SIZE,
    LITERT_MAX_BATCH,
    LITERT_MODEL_FILE,
    LITERT_THREADS,
    MODEL_FILE,
    RUNTIMES,
)
from glasses.files import UserError


class RuntimeUnavailable(UserError):
    """The requested runtime cannot run this version here; the message says why and what to do."""


class Classifier(Protocol):
    runtime: str
    image_size: int

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...

    def warm_up(self, batch_sizes: tuple[int, ...] | None = None) -> None: ...

    def replica(self, threads: int = LITERT_THREADS) -> "Classifier": ...


class _WarmUp:
    """Touch each batch-size regime once, so the first request is not slow; fail on a broken model."""

    image_size: int
    warm_up_sizes: tuple[int, ...] = (1, 8, 64)  # the runtime's own regimes unless told otherwise

    def warm_up(self, batch_sizes: tuple[int, ...] | None = None) -> None:
        for n in batch_sizes or self.warm_up_sizes:
            out = self(np.zeros((n, self.image_size, self.image_size, 3), np.uint8))  # type: ignore[operator]
            if out.shape != (n,) or not np.all(np.isfinite(out)):
                raise RuntimeError(f"warm-up failed: model returned {out.shape} / non-finite values")


class TFClassifier(_WarmUp):
    """A Keras model behind one compiled `tf.function` with a fixed input signature."""

    runtime = "tf"

    def __init__(self, model_file: Path, image_size: int) -> None:
        import keras
        import tensorflow as tf

        self.image_size = image_size
        self.model = keras.saving.load_model(model_file, compile=False, safe_mode=True)
        _check_shape(tuple(self.model.input_shape), image_size)

        @tf.function(
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def probabilities(pixels: tf.Tensor) -> tf.Tensor:
            x = tf.cast(pixels, tf.float32) / 255.0  # == preprocessing.rescale, bit for bit
            return tf.reshape(self.model(x, training=False), [-1])

        self._probabilities = probabilities

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 P(glasses) (N,)."""
        return self._probabilities(pixels).numpy()

    def replica(self, threads: int = LITERT_THREADS) -> "TFClassifier":
        """This classifier itself: calls from several threads already run concurrently (no lock)."""
        return self


class LiteRTClassifier(_WarmUp):
    """A .tflite model on one LiteRT interpreter; batches over LITERT_MAX_BATCH run in chunks.

    The interpreter is not thread-safe: calls take turns per chunk. A caller that must not wait behind
    another (/explain beside the batch dispatcher) runs its own `replica()`.
    """

    runtime = "litert"
    warm_up_sizes = (1, 2)  # a new batch size only re-allocates: a first batch of 64 costs as the next one

    def __init__(self, model: Path | bytes, image_size: int, threads: int = LITERT_THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.image_size, self._model = image_size, model
        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        with quiet.muted_stderr():  # LiteRT announces its XNNPACK delegate on stderr at the first allocation
            self._interpreter = Interpreter(**source, num_threads=threads)
            self._interpreter.allocate_tensors()
        [inp] = self._interpreter.get_input_details()
        [out] = self._interpreter.get_output_details()
        _check_shape(tuple(int(d) if d >= 0 else None for d in inp["shape_signature"]), image_size)
        if inp["dtype"] != np.float32:
            raise ValueError(f"LiteRT model input is {inp['dtype']}, expected float32 in [0, 1]")
        self._input, self._output, self._batch = inp["index"], out["index"], 0
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 P(glasses) (N,)."""
        x = preprocessing.rescale(np.asarray(pixels))
        parts = [self._run(x[i:i + LITERT_MAX_BATCH]) for i in range(0, len(x), LITERT_MAX_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def replica(self, threads: int = LITERT_THREADS) -> "LiteRTClassifier":
        """Another interpreter (and lock) on the same model, with `threads` XNNPACK threads."""
        return LiteRTClassifier(self._model, self.image_size, threads)

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._invoke(x)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:  # resizing to a size seen before costs ~0.1 ms
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).reshape(-1).copy()


def _check_shape(shape: tuple, image_size: int) -> None:
    expected = (None, image_size, image_size, 3)
    if shape != expected:
        raise ValueError(f"model input shape {shape} does not match {expected}")


def tensorflow_installed() -> bool:
    """Whether this environment can run the tf runtime (the serving container cannot)."""
    return importlib.util.find_spec("tensorflow") is not None


def version_dir(bento_model_or_path: Any) -> Path:
    """The directory holding a version's files (a BentoML model or a path to such a directory)."""
    return Path(bento_model_or_path.path if hasattr(bento_model_or_path, "path") else bento_model_or_path)


def available_runtimes(bento_model_or_path: Any) -> list[str]:
    """The runtimes whose model file this version has ("tf": model.keras, "litert": model.tflite)."""
    folder = version_dir(bento_model_or_path)
    files = {"tf": MODEL_FILE, "litert": LITERT_MODEL_FILE}
    return [r for r in RUNTIMES if (folder / files[r]).is_file()]


def choose_runtime(bento_model_or_path: Any, requested: str = "auto") -> str:
    """The runtime to serve this version with; RuntimeUnavailable (one line) when none fits."""
    if requested not in (*RUNTIMES, "auto"):
        raise RuntimeUnavailable(f"unknown runtime {requested!r}: use GLASSES_RUNTIME=tf, litert or auto")
    name = getattr(bento_model_or_path, "tag", version_dir(bento_model_or_path).name)
    have = available_runtimes(bento_model_or_path)
    if requested == "auto":
        requested = "litert" if "litert" in have else "tf"
    if requested not in have:
        hint = {"litert": "it was registered without a passing LiteRT conversion; use GLASSES_RUNTIME=tf or auto",
                "tf": "its model.keras is missing"}[requested]
        raise RuntimeUnavailable(f"version {name} has no {requested} model ({hint})")
    if requested == "tf" and not tensorflow_installed():
        raise RuntimeUnavailable(f"version {name} needs the tf runtime but TensorFlow is not installed here "
                                 f"(this environment serves LiteRT versions only: register with a LiteRT conversion)")
    return requested


class CalibratedClassifier(_WarmUp):
    """A runtime's raw P(glasses) through the version's calibration (glasses.calibration.apply, the
    same function evaluation uses): what the service answers and thresholds."""

    def __init__(self, raw: Classifier, calibration: dict) -> None:
        self.raw, self.calibration = raw, calibration
        self.runtime, self.image_size, self.warm_up_sizes = raw.runtime, raw.image_size, raw.warm_up_sizes

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 calibrated P(glasses) (N,)."""
        return calibration.apply(self.raw(pixels), self.calibration)

    def replica(self, threads: int = LITERT_THREADS) -> "CalibratedClassifier":
        """The raw runtime's replica, through the same calibration."""
        return CalibratedClassifier(self.raw.replica(threads), self.calibration)


def load_classifier(bento_model_or_path: Any, runtime: str = "auto", image_size: int | None = None,
                    threads: int = LITERT_THREADS) -> Classifier:
    """Load a version with the runtime `choose_runtime` picks (image_size default: its metadata's;
    `threads`: LiteRT's, the service's per-worker default), calibrated with its metadata's
    `calibration` when it has one."""
    chosen = choose_runtime(bento_model_or_path, runtime)
    meta = getattr(getattr(bento_model_or_path, "info", None), "metadata", None) or {}
    if image_size is None:
        image_size = int(meta.get("image_size", IMAGE_SIZE))
    folder = version_dir(bento_model_or_path)
    if chosen == "litert":
        raw: Classifier = LiteRTClassifier(folder / LITERT_MODEL_FILE, image_size, threads)
    else:
        raw = TFClassifier(folder / MODEL_FILE, image_size)
    return CalibratedClassifier(raw, meta["calibration"]) if meta.get("calibration") else raw
