"""Robustness evaluation: every condition really alters the photo, deterministically; the report's figures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from training.data import read_manifest
from training.robustness import (
    CONDITIONS,
    REPORT_JSON,
    REPORT_MD,
    altered,
    photo_variants,
    robustness,
    split_photo_bytes,
)

from _fixtures import face_image
from _training import tiny_manifest


def _photo(seed: int = 3, size: tuple[int, int] = (178, 218)) -> Image.Image:
    return face_image(seed, True, 200).resize(size)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_every_condition_changes_the_pixels_and_untouched_does_not():
    data = _jpeg_bytes(_photo())
    v = photo_variants(data, 0, size=128)
    assert v.shape == (len(CONDITIONS), 128, 128, 3) and v.dtype == np.uint8
    names = list(CONDITIONS)
    from glasses.preprocessing import to_uint8

    assert np.array_equal(v[names.index("untouched")], to_uint8(data, 128))
    for k, name in enumerate(names):
        if name != "untouched":
            diff = np.abs(v[k].astype(int) - v[0].astype(int)).mean()
            assert diff > 1.0, f"{name} barely changes the photo (mean |d| {diff:.2f})"


def test_conditions_are_deterministic_per_photo_and_seed():
    data = _jpeg_bytes(_photo())
    assert np.array_equal(photo_variants(data, 5, seed=1), photo_variants(data, 5, seed=1))
    assert not np.array_equal(photo_variants(data, 5, seed=1), photo_variants(data, 6, seed=1))


def test_framings_and_degradations_do_what_they_say():
    img = _photo().convert("RGB")
    rng = np.random.default_rng(0)
    tight = altered(img, "tight_crop", rng)
    assert tight.size == (round(0.62 * 178), round(0.62 * 178))
    assert altered(img, "loose_crop", rng).size == (round(178 * 1.6), round(218 * 1.6))
    assert altered(img, "small_face", rng).size == (round(178 * 2.5), round(218 * 2.5))
    assert altered(img, "grayscale", rng).mode == "L"
    jpeg = altered(img, "jpeg", rng)
    assert isinstance(jpeg, bytes) and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    dark = np.asarray(altered(img, "dark", rng), float).mean()
    bright = np.asarray(altered(img, "bright", rng), float).mean()
    assert dark < 0.4 * np.asarray(img, float).mean() + 1 < bright
    low = altered(img, "low_resolution", rng)
    assert low.size == img.size  # upscaled back: the detail is gone, not the size
    with pytest.raises(ValueError, match="unknown condition"):
        altered(img, "fisheye", rng)


def _eye_band_darkness(pixels: np.ndarray) -> np.ndarray:
    """A real, fixed scorer for the synthetic faces (their glasses are a dark bar across the eyes)."""
    s = pixels.shape[1]
    band = pixels[:, int(s * 0.38):int(s * 0.52), int(s * 0.25):int(s * 0.75)].astype(np.float64)
    return 1.0 - band.mean(axis=(1, 2, 3)) / 255.0


def test_report_counts_photos_and_people_per_condition(tmp_path_factory):
    manifest_path = tiny_manifest(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("robust")
    report = robustness(_eye_band_darkness, manifest_path, 0.5, out_dir=out)
    m = read_manifest(manifest_path)
    test = m["splits"]["test"]
    assert len(split_photo_bytes(m)) == len(test["files"])
    saved = json.loads((out / REPORT_JSON).read_text())
    assert list(saved["conditions"]) == list(CONDITIONS)
    for row in saved["conditions"].values():
        assert row["all"]["photos"] == len(test["files"]) and row["all"]["glasses_photos"] == sum(test["labels"])
        assert row["all"]["people"] == len(set(test["groups"]))
    assert saved["conditions"]["untouched"]["all"]["roc_auc"] == 1.0  # the dark bar is found untouched
    table = (out / REPORT_MD).read_text()
    assert all(f"| {name} |" in table for name in CONDITIONS)
    again = robustness(_eye_band_darkness, manifest_path, 0.5)
    assert again["conditions"] == report["conditions"]
