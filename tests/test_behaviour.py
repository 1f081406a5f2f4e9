"""Behavioural tests of the bundled default model on real photos of people it never saw (issue 7).

Over the person-disjoint *test* split of ../shared/data/celeba-glasses (the same split `prepare` makes:
training.split.split_assignments on labels.csv, grouped by celeba_identity, seed SEED), each photo
is changed the way users change photos, run through the preprocessing contract and the model
in-process (batched), and compared with the untouched photo:

    horizontal flip            same verdict on >= 98 % of the photos
    grayscale                  same verdict on >= 95 %
    centre crop to 80 %        same verdict on >= 95 %
    PNG vs JPEG quality 95     |delta P(glasses)| <= 0.05 on every photo
    2x size (LANCZOS)          |delta P(glasses)| <= 0.05 on every photo

Verdicts use the model's own threshold (its registry metadata). Skips when the photos are absent
(no ../shared) or when models/glasses_classifier.bentomodel has not been produced yet.
GLASSES_BEHAVIOUR_MODEL=path/to/other.bentomodel checks another export (before bundling it).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glasses.config import BUNDLED_MODEL_FILE, DEFAULT_THRESHOLD, SEED
from glasses.preprocessing import decode, to_uint8

FLIP_SAME_MIN = 0.98
GRAY_SAME_MIN = 0.95
CROP_SAME_MIN = 0.95
CROP_FRACTION = 0.8
MAX_PROBABILITY_SHIFT = 0.05
VARIANTS = ("original", "flip", "gray", "crop80", "png", "jpeg95", "x2")


def load_bundled(path: Path, into: Path):
    """(keras model, metadata dict) from a `.bentomodel` archive, read directly (no model store)."""
    import keras
    import yaml

    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "model.keras" not in members or "model.yaml" not in members:
            raise AssertionError(f"{path} holds no model.keras / model.yaml: {sorted(members)}")
        for name in ("model.keras", "model.yaml"):
            (into / name).write_bytes(tar.extractfile(members[name]).read())
    info = yaml.safe_load((into / "model.yaml").read_text())
    model = keras.saving.load_model(into / "model.keras", compile=False, safe_mode=True)
    return model, info.get("metadata") or {}


def split_photos(celeba: Path) -> list[Path]:
    """Files of the person-disjoint test split, as `prepare` assigns them."""
    from training.split import split_assignments

    with open(celeba / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [int(r["eyeglasses"]) for r in rows]
    groups = [r["celeba_identity"] for r in rows]
    split = split_assignments(labels, groups, seed=SEED)
    return [celeba / r["file"] for r, s in zip(rows, split) if s == 2]


def variants(path: Path) -> dict[str, np.ndarray]:
    """The photo as users might upload it, each through the preprocessing contract (uint8 128 px)."""
    raw = path.read_bytes()
    img = decode(raw).convert("RGB")
    w, h = img.size
    cw, ch = round(w * CROP_FRACTION), round(h * CROP_FRACTION)
    left, top = (w - cw) // 2, (h - ch) // 2

    def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        return buf.getvalue()

    return {
        "original": to_uint8(raw),
        "flip": to_uint8(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "gray": to_uint8(img.convert("L")),
        "crop80": to_uint8(img.crop((left, top, left + cw, top + ch))),
        "png": to_uint8(encoded(img, "PNG", compress_level=1)),
        "jpeg95": to_uint8(encoded(img, "JPEG", quality=95)),
        "x2": to_uint8(encoded(img.resize((2 * w, 2 * h), Image.Resampling.LANCZOS), "PNG", compress_level=1)),
    }


@pytest.fixture(scope="module")
def behaviour(celeba_dir: Path, tmp_path_factory) -> dict:
    """P(glasses) of every variant of every test-split photo, and the model's threshold."""
    path = Path(os.environ.get("GLASSES_BEHAVIOUR_MODEL", BUNDLED_MODEL_FILE))
    if not path.exists():
        pytest.skip(f"no bundled model at {path} yet (produced by the command in models/README.md)")
    import tensorflow as tf

    model, metadata = load_bundled(path, tmp_path_factory.mktemp("bundled"))
    photos = split_photos(celeba_dir)
    assert len(photos) >= 100, f"test split unexpectedly small: {len(photos)} photos"
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL releases the GIL
        per_photo = list(pool.map(variants, photos))
    pixels = np.stack([v[k] for k in VARIANTS for v in per_photo])  # variant-major

    @tf.function(input_signature=[tf.TensorSpec([None, *pixels.shape[1:]], tf.uint8)])
    def predict(x):
        return tf.reshape(model(tf.cast(x, tf.float32) / 255.0, training=False), [-1])

    probs = np.concatenate([predict(pixels[i:i + 256]).numpy() for i in range(0, len(pixels), 256)])
    probs = probs.reshape(len(VARIANTS), len(photos))
    return {
        "p": dict(zip(VARIANTS, probs)),
        "threshold": float(metadata.get("threshold", DEFAULT_THRESHOLD)),
        "n": len(photos),
    }


def same_verdict(b: dict, variant: str) -> float:
    t = b["threshold"]
    return float(np.mean((b["p"][variant] >= t) == (b["p"]["original"] >= t)))


def test_flip_keeps_verdict(behaviour):
    share = same_verdict(behaviour, "flip")
    assert share >= FLIP_SAME_MIN, f"flip: same verdict on {share:.1%} of {behaviour['n']} test photos"


def test_grayscale_keeps_verdict(behaviour):
    share = same_verdict(behaviour, "gray")
    assert share >= GRAY_SAME_MIN, f"grayscale: same verdict on {share:.1%} of {behaviour['n']} test photos"


def test_centre_crop_keeps_verdict(behaviour):
    share = same_verdict(behaviour, "crop80")
    assert share >= CROP_SAME_MIN, f"centre crop 80%: same verdict on {share:.1%} of {behaviour['n']} test photos"


def test_png_vs_jpeg_q95_barely_moves_probability(behaviour):
    shift = np.abs(behaviour["p"]["png"] - behaviour["p"]["jpeg95"])
    assert shift.max() <= MAX_PROBABILITY_SHIFT, f"PNG vs JPEG q95: max |dp| {shift.max():.4f} (mean {shift.mean():.4f})"


def test_double_size_barely_moves_probability(behaviour):
    shift = np.abs(behaviour["p"]["x2"] - behaviour["p"]["png"])
    assert shift.max() <= MAX_PROBABILITY_SHIFT, f"2x size: max |dp| {shift.max():.4f} (mean {shift.mean():.4f})"
