"""Face framing for a registered version: `glasses-train frame TAG --manifest M`.

    version TAG (weights, model.tflite) + the split manifest it was trained on
      --validation and test photos, each cropped to the training framing around its face
        (glasses.preprocessing framing "face"; a photo without a detected face is scored unframed
        and counted)--> raw P(glasses) on the version's runtime
      --Platt calibration refitted on framed validation; the threshold chosen on framed validation
        photos as users send them (untouched and every robustness condition, pooled); test metrics,
        ECE, a reliability diagram, the drift baseline and the robustness conditions, all framed-->
      a copy of TAG with metadata framing="face" (same weights), promoted if TAG was

The weights do not change: the framing step puts every photo's face where the training photos had
theirs (the medians in glasses/config.py were measured on them), so a small, off-centre or tightly
cropped face reaches the model at the scale it learnt. Figures: models/README.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from glasses import calibration as cal
from glasses.config import FACE_DETECTOR_MEMBER, FACE_DETECTOR_PACKAGE, FACE_DETECTOR_SHA256, MODEL_FILE, SEED
from glasses.files import UserError
from glasses.monitoring import reference_histogram
from glasses.preprocessing import framed_or_whole

FRAMING = "face"


def framed_split(manifest: dict, split: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 pixels (N, S, S, 3), labels (N,), no_face bool (N,)) of one split, framed around faces."""
    from concurrent.futures import ThreadPoolExecutor

    from training.robustness import split_photo_bytes

    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(lambda data: framed_or_whole(data, size, FRAMING), split_photo_bytes(manifest, split)))
    labels = np.asarray(manifest["splits"][split]["labels"], np.int64)
    return np.stack([r[0] for r in rows]), labels, np.asarray([r[1] for r in rows], bool)


def _raw_classifier(source: Any, size: int):
    """The version's uncalibrated classifier on its best runtime (LiteRT when it has model.tflite)."""
    from glasses.runtimes import load_classifier

    clf = load_classifier(source, "auto", size, threads=os.cpu_count() or 1)  # offline: every core
    return getattr(clf, "raw", clf)


def framed_evaluation(source: Any, manifest_path: Path, out_dir: Path) -> dict[str, Any]:
    """Everything `frame_version` records, measured on the framed validation and test splits."""
    from training.calibrate import calibration_report, plot_reliability
    from training.data import read_manifest
    from training.evaluate import binary_metrics, choose_threshold
    from training.robustness import CONDITIONS, robustness, score_conditions, split_photo_bytes

    meta = source.info.metadata
    size = int(meta.get("image_size", 128))
    manifest = read_manifest(manifest_path)
    raw = _raw_classifier(source, size)
    # validation photos as users send them: untouched (the calibration's) and every robustness condition
    conditions_raw, conditions_none = score_conditions(raw, split_photo_bytes(manifest, "val"), size=size,
                                                       seed=SEED, framing=FRAMING)
    untouched = list(CONDITIONS).index("untouched")
    val_raw, val_none = conditions_raw[untouched], conditions_none[untouched]
    val_y = np.asarray(manifest["splits"]["val"]["labels"], np.int64)
    test_x, test_y, test_none = framed_split(manifest, "test", size)
    test_raw = raw(test_x).astype(np.float64)
    method = (meta.get("calibration") or {}).get("method", "platt")
    fitted, ece = calibration_report(val_y, val_raw, test_y, test_raw, method)
    val_p, test_p = cal.apply(val_raw, fitted), cal.apply(test_raw, fitted)
    # The threshold serves photos as users send them, so it is chosen on all of them, pooled (why: models/README.md).
    threshold = choose_threshold(np.tile(val_y, len(conditions_raw)), cal.apply(conditions_raw.ravel(), fitted))
    plot_reliability(test_y, test_raw, test_p, out_dir / "reliability.png", title=f"{source.tag}, framing face")

    def predict(pixels: np.ndarray) -> np.ndarray:
        return cal.apply(raw(pixels).astype(np.float64), fitted)

    report = robustness(predict, manifest_path, threshold, out_dir=out_dir, framing=FRAMING)
    return {
        "calibration": fitted, "ece": ece, "threshold": threshold,
        "threshold_method": (f"maximises balanced accuracy on the framed validation split as users send it: "
                             f"untouched and {len(conditions_raw) - 1} robustness conditions pooled "
                             f"({len(conditions_raw)} x {len(val_y)} photos)"),
        "metrics": binary_metrics(test_y, test_p, threshold),
        "validation_metrics": binary_metrics(val_y, val_p, threshold),
        "reference_distribution": {"split": "test", "photos": len(test_y), "counts": reference_histogram(test_p)},
        "no_face": {"val": int(val_none.sum()), "test": int(test_none.sum()), "val_photos": len(val_y),
                    "test_photos": len(test_y)},
        "robustness": {name: {k: row["all"][k] for k in ("roc_auc", "recall", "photos", "glasses_photos", "no_face")}
                       for name, row in report["conditions"].items()},
    }


