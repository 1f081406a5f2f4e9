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

from glasses import calibration
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

    raw = np.concatenate([predict(pixels[i:i + 256]).numpy() for i in range(0, len(pixels), 256)])
    probs = calibration.apply(raw, metadata.get("calibration")).reshape(len(VARIANTS), len(photos))
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


# --- framings and conditions (training/robustness.py) on the union of both CelebA sources -------
# Over the person-disjoint test split `prepare --source A --source B` makes of both CelebA sets
# (byte-identical duplicates dropped, split by celeba_identity across the two sets), every photo in
# every condition of training/robustness.py (seeded), through the contract (with the version's framing),
# the bundled model and its calibration. Bounds: the bundled model's figures (models/README.md) minus a margin of about one
# photo's worth of noise; they fail when a model regresses on a condition.
UNION_SOURCES = ("celeba-glasses", "celeba-glasses-200px")
# condition -> (ROC-AUC min, recall min at the served threshold): the bundled model's figures on the
# 1,280 test photos (110 with glasses), framed as its metadata says (models/README.md), minus 0.005
# AUC and 2 glasses photos of recall.
CONDITION_BOUNDS: dict[str, tuple[float, float]] = {
    "untouched": (0.985, 0.936), "tight_crop": (0.983, 0.936), "loose_crop": (0.986, 0.945),
    "off_centre": (0.984, 0.936), "small_face": (0.986, 0.945), "rotation": (0.983, 0.954),
    "grayscale": (0.985, 0.954), "low_resolution": (0.981, 0.927), "jpeg": (0.985, 0.945),
    "blur": (0.969, 0.890), "dark": (0.988, 0.945), "bright": (0.980, 0.918),
}
MAX_ECE = 0.02  # measured 0.013 on the untouched test photos (15 bins)


def union_test_split(data_dir: Path) -> tuple[list[bytes], np.ndarray]:
    """(file bytes, labels) of the union's test split, as training/union.py assigns it."""
    import hashlib

    from training.sources import inventory, scan
    from training.split import split_assignments

    photos, labels, groups, seen = [], [], [], set()
    for name in UNION_SOURCES:
        inv = inventory(scan(f"folders:{data_dir / name}"))
        for file, label, group in zip(inv.files, inv.labels, inv.groups):
            data = (inv.root / file).read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            if digest not in seen:
                seen.add(digest)
                photos.append(data)
                labels.append(label)
                groups.append(group)
    test = split_assignments(labels, groups, seed=SEED) == 2
    return [p for p, t in zip(photos, test) if t], np.asarray(labels)[test]


@pytest.fixture(scope="module")
def conditions(celeba_dir: Path, tmp_path_factory) -> dict:
    """Calibrated P(glasses) per condition on the union test split, its labels and the served threshold."""
    path = Path(os.environ.get("GLASSES_BEHAVIOUR_MODEL", BUNDLED_MODEL_FILE))
    if not path.exists():
        pytest.skip(f"no bundled model at {path} yet (produced by the command in models/README.md)")
    if not (celeba_dir.parent / UNION_SOURCES[1] / "labels.csv").exists():
        pytest.skip(f"{celeba_dir.parent / UNION_SOURCES[1]} is absent")
    import tensorflow as tf

    from training.robustness import score_conditions

    model, metadata = load_bundled(path, tmp_path_factory.mktemp("bundled-conditions"))
    photos, labels = union_test_split(celeba_dir.parent)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def predict(x):
        return tf.reshape(model(tf.cast(x, tf.float32) / 255.0, training=False), [-1])

    def served(pixels: np.ndarray) -> np.ndarray:
        raw = np.concatenate([predict(pixels[i:i + 256]).numpy() for i in range(0, len(pixels), 256)])
        return calibration.apply(raw, metadata.get("calibration"))

    size = int(metadata.get("image_size", 128))
    return {"p": score_conditions(served, photos, size=size, seed=SEED, framing=metadata.get("framing", "none"))[0], "y": labels,
            "threshold": float(metadata.get("threshold", DEFAULT_THRESHOLD))}


@pytest.mark.parametrize("condition", list(CONDITION_BOUNDS))
def test_condition_keeps_ranking_and_recall(conditions, condition):
    from training.evaluate import binary_metrics
    from training.robustness import CONDITIONS

    p = conditions["p"][list(CONDITIONS).index(condition)]
    m = binary_metrics(conditions["y"], p, conditions["threshold"])
    auc_min, recall_min = CONDITION_BOUNDS[condition]
    where = f"{condition}: {m['n']} photos, {m['positives']} with glasses"
    assert m["roc_auc"] >= auc_min, f"{where}: ROC-AUC {m['roc_auc']:.4f} < {auc_min}"
    assert m["recall"] >= recall_min, f"{where}: recall {m['recall']:.4f} < {recall_min} at {conditions['threshold']:.3f}"


def test_calibrated_probabilities_on_untouched_photos(conditions):
    from training.robustness import CONDITIONS

    p = conditions["p"][list(CONDITIONS).index("untouched")]
    ece = calibration.expected_calibration_error(conditions["y"], p)
    assert ece <= MAX_ECE, f"ECE {ece:.4f} > {MAX_ECE} on {len(p)} untouched test photos"
