"""LiteRT conversion at registration: a Keras model -> model.tflite, checked against Keras first.

    keras.Model --model.export(dir, format="tf_saved_model")--> SavedModel (temporary directory)
      --tf.lite.TFLiteConverter.from_saved_model(dir).convert()--> .tflite bytes (float32)
      --check: P(glasses) from LiteRT (glasses.runtimes.LiteRTClassifier) against the Keras model on
        the check images--> accepted when max |dp| <= LITERT_TOLERANCE, else refused: the version is
        still registered and serves on TensorFlow

(Converting a `tf.function` concrete function instead silently dropped the weights: NaN outputs.)
Check images: the version's test photos (uint8, from its split manifest) plus generated images in
each format and colour mode the preprocessing contract handles, decoded through that contract.
TensorFlow is imported here and in the tf runtime only.
"""

from __future__ import annotations

import io
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glasses import preprocessing
from glasses.config import LITERT_TOLERANCE, MODEL_FILE
from glasses.runtimes import LiteRTClassifier

MAX_CHECK_PHOTOS = 512  # test photos used for the check (all of a 420-photo CelebA test split)


@dataclass
class Conversion:
    """Outcome of one conversion: the .tflite bytes when accepted, and what the check found."""

    tflite: bytes | None
    max_abs_dp: float | None
    images: int
    seconds: float
    reason: str  # one line, for the CLI and the registry metadata

    @property
    def accepted(self) -> bool:
        return self.tflite is not None

    def metadata(self) -> dict[str, Any]:
        """What the registry records about the conversion (metadata key `litert`)."""
        out: dict[str, Any] = {"accepted": self.accepted, "checked_images": self.images,
                               "tolerance": LITERT_TOLERANCE, "reason": self.reason,
                               "seconds": round(self.seconds, 2), "versions": _versions()}
        if self.max_abs_dp is not None:
            out["max_abs_dp"] = self.max_abs_dp
        if self.tflite is not None:
            out["bytes"] = len(self.tflite)
        return out


def export_tflite(model: Any) -> bytes:
    """The Keras model as LiteRT flatbuffer bytes, through a SavedModel export."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="glasses-litert-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()


def keras_probabilities(model: Any, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """P(glasses) of the Keras model on uint8 pixels, on the training contract's tensor (x / 255)."""
    parts = [np.asarray(model(preprocessing.rescale(pixels[i:i + batch]), training=False)).reshape(-1)
             for i in range(0, len(pixels), batch)]
    return np.concatenate(parts).astype(np.float32)


def generated_check_images(size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): generated pictures saved in each format / colour mode, decoded by the contract."""
    rng = np.random.default_rng(1234)
    pictures = [Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize((178, 218), Image.BICUBIC)
                for _ in range(3)]
    noisy = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    grey16 = Image.fromarray((np.asarray(pictures[0].convert("L"), np.uint16) * 257).astype(np.uint16))
    variants = [(pictures[0], "PNG"), (pictures[1], "JPEG"), (pictures[2], "WEBP"), (noisy, "PNG"),
                (pictures[0].convert("L"), "PNG"), (grey16, "PNG"), (pictures[1].convert("RGBA"), "PNG"),
                (pictures[2].convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"),
                (pictures[0].convert("CMYK"), "JPEG"), (pictures[1], "BMP"), (pictures[2], "TIFF"),
                (Image.new("RGB", (64, 64), (0, 0, 0)), "PNG"), (Image.new("RGB", (64, 64), (255, 255, 255)), "PNG")]
    out = []
    for img, fmt in variants:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(preprocessing.to_uint8(buf.getvalue(), size))
    return np.stack(out)


def check_images(test_pixels: np.ndarray | None, size: int) -> np.ndarray:
    """The conversion's check set: up to MAX_CHECK_PHOTOS test photos plus the generated images."""
    generated = generated_check_images(size)
    if test_pixels is None or len(test_pixels) == 0:
        return generated
    return np.concatenate([np.asarray(test_pixels[:MAX_CHECK_PHOTOS], np.uint8), generated])


