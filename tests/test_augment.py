"""training/augment.py: shapes, ranges and labels kept; each random change really happens; train only."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training import augment  # noqa: E402

SIZE = 64


def half_image() -> np.ndarray:
    """Left half bright red, right half dark blue: flips and grayscale are easy to see."""
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    img[:, : SIZE // 2] = (0.9, 0.2, 0.1)
    img[:, SIZE // 2:] = (0.05, 0.1, 0.4)
    return img


def run_many(fn, image: np.ndarray, n: int) -> np.ndarray:
    """n augmented copies of one image, through tf.data as make_dataset maps it (per example)."""
    ds = tf.data.Dataset.from_tensors((image, np.float32(1))).repeat(n).map(fn).batch(n)
    x, y = next(iter(ds))
    assert np.all(y.numpy() == 1.0), "augmentation must not touch labels"
    return x.numpy()


def test_celeba_keeps_shape_dtype_range_and_label():
    rng = np.random.default_rng(0)
    img = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    out, label = augment.celeba(tf.constant(img), tf.constant(0.0))
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    assert float(label) == 0.0
    assert not np.allclose(out.numpy(), img), "celeba augmentation left the image unchanged"


def test_celeba_flips_grays_and_varies():
    out = run_many(augment.celeba, half_image(), 160)
    left, right = out[:, :, : SIZE // 4].mean(axis=(1, 2, 3)), out[:, :, -SIZE // 4:].mean(axis=(1, 2, 3))
    flipped = np.mean(left < right)  # the bright half moved to the right
    assert 0.3 <= flipped <= 0.7, f"horizontal flips in {flipped:.0%} of samples, expected about half"
    channel_spread = np.abs(out - out.mean(axis=-1, keepdims=True)).max(axis=(1, 2, 3))
    gray = np.mean(channel_spread < 1e-3)
    p = augment.CELEBA_AUGMENTATION["grayscale_p"]
    assert p - 0.15 <= gray <= p + 0.15, f"grayscale in {gray:.0%} of samples, expected about {p:.0%}"
    # zoom / shift / brightness / contrast / JPEG: copies differ from each other and from the input
    distinct = len({np.round(o, 2).tobytes() for o in out})
    assert distinct > 150
    assert np.abs(out - half_image()).mean(axis=(1, 2, 3)).min() > 0.0


def test_random_grayscale_is_luma():
    img = tf.constant(half_image())
    gray = augment.random_grayscale(img, 1.0).numpy()
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])
    r, g, b = half_image()[0, 0]
    assert gray[0, 0, 0] == pytest.approx(0.2989 * r + 0.5870 * g + 0.1140 * b, abs=1e-3)  # PIL convert("L")
    assert np.array_equal(augment.random_grayscale(img, 0.0).numpy(), half_image())


def test_profiles_name_existing_augmentations():
    from glasses.config import TUNING_PROFILES
    from training.fitting import resolve_augment

    names = {p.augment for p in TUNING_PROFILES.values()} - {None}
    assert "celeba" in names
    for name in names:
        assert callable(resolve_augment(name))


def test_make_dataset_augments_train_only(tmp_path):
    from _training import tiny_manifest

    from training.data import make_dataset

    manifest = tiny_manifest(tmp_path)
    plain = {s: make_dataset(manifest, s, shuffle=False, batch_size=128) for s in ("train", "val")}
    aug = {s: make_dataset(manifest, s, shuffle=False, batch_size=128, augment=augment.celeba) for s in ("train", "val")}
    (xv, yv), (av, bv) = next(iter(plain["val"])), next(iter(aug["val"]))
    assert np.array_equal(xv.numpy(), av.numpy()) and np.array_equal(yv.numpy(), bv.numpy())
    (xt, yt), (at, bt) = next(iter(plain["train"])), next(iter(aug["train"]))
    assert np.array_equal(yt.numpy(), bt.numpy())
    assert at.shape == xt.shape and at.dtype == xt.dtype
    assert not np.allclose(xt.numpy(), at.numpy())