def frame_version(tag: str, manifest: str | Path, out_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """Register a copy of `tag` that serves face-framed photos (see the module docstring); returns
    (new tag, what was measured). Reports (robustness.md/json, reliability.png, framing.json) go to out_dir."""
    from glasses import registry
    from glasses.files import load_keras_model
    from training.convert import _kept_files

    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"manifest {manifest} does not exist (glasses-train prepare writes it)")
    source = registry.get_model(tag)
    meta = dict(source.info.metadata or {})
    if meta.get("framing", "none") != "none":
        raise UserError(f"{source.tag} already has framing {meta['framing']!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    measured = framed_evaluation(source, manifest, out_dir)
    measured["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "framing.json").write_text(json.dumps(measured, indent=2))
    detector = {"package": "=".join(FACE_DETECTOR_PACKAGE), "file": FACE_DETECTOR_MEMBER, "sha256": FACE_DETECTOR_SHA256}
    new_meta = meta | {k: measured[k] for k in ("calibration", "ece", "threshold", "threshold_method", "metrics",
                                                "validation_metrics", "reference_distribution", "robustness")}
    new_meta |= {"framing": FRAMING, "face_detector": detector, "no_face": measured["no_face"],
                 "framed_from": str(source.tag), "framed_with_manifest": str(manifest.resolve())}
    litert = source.path_of("model.tflite")
    new_tag = registry.save_version(load_keras_model(source.path_of(MODEL_FILE)), metadata=new_meta,
                                    labels=dict(source.info.labels or {}),
                                    litert=Path(litert).read_bytes() if Path(litert).exists() else None,
                                    files=_kept_files(source))
    if registry.promoted_tag() == str(source.tag):
        registry.promote(new_tag, note=f"{source.tag} + face framing")
    return new_tag, measured


def summary(m: dict[str, Any]) -> str:
    """One line of what `frame_version` measured."""
    rows = ", ".join(f"{k} {v['roc_auc']:.3f}/{v['recall']:.3f}" for k, v in m["robustness"].items())
    return (f"test ROC-AUC {m['metrics']['roc_auc']:.4f}, threshold {m['threshold']:.3f}, ECE {m['ece']['test']:.3f}, "
            f"no face {m['no_face']['test']}/{m['no_face']['test_photos']}; AUC/recall by condition: {rows}")


def _cli(args) -> int:
    new_tag, measured = frame_version(args.tag, args.manifest, args.out_dir)
    print(f"registered {new_tag} = {args.tag} + face framing: {summary(measured)}")
    return 0


def add_cli(subparsers) -> None:
    """`glasses-train frame TAG --manifest M [--out-dir D]`."""
    p = subparsers.add_parser("frame", help="register a copy of a version that crops each photo to the training "
                                            "framing around the detected face (recalibrated, re-evaluated)")
    p.add_argument("tag", help="registered version (glasses_classifier:<version> or <version>)")
    p.add_argument("--manifest", type=Path, required=True,
                   help="the split manifest the version was trained on (glasses-train prepare prints it)")
    p.add_argument("--out-dir", type=Path, default=Path("artifacts/framing"),
                   help="where robustness.md/json, reliability.png and framing.json go")
    p.set_defaults(func=_cli)