def convert_checked(model: Any, pixels: np.ndarray, tolerance: float = LITERT_TOLERANCE,
                    export: Any = None) -> Conversion:
    """Convert and check on `pixels` (uint8 (N, S, S, 3)); refused (tflite None) past `tolerance`.

    A converter failure is a refusal too, with its first line as the reason: registration goes on.
    """
    start = time.monotonic()
    size = int(pixels.shape[1])
    try:
        tflite = (export or export_tflite)(model)
        litert = LiteRTClassifier(tflite, size)(pixels)
    except Exception as exc:  # unsupported ops, converter errors: the version still serves on TF
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return Conversion(None, None, len(pixels), time.monotonic() - start,
                          f"LiteRT conversion failed ({type(exc).__name__}: {first}); the version serves on TensorFlow")
    diff = np.abs(litert.astype(np.float64) - keras_probabilities(model, pixels))
    worst = float(np.max(diff)) if np.all(np.isfinite(litert)) else float("inf")
    seconds = time.monotonic() - start
    if not worst <= tolerance:
        return Conversion(None, worst, len(pixels), seconds,
                          f"LiteRT conversion refused: max |dp| {worst:.2e} > {tolerance:.0e} against Keras on "
                          f"{len(pixels)} check images; the version serves on TensorFlow")
    return Conversion(tflite, worst, len(pixels), seconds,
                      f"LiteRT conversion accepted: max |dp| {worst:.2e} <= {tolerance:.0e} on {len(pixels)} check images")


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "ai-edge-litert"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


# --- an already registered version ----------------------------------------------------------------


def test_pixels(manifest_path: str | Path | None) -> np.ndarray | None:
    """The test split's uint8 photos of a split manifest, or None when it (or its cache) is gone."""
    from training.data import load_split

    if not manifest_path or not Path(manifest_path).is_file():
        return None
    try:
        return load_split(manifest_path, "test")[0]
    except (OSError, ValueError, KeyError):
        return None


def convert_version(tag: str, manifest: str | Path | None = None) -> tuple[str, Conversion]:
    """Register a copy of version `tag` with a checked model.tflite (same weights, metadata and labels,
    plus `litert` and `converted_from`); promoted if `tag` was. Returns (new tag, conversion).

    Check photos: the test split of `manifest`, else of the version's own recorded manifest (recorded:
    which, and whether it is the version's own test split). Refused (UserError, nothing stored) when
    the conversion does not pass its check.
    """
    from glasses import registry
    from glasses.files import UserError, file_sha256, load_keras_model

    source = registry.get_model(tag)
    meta = dict(source.info.metadata or {})
    if manifest is not None and not Path(manifest).is_file():
        raise UserError(f"manifest {manifest} does not exist")
    check_manifest = manifest or meta.get("split_manifest_path")
    photos = test_pixels(check_manifest)
    size = int(meta.get("image_size", preprocessing.IMAGE_SIZE))
    model = load_keras_model(source.path_of(MODEL_FILE))
    conversion = convert_checked(model, check_images(photos, size))
    if not conversion.accepted:
        raise UserError(conversion.reason)
    own = photos is not None and file_sha256(check_manifest) == meta.get("split_manifest_hash")
    record = conversion.metadata() | {"test_photos": 0 if photos is None else min(len(photos), MAX_CHECK_PHOTOS),
                                      "photos_from": str(check_manifest) if photos is not None else "none",
                                      "photos_are_its_test_split": own}
    new_tag = registry.save_version(model, metadata=meta | {"litert": record, "converted_from": str(source.tag)},
                                    labels=dict(source.info.labels or {}), litert=conversion.tflite,
                                    files=_kept_files(source))
    if registry.promoted_tag() == str(source.tag):
        registry.promote(new_tag)
    return new_tag, conversion


def _convert_cli(args) -> int:
    new_tag, conversion = convert_version(args.tag, args.manifest)
    print(f"registered {new_tag} = {args.tag} + model.tflite ({conversion.reason})")
    return 0


def add_cli(subparsers) -> None:
    """`glasses-train convert TAG [--manifest M]`: add a checked LiteRT model to a registered version."""
    p = subparsers.add_parser("convert", help="register a copy of a version with a checked LiteRT model.tflite")
    p.add_argument("tag", help="registered version (glasses_classifier:<version> or <version>)")
    p.add_argument("--manifest", type=Path, help="split manifest whose test photos check the conversion "
                                                  "(default: the version's recorded one, when still present)")
    p.set_defaults(func=_convert_cli)


def _kept_files(source: Any) -> dict[str, Path]:
    """The files stored beside the source version's model (its HTML report, test predictions) to copy along."""
    from training.report import PREDICTIONS_FILE, REPORT_HTML

    return {name: Path(source.path) / name for name in (REPORT_HTML, PREDICTIONS_FILE)
            if (Path(source.path) / name).exists()}
