"""Data: split manifests and the uint8 cache -> numpy arrays and tf.data pipelines like the paper's.

    manifest (training/split.py) -> load_split: uint8 (N, S, S, 3) + int64 labels (1 = glasses)
    -> make_dataset: cache -> shuffle(SHUFFLE_BUFFER, seed) [train] -> batch -> x / 255 per batch
       -> prefetch(AUTOTUNE); with an augmentation: x / 255 -> augment per image [train] -> batch

Pixels reach the model as `tf.cast(x, tf.float32) / 255.0`, bit-identical to
glasses.preprocessing.rescale, so a file gives the same tensor here and in the service.
TensorFlow is imported only by `make_dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from glasses.config import BATCH_SIZE, CLASS_NAMES, SEED, SHUFFLE_BUFFER
from glasses.files import UserError, file_sha256

if TYPE_CHECKING:
    import tensorflow as tf


def read_manifest(path: str | Path) -> dict:
    """Load and sanity-check a split manifest written by `prepare`; a bad one is a UserError."""
    path = Path(path)
    hint = "run `glasses-train prepare` and pass the manifest.json it prints"
    if not path.is_file():
        raise UserError(f"manifest {path} does not exist; {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a split manifest (not JSON: {exc}); {hint}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a split manifest (not a JSON object); {hint}")
    for key in ("fingerprint", "size", "preprocessing_version", "cache", "splits", "counts"):
        if key not in manifest:
            raise UserError(f"{path} is not a split manifest (no {key!r}); {hint}")
    return manifest


def photo_keys(manifest: dict, split: str) -> list[str]:
    """One key per photo of a split, "<source>|<id>", the same for a photo whether its manifest is of
    its own source or of a union of sources (training/union.py prefixes ids with the source index)."""
    entry = manifest["splits"][split]
    if "sources" not in manifest:
        return [f"{manifest['source']}|{i}" for i in entry["ids"]]
    names = [s["source"] for s in manifest["sources"]]
    return [f"{names[k]}|{i.split(':', 1)[1]}" for k, i in zip(entry["source_index"], entry["ids"])]


def manifest_hash(path: str | Path) -> str:
    """sha256 of the manifest file's bytes (recorded by the registry with each model)."""
    return file_sha256(path)


def _split(manifest: dict, split: str) -> dict:
    if split not in manifest["splits"]:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(manifest['splits'])}")
    return manifest["splits"][split]


def load_split(manifest_path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as in-memory arrays: uint8 images (N, S, S, 3) and int64 labels (N,), 1 = glasses."""
    manifest = read_manifest(manifest_path)
    entry = _split(manifest, split)
    images = np.load(manifest["cache"]["images"], mmap_mode="r")
    idx = np.asarray(entry["indices"], dtype=np.int64)
    x = np.ascontiguousarray(images[idx]) if len(idx) else np.zeros((0,) + images.shape[1:], np.uint8)
    y = np.asarray(entry["labels"], dtype=np.int64)
    return x, y


def class_counts(manifest_path: str | Path, split: str) -> dict[str, int]:
    """{"no_glasses": n, "glasses": n} for one split."""
    manifest = read_manifest(manifest_path)
    _split(manifest, split)
    return {c: int(manifest["counts"][split][c]) for c in CLASS_NAMES}


def make_dataset(
    manifest_path: str | Path,
    split: str,
    *,
    batch_size: int = BATCH_SIZE,
    shuffle: bool | None = None,
    seed: int = SEED,
    augment: Callable[[tf.Tensor, tf.Tensor], tuple] | None = None,
    cache: bool = True,
) -> tf.data.Dataset:
    """tf.data pipeline over one split: (float32 images in [0, 1], float32 labels (batch,)).

    Like the paper: cache, shuffle(SHUFFLE_BUFFER, seed) (train only by default), batch,
    prefetch(AUTOTUNE). `augment(image, label)` is mapped after cache/shuffle and before batching, on
    the train split only. Deterministic for a given seed (ordered maps, seeded shuffle).
    """
    x, y = load_split(manifest_path, split)
    shuffle = (split == "train") if shuffle is None else shuffle
    return dataset_from_arrays(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                               augment=augment if split == "train" else None, cache=cache)


def dataset_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = BATCH_SIZE,
    shuffle: bool = False,
    seed: int = SEED,
    augment: Callable[[tf.Tensor, tf.Tensor], tuple] | None = None,
    cache: bool = True,
) -> tf.data.Dataset:
    """The pipeline of `make_dataset` over in-memory uint8 images (N, S, S, 3) and labels (N,)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)))
    if cache:
        ds = ds.cache()  # uint8 in memory; rescaling after the cache keeps it 4x smaller
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)

    def rescale(img, lab):
        return tf.cast(img, tf.float32) / 255.0, lab

    if augment is not None:  # augmentations work on one float image
        ds = ds.map(rescale, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    else:  # batch the uint8 rows first: one vectorised rescale per batch instead of one per image
        ds = ds.batch(batch_size).map(rescale, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)
