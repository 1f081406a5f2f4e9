"""Split: the seeded, stratified, grouped train/val/test split of a cache and its manifest file.

    index.json + ok.npy of a cache -> split_assignments (seeded 0.8/0.1/0.1, stratified by label,
    grouped: no person in two splits, when groups are known) -> manifest-seed<SEED>.json in the
    cache directory (what training.data reads)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from glasses.config import CLASS_NAMES, SEED, SPLIT_FRACTIONS, SPLITS
from glasses.files import write_json_atomic
from training.cache import CACHE_FORMAT
from training.cli import UserError

SPLIT_VERSION = "greedy-running-target-v1"  # bump when split_assignments changes (manifests are rewritten)


def split_assignments(labels: list[int] | np.ndarray, groups: list[str] | None = None, *, seed: int = SEED,
                      fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per item: seeded, stratified by label, grouped if groups given.

    Ungrouped: each class is permuted with the seed and cut at the fractions (exact per class).
    Grouped: groups (persons) are assigned whole, heaviest first (seeded order among equals), each to the
    split that keeps the per-class counts closest to the fractions of everything assigned so far.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    frac = np.asarray(fractions, dtype=float)
    out = np.zeros(len(labels), dtype=np.int64)
    if groups is None:
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_val, n_test = round(len(idx) * frac[1]), round(len(idx) * frac[2])
            out[idx[len(idx) - n_val - n_test:len(idx) - n_test]] = 1
            out[idx[len(idx) - n_test:]] = 2
        return out
    names, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_classes = max(len(CLASS_NAMES), int(labels.max()) + 1)
    per_group = np.zeros((len(names), n_classes))
    np.add.at(per_group, (inverse, labels), 1)
    totals = np.maximum(per_group.sum(axis=0), 1)
    shuffled = rng.permutation(len(names))
    # heaviest groups first, weighing each class by 1/its total (minority-class members count more);
    # seeded order among equals
    weight = (per_group / totals).sum(axis=1)
    order = sorted(shuffled, key=lambda g: -weight[g])
    assigned = np.zeros((3, n_classes))
    seen = np.zeros(n_classes)
    where = np.zeros(len(names), dtype=np.int64)
    for g in order:
        seen += per_group[g]
        target = frac[:, None] * seen[None, :]  # running target: fractions of what was assigned so far
        costs = []
        for s in range(3):
            trial = assigned.copy()
            trial[s] += per_group[g]
            costs.append(float((((trial - target) / totals) ** 2).sum()))
        best = int(np.argmin(costs))
        assigned[best] += per_group[g]
        where[g] = best
    return where[inverse]


def write_manifest(cache_dir: Path, seed: int) -> Path:
    """Compute the seeded split over the readable rows of a cache and write manifest-seed<seed>.json."""
    index = json.loads((cache_dir / "index.json").read_text())
    ok = np.load(cache_dir / "ok.npy")
    rows = np.flatnonzero(ok)
    labels = np.asarray(index["labels"], dtype=np.int64)
    groups = index["groups"]
    if len(rows) == 0:
        raise UserError(f"no readable image in {index['source']} ({len(index['skipped'])} files skipped)")
    assign = split_assignments(labels[rows], [groups[r] for r in rows] if groups else None, seed=seed)
    splits, counts = {}, {}
    for s, name in enumerate(SPLITS):
        sel = rows[assign == s]
        splits[name] = {
            "indices": sel.tolist(),
            "ids": [index["ids"][r] for r in sel],
            "files": [index["files"][r] for r in sel],
            "labels": labels[sel].tolist(),
            "groups": [groups[r] for r in sel] if groups else None,
        }
        counts[name] = {c: int((labels[sel] == i).sum()) for i, c in enumerate(CLASS_NAMES)}
    empty = [name for name in SPLITS if not splits[name]["indices"]]
    if empty:
        raise UserError(f"{index['source']} is too small for a {'/'.join(map(str, SPLIT_FRACTIONS))} split: "
                        f"{' and '.join(empty)} would be empty ({len(rows)} readable images)")
    notes = list(index["notes"]) + [
        f"the {name} split has no {c} image: its metrics (AUC, balanced accuracy) will be undefined or one-sided"
        for name in ("val", "test") for c in CLASS_NAMES if counts[name][c] == 0]
    manifest = {
        "format": CACHE_FORMAT,
        "fingerprint": index["fingerprint"],
        "source": index["source"],
        "kind": index["kind"],
        "root": index["root"],
        "size": index["size"],
        "preprocessing_version": index["preprocessing_version"],
        "framing": index.get("framing", "none"), "unframed": index.get("unframed", []),  # glasses/faces.py
        "seed": seed,
        "split_version": SPLIT_VERSION,
        "split_fractions": list(SPLIT_FRACTIONS),
        "class_names": list(CLASS_NAMES),
        "grouped_by": index["grouped_by"],
        "cache": {
            "dir": str(cache_dir),
            "images": str(cache_dir / "images.npy"),
            "labels": str(cache_dir / "labels.npy"),
            "rows": index["n"],
        },
        "counts": counts,
        "excluded": index["excluded"],
        "exclusions": index.get("exclusions", []),
        "skipped": index["skipped"],
        "missing_images": index["missing_images"],
        "unlabelled_images": index["unlabelled_images"],
        "notes": notes,
        "splits": splits,
    }
    path = cache_dir / f"manifest-seed{seed}.json"
    write_json_atomic(path, manifest, indent=1)
    return path
