"""What removing the confirmed label errors does: the same light recipe trained with and without an
exclusion file, both evaluated on the same test photos (the test split minus the excluded photos).

    .venv/bin/python benchmarks/review_retrain.py [--exclude FILE] [--cnn-epochs 3 [--cnn-size 64] [--seeds 1 2]]

Recipe (the cheapest that still retrains a classifier on the labels): the bundled model's
penultimate features (training/features.py) -> StandardScaler + LogisticRegression(C=REVIEW_C) fitted
on the train split, threshold maximising balanced accuracy on the validation split. The fit is
deterministic (lbfgs: a seed changes nothing), so the uncertainty printed is a paired bootstrap over
test persons. Prints per arm: train/test counts, test ROC-AUC, balanced accuracy, CPU and wall time.
Both arms use the split of the photos with all labels (prepare --exclude re-draws it); the second
drops the excluded photos from train and validation. --cnn-epochs N also fits the robust model's
architecture (fixed hyperparameters, no augmentation) per arm and seed, for the seed noise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from glasses.config import BUNDLED_MODEL_FILE, REPO_ROOT, REVIEW_C, WORK_DIR
from glasses.machine import banner

SOURCES = ["folders:../shared/data/celeba-glasses", "folders:../shared/data/celeba-glasses-200px"]
DEFAULT_EXCLUDE = REPO_ROOT / "glasses" / "data" / "excluded-celeba-review.txt"
BOOTSTRAP = 2000


def split_keys(manifest: dict, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(photo keys, labels, persons) of one split of a union manifest."""
    from training.data import photo_keys

    entry = manifest["splits"][split]
    return photo_keys(manifest, split), np.asarray(entry["labels"]), [str(g) for g in entry["groups"]]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.data import load_split, read_manifest
    from training.evaluate import binary_metrics, choose_threshold, roc_auc
    from training.features import feature_extractor, load_classifier
    from training.prepare import prepare_sources

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exclude", type=Path, default=DEFAULT_EXCLUDE)
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--cnn-epochs", type=int, default=0, help="also fit the robust CNN for N epochs per arm and seed")
    parser.add_argument("--cnn-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(banner())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    manifests = {}
    for arm, files in (("all labels", []), ("without excluded", [args.exclude])):
        path = prepare_sources(SOURCES, work_dir=args.work_dir, progress=False, exclude_files=files).manifest_path
        manifests[arm] = read_manifest(path) | {"_path": path}
    base = manifests["all labels"]
    base_path = base["_path"]
    extract = feature_extractor(load_classifier(BUNDLED_MODEL_FILE))
    features: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        x, _ = load_split(base_path, split)
        keys, _, _ = split_keys(base, split)
        features.update(zip(keys, extract(x)))
    print(f"prepare + features: {time.process_time() - cpu0:.1f} s CPU, {time.perf_counter() - wall0:.1f} s wall")

    # prepare --exclude re-draws the person split (the persons shift between splits), so the arms use
    # the split of the photos with all labels: the second arm drops the excluded photos from it
    kept = {split: set(split_keys(manifests["without excluded"], split)[0]) for split in ("train", "val", "test")}
    all_kept = set().union(*kept.values())
    shifted = len(set(split_keys(base, "test")[0]) & all_kept - kept["test"])
    dropped = {split: [k for k in split_keys(base, split)[0] if k not in all_kept] for split in ("train", "val", "test")}
    print(f"excluded photos by split of the full-label split: { {s: len(v) for s, v in dropped.items()} }; "
          f"prepare --exclude would move {shifted} of its test photos to other splits (not used here)")
    test_keys, test_y, test_persons = split_keys(base, "test")
    keep = [i for i, k in enumerate(test_keys) if k in all_kept]
    test_keys = [test_keys[i] for i in keep]
    test_y, test_persons = test_y[keep], [test_persons[i] for i in keep]
    x_test = np.stack([features[k] for k in test_keys])
    probs = {}
    for arm in manifests:
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        keys, y, _ = split_keys(base, "train")
        vkeys, vy, _ = split_keys(base, "val")
        if arm == "without excluded":
            sel = [i for i, k in enumerate(keys) if k in all_kept]
            keys, y = [keys[i] for i in sel], y[sel]
            vsel = [i for i, k in enumerate(vkeys) if k in all_kept]
            vkeys, vy = [vkeys[i] for i in vsel], vy[vsel]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=REVIEW_C, max_iter=2000))
        clf.fit(np.stack([features[k] for k in keys]), y)
        threshold = choose_threshold(vy, clf.predict_proba(np.stack([features[k] for k in vkeys]))[:, 1])
        p = clf.predict_proba(x_test)[:, 1]
        probs[arm] = (p, threshold)
        m = binary_metrics(test_y, p, threshold)
        print(f"{arm:<17} train {len(keys)} ({int(y.sum())} glasses), test {len(test_y)} ({int(test_y.sum())} glasses): "
              f"ROC-AUC {m['roc_auc']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f} at {threshold:.3f} "
              f"({time.process_time() - t_cpu:.1f} s CPU, {time.perf_counter() - t_wall:.1f} s wall)")
    print(f"test photos excluded from both arms: {len(dropped['test'])}")

    rng = np.random.default_rng(0)
    people = sorted(set(test_persons))
    rows = {p: [] for p in people}
    for i, person in enumerate(test_persons):
        rows[person].append(i)
    (pa, ta), (pb, tb) = probs["all labels"], probs["without excluded"]
    d_auc, d_ba = [], []
    for _ in range(BOOTSTRAP):  # paired bootstrap over test persons
        idx = np.concatenate([rows[people[j]] for j in rng.integers(0, len(people), len(people))])
        y = test_y[idx]
        if y.min() == y.max():
            continue
        d_auc.append(roc_auc(y, pb[idx]) - roc_auc(y, pa[idx]))
        d_ba.append(binary_metrics(y, pb[idx], tb)["balanced_accuracy"] - binary_metrics(y, pa[idx], ta)["balanced_accuracy"])
    for name, d, point in (("ROC-AUC", d_auc, roc_auc(test_y, pb) - roc_auc(test_y, pa)),
                           ("balanced accuracy", d_ba, binary_metrics(test_y, pb, tb)["balanced_accuracy"]
                            - binary_metrics(test_y, pa, ta)["balanced_accuracy"])):
        lo, hi = np.percentile(d, [2.5, 97.5])
        print(f"without - with, {name}: {point:+.4f} (95 % paired bootstrap over test persons {lo:+.4f} .. {hi:+.4f})")
    if args.cnn_epochs:
        cnn_arms(SOURCES, args.exclude, size=args.cnn_size, epochs=args.cnn_epochs, seeds=args.seeds,
                 work_dir=args.work_dir)
    print(f"total: {time.process_time() - cpu0:.1f} s CPU, {time.perf_counter() - wall0:.1f} s wall")


