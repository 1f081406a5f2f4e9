"""Compare: registered model versions on the same test photos, side by side, with a paired test.

    glasses-train compare --source folders:../shared/data/celeba-glasses TAG [TAG ...]

Stored metrics are only comparable when two versions were tested on the same split manifest (the
quality gate checks that); this command re-evaluates versions on one source instead. Each version
is scored at its own image size and its stored decision threshold on the test split `prepare` makes
of SRC (cached). The split is a function of the source and seed, not of the image size, so every
version sees the same photos (checked), and none of them may be among a version's own training or
validation photos (checked against the split manifest recorded with it, when that file is here). The first version is the baseline; with one TAG, the
promoted version is the baseline. For each other version, the paired view: photos only the baseline
gets right, photos only the other one gets right, and McNemar's exact p-value (a small p says the
two really differ in error rate on these photos; a large one says the difference may be chance).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from glasses import calibration
from glasses.config import MODEL_FILE, WORK_DIR
from training.cli import UserError

SHOWN_METRICS = ("roc_auc", "balanced_accuracy", "accuracy", "precision", "recall", "f1", "loss")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (binomial test of only_a vs only_b)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def score_version(tag: str, source: str, *, split: str = "test", work_dir: str | Path = WORK_DIR) -> dict:
    """One stored version on `split` of `source` at its own image size and threshold.

    Returns {"tag", "image_size", "threshold", "ids", "correct", "metrics"}; `ids` and `correct`
    (per photo: verdict right or not) are in split order.
    """
    from glasses import cards, registry
    from glasses.files import load_keras_model
    from training.data import photo_keys, read_manifest
    from training.evaluate import binary_metrics, predict_split
    from training.prepare import prepare

    stored = registry.get_model(tag)
    card = cards.model_card(stored)  # what the service reads: same defaults, same refusals
    cards.check_servable(card)
    meta = stored.info.metadata
    size, threshold = card["preprocessing"]["image_size"], card["threshold"]
    manifest_path = prepare(source, size=size, work_dir=work_dir, progress=False).manifest_path
    manifest = read_manifest(manifest_path)
    ids = list(manifest["splits"][split]["ids"])
    seen = photos_seen_in_training(meta, photo_keys(manifest, split))
    if seen:
        raise UserError(f"{stored.tag} was trained or validated on {seen} of these {len(ids)} {split} photos "
                        f"(its split manifest {meta['split_manifest_path']}): its scores here would be inflated")
    model = load_keras_model(stored.path_of(MODEL_FILE))
    labels, raw = predict_split(model, manifest_path, split)
    probs = calibration.apply(raw, card["calibration"])  # as the service answers
    if len(labels) == 0:
        raise UserError(f"the {split} split of {source} is empty")
    verdicts = (probs >= threshold).astype(np.int64)
    return {"tag": str(stored.tag), "image_size": size, "threshold": threshold, "ids": ids,
            "unseen_checked": seen is not None, "correct": verdicts == labels,
            "metrics": binary_metrics(labels, probs, threshold)}


def photos_seen_in_training(meta: dict, keys: list[str]) -> int | None:
    """How many photos (training.data.photo_keys) are in the train or val split the version was made
    with, of its own source or of a union; None if unknown (its split manifest, recorded at
    registration, is not on this machine)."""
    from training.data import photo_keys, read_manifest

    path = meta.get("split_manifest_path")
    if not path or not Path(path).is_file():
        return None
    trained = read_manifest(path)
    return len(set(keys) & (set(photo_keys(trained, "train")) | set(photo_keys(trained, "val"))))


def compare(tags: list[str], source: str, *, split: str = "test", work_dir: str | Path = WORK_DIR) -> dict:
    """Score every version on the same photos; the first is the baseline (promoted when one tag)."""
    from glasses import registry
    from training.sources import check_source

    check_source(source)  # every argument is checked before TensorFlow loads
    tags = [str(registry.get_model(tag).tag) for tag in tags]
    if len(tags) == 1:
        promoted = registry.promoted_tag()
        if promoted is None:
            raise UserError("one TAG compares against the promoted version, and none is promoted: give two TAGs")
        tags.insert(0, promoted)
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise UserError(f"{', '.join(repeated)} is compared with itself: give different versions")
    scored = [score_version(tag, source, split=split, work_dir=work_dir) for tag in tags]
    base = scored[0]
    for other in scored[1:]:
        if other["ids"] != base["ids"]:
            raise UserError(f"the {split} split of {source} differs between {base['image_size']} px and "
                            f"{other['image_size']} px; cannot pair the photos")
    rows = []
    for s in scored:
        only_base = int((base["correct"] & ~s["correct"]).sum())
        only_this = int((s["correct"] & ~base["correct"]).sum())
        rows.append({"tag": s["tag"], "image_size": s["image_size"], "threshold": s["threshold"],
                     "unseen_checked": s["unseen_checked"], "metrics": s["metrics"], "errors": int((~s["correct"]).sum()),
                     "only_baseline_right": only_base, "only_this_right": only_this,
                     "mcnemar_p": mcnemar_exact(only_base, only_this)})
    positives = base["metrics"]["positives"]
    return {"source": source, "split": split, "photos": len(base["ids"]), "glasses": positives,
            "baseline": base["tag"], "versions": rows}


def promotion_decision(tag: str, gate, source: str | None, work_dir: str | Path = WORK_DIR) -> tuple[bool, str]:
    """(promote?, why in one line) for a freshly registered version that passed the quality gate.

    The gate compares stored metrics only when production was tested on the same split manifest.
    Otherwise both versions are re-scored here on the new version's test photos, and it is promoted
    only if its gate metric is not below production's on those same photos; when that cannot be
    done, it is not promoted.
    """
    if gate.promoted_tag is None:
        return True, "no production version yet"
    if gate.promoted_value is not None:
        return True, gate.reason  # same test manifest: the gate already compared them
    if not source:
        return False, f"production {gate.promoted_tag} was tested on other photos and this run records no source to re-score both on"
    try:
        report = compare([gate.promoted_tag, tag], source, work_dir=work_dir)
    except (UserError, ValueError, OSError) as exc:  # registered either way: only promotion is at stake
        return False, f"production {gate.promoted_tag} was tested on other photos and cannot be re-scored on this run's: {exc}"
    base, new = (v["metrics"].get(gate.metric) for v in report["versions"])
    same = f"re-scored on the same {report['photos']} test photos of {source}"
    if new is None or base is None or new < base:
        return False, f"{same}: {gate.metric} {_num(new)} is below production {gate.promoted_tag}'s {_num(base)}"
    return True, f"{same}: {gate.metric} {new:.4f} >= production {gate.promoted_tag}'s {base:.4f}"


def _num(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.4f}"


def format_comparison(report: dict) -> str:
    """A plain-text table: one column per version, the baseline first."""
    versions = report["versions"]
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table = [["", *[v["tag"] + (" (baseline)" if i == 0 else "") for i, v in enumerate(versions)]],
             ["image size", *[str(v["image_size"]) for v in versions]],
             ["threshold", *[f(v["threshold"]) for v in versions]]]
    table += [[m, *[f(v["metrics"][m]) for v in versions]] for m in SHOWN_METRICS]
    table += [["errors", *[str(v["errors"]) for v in versions]],
              ["right only: baseline / this", "-", *[f"{v['only_baseline_right']} / {v['only_this_right']}"
                                                     for v in versions[1:]]],
              ["McNemar exact p", "-", *[f"{v['mcnemar_p']:.3g}" for v in versions[1:]]]]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"{report['split']} split of {report['source']}: {report['photos']} photos "
             f"({report['glasses']} with glasses), the same photos for every version", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    unchecked = [v["tag"] for v in versions if not v["unseen_checked"]]
    if unchecked:
        lines += ["", f"not checked that these photos were unseen in training (split manifest not on this "
                      f"machine): {', '.join(unchecked)}"]
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    """`glasses-train compare --source SRC TAG [TAG ...] [--json]`."""
    p = subparsers.add_parser("compare", help="re-evaluate registered versions on the same test photos")
    p.add_argument("tags", nargs="+", metavar="TAG", help="versions; one TAG is compared with the promoted one")
    p.add_argument("--source", required=True, help="kaggle | kaggle-dir:PATH | folders:PATH")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    report = compare(args.tags, args.source, split=args.split, work_dir=args.work_dir)
    print(json.dumps(report, indent=2) if args.json else format_comparison(report))
    return 0