def cnn_arms(sources: list[str], exclude: Path, *, size: int, epochs: int, seeds: list[int], work_dir: Path) -> None:
    """The robust model's architecture, fixed hyperparameters, `epochs` at `size` px, no augmentation,
    balanced class weights: with and without the excluded photos, each seed, on the same test photos."""
    import keras
    import keras_tuner as kt

    from training import models
    from training.data import dataset_from_arrays, load_split, read_manifest
    from training.evaluate import binary_metrics, choose_threshold
    from training.prepare import prepare_sources

    base_path = prepare_sources(sources, size=size, work_dir=work_dir, progress=False).manifest_path
    kept_path = prepare_sources(sources, size=size, work_dir=work_dir, progress=False, exclude_files=[exclude]).manifest_path
    base, kept_m = read_manifest(base_path), read_manifest(kept_path)
    kept = set().union(*(split_keys(kept_m, s)[0] for s in ("train", "val", "test")))
    data = {}
    for split in ("train", "val", "test"):
        x, y = load_split(base_path, split)
        mask = np.asarray([k in kept for k in split_keys(base, split)[0]])
        data[split] = (x, y, mask)
    x_test, y_test = data["test"][0][data["test"][2]], data["test"][1][data["test"][2]]
    for seed in seeds:
        for arm in ("all labels", "without excluded"):
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            (xt, yt, mt), (xv, yv, mv) = data["train"], data["val"]
            if arm == "without excluded":
                xt, yt, xv, yv = xt[mt], yt[mt], xv[mv], yv[mv]
            keras.utils.set_random_seed(seed)
            steps = epochs * -(-len(yt) // 64)
            model = models.hypermodel_for("robust", size, train_steps=steps)(kt.HyperParameters())
            n = len(yt)
            weights = {0: n / (2 * int((yt == 0).sum())), 1: n / (2 * int((yt == 1).sum()))}
            model.fit(dataset_from_arrays(xt, yt, shuffle=True, seed=seed), epochs=epochs, class_weight=weights, verbose=0)
            pv = model.predict(dataset_from_arrays(xv, yv), verbose=0).ravel()
            threshold = choose_threshold(yv, pv)
            p = model.predict(dataset_from_arrays(x_test, y_test), verbose=0).ravel()
            m = binary_metrics(y_test, p, threshold)
            print(f"CNN seed {seed} {arm:<17} train {len(yt)}, test {len(y_test)}: ROC-AUC {m['roc_auc']:.4f}, "
                  f"balanced accuracy {m['balanced_accuracy']:.4f} at {threshold:.3f} "
                  f"({time.process_time() - t_cpu:.0f} s CPU, {time.perf_counter() - t_wall:.0f} s wall)", flush=True)


if __name__ == "__main__":
    main()
