"""Evaluate: a trained model on the test split of its manifest -> JSON report, curves, HTML report.

    model + manifest
      -> P(glasses) on the validation and test splits (the same tf.data pipeline as training)
      -> decision threshold: 0.5, or the one maximising balanced accuracy on the *validation* split
         (never chosen on test)
      -> test metrics: loss (binary cross-entropy), accuracy, precision / recall / F1 for "glasses",
         ROC-AUC, balanced accuracy, confusion matrix (rows = true, columns = predicted)
      -> evaluation.json and learning_curves.png (loss and accuracy, train vs validation) side by side,
         test_predictions.json (file, label, P(glasses) per test photo) and report.html (training/report.py)

Metrics are computed with numpy from the predicted probabilities (no extra dependency), so the same
functions serve the registry, the experiments table and anyone checking a model by hand.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from glasses.calibration import apply as apply_calibration
from glasses.config import BATCH_SIZE, CLASS_NAMES, DEFAULT_THRESHOLD, POSITIVE_CLASS
from glasses.files import check_keras_file, file_sha256, load_keras_model
from glasses.monitoring import reference_histogram
from glasses.preprocessing import rescale
from training.calibrate import DIAGRAM_FILE, calibration_report, plot_reliability
from training.cli import UserError
from training.robustness import robustness
from training.rundir import RunDir

EPSILON = 1e-7  # Keras' clipping for binary cross-entropy


# --- metrics ------------------------------------------------------------------------------------


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None if only one class."""
    y_true = np.asarray(y_true).astype(bool)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(y_prob, kind="mergesort")
    ranks = np.empty(len(y_prob), dtype=np.float64)
    sorted_prob = y_prob[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_prob, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_crossentropy(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean binary cross-entropy with Keras' clipping."""
    p = np.clip(np.asarray(y_prob, dtype=np.float64), EPSILON, 1 - EPSILON)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Every reported metric for label 1 = glasses at `threshold` (predict glasses when p >= threshold)."""
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    pred = (y_prob >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y_true == 1)).sum())
    tn = int(((pred == 0) & (y_true == 0)).sum())
    fp = int(((pred == 1) & (y_true == 0)).sum())
    fn = int(((pred == 0) & (y_true == 1)).sum())
    n = len(y_true)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "positives": int(y_true.sum()),
        "loss": binary_crossentropy(y_true, y_prob) if n else None,
        "accuracy": (tp + tn) / n if n else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "specificity": specificity,
        "balanced_accuracy": (recall + specificity) / 2,
        "roc_auc": roc_auc(y_true, y_prob),
        "threshold": float(threshold),
        "confusion_matrix": {"labels": list(CLASS_NAMES), "matrix": [[tn, fp], [fn, tp]],
                             "tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def choose_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """The threshold maximising balanced accuracy (ties: the one closest to 0.5).

    Candidates are midpoints between consecutive distinct scores (plus 0.5), so the threshold
    generalises between the validation examples instead of sitting on one of them.
    """
    y_true = np.asarray(y_true).astype(bool).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y_true.all() or not y_true.any():
        return DEFAULT_THRESHOLD
    scores = np.unique(y_prob)
    candidates = np.unique(np.concatenate([(scores[:-1] + scores[1:]) / 2, [DEFAULT_THRESHOLD]]))
    pred = y_prob[None, :] >= candidates[:, None]
    tpr = (pred & y_true).sum(axis=1) / y_true.sum()
    tnr = (~pred & ~y_true).sum(axis=1) / (~y_true).sum()
    ba = (tpr + tnr) / 2
    best = np.flatnonzero(np.isclose(ba, ba.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]])


# --- model + data -------------------------------------------------------------------------------


def predict_split(model, manifest_path: str | Path, split: str, batch_size: int = BATCH_SIZE):
    """(labels int64 (N,), P(glasses) float64 (N,)) for one split of a manifest."""
    from training.data import load_split, make_dataset

    _, labels = load_split(manifest_path, split)
    if len(labels) == 0:
        return labels, np.zeros((0,), np.float64)
    ds = make_dataset(manifest_path, split, batch_size=batch_size, shuffle=False, cache=False)
    probs = np.asarray(model.predict(ds, verbose=0), dtype=np.float64).reshape(-1)
    return labels, probs


def plot_learning_curves(history: dict[str, list[float]], path: str | Path, title: str = "") -> Path | None:
    """Loss and accuracy, train vs validation, per epoch (the paper's figures); None without history."""
    if not history or not history.get("loss"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(
    model,
    manifest_path: str | Path,
    *,
    threshold: str | float = DEFAULT_THRESHOLD,
    history: dict[str, list[float]] | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    title: str = "",
    calibration: str | None = "platt",
    robust: bool = True,
) -> dict:
    """Evaluate `model` (a keras.Model or a .keras path) on the test split; write the report if out_dir.

    threshold: a number (or its text) or "val_balanced_accuracy" (on the calibrated validation split);
    calibration: "platt" | "temperature" (fitted on validation) | None; robust: also score the
    conditions of training/robustness.py (robustness.json/.md). Returns the report dict; with out_dir
    also writes evaluation.json, learning_curves.png and reliability.png there."""
    from training.data import read_manifest

    model_path = check_keras_file(model) if isinstance(model, (str, Path)) else None
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)  # wrong files and values fail here, before TensorFlow loads
    threshold = parse_threshold(threshold)
    model_sha256 = file_sha256(model_path) if model_path else None  # `register` checks the report is its own
    model = load_keras_model(model_path) if model_path else model
    started = time.monotonic()
    val_true, val_raw = predict_split(model, manifest_path, "val", batch_size)
    test_true, test_raw = predict_split(model, manifest_path, "test", batch_size)
    if len(test_true) == 0:
        raise UserError(f"the test split of {manifest_path} is empty")
    fitted, ece = calibration_report(val_true, val_raw, test_true, test_raw, calibration)
    val_prob, test_prob = apply_calibration(val_raw, fitted), apply_calibration(test_raw, fitted)
    value, method = resolve_threshold(threshold, val_true, val_prob)
    report = {
        "split": "test",
        "positive_class": POSITIVE_CLASS,
        "class_names": list(CLASS_NAMES),
        "threshold": {"value": value, "method": method},
        "metrics": binary_metrics(test_true, test_prob, value),
        "reference_distribution": {"split": "test", "photos": len(test_true),
                                   "counts": reference_histogram(test_prob)},  # the service's drift baseline
        "validation_metrics": binary_metrics(val_true, val_prob, value) if len(val_true) else None,
        "calibration": fitted,
        "ece": ece,
        **data_facts(manifest_path, manifest),
        "params": int(model.count_params()),
        "model_sha256": model_sha256,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        report["reliability_diagram"] = str(plot_reliability(test_true, test_raw, test_prob,
                                                             Path(out_dir) / DIAGRAM_FILE))
    if robust:
        report["robustness"] = robustness(served_predictor(model, fitted, batch_size), manifest_path, value,
                                          out_dir=out_dir, framing=manifest.get("framing", "none"))["conditions"]
    report["seconds"] = round(time.monotonic() - started, 3)
    if out_dir is not None:
        write_outputs(RunDir(out_dir), report, manifest, history or {}, title, test_true, test_prob)
    return report


def data_facts(manifest_path: Path, manifest: dict) -> dict:
    """Which data a report is about: the split manifest (path, hash), its fingerprint and image size."""
    from training.data import manifest_hash

    return {"manifest_path": str(manifest_path.resolve()), "manifest_hash": manifest_hash(manifest_path),
            "data_fingerprint": manifest["fingerprint"], "image_size": int(manifest["size"]),
            "framing": manifest.get("framing", "none")}


def write_outputs(out: RunDir, report: dict, manifest: dict, history: dict, title: str,
                  test_true: np.ndarray, test_prob: np.ndarray) -> None:
    """evaluation.json, learning_curves.png, test_predictions.json and report.html into the directory."""
    from training.data import load_split
    from training.report import write_run_report

    out.path.mkdir(parents=True, exist_ok=True)
    curves = plot_learning_curves(history, out.curves, title)
    report["learning_curves"] = str(curves) if curves else None
    report["report_path"] = str(out.report)
    images, _ = load_split(report["manifest_path"], "test")
    html = write_run_report(out.path, report, title=f"Evaluation report: {title or out.name}", images=images,
                            files=manifest["splits"]["test"]["files"], y=test_true, p=test_prob, curves=curves)
    report["html_report"] = str(html)
    out.write_json(out.report, report)


def parse_threshold(threshold: str | float) -> str | float:
    """"val_balanced_accuracy" or a number; anything else is a UserError (checked before TensorFlow loads)."""
    if str(threshold) == "val_balanced_accuracy":
        return "val_balanced_accuracy"
    try:
        return float(threshold)
    except ValueError:
        raise UserError(f"threshold must be a number or val_balanced_accuracy, got {threshold!r}") from None


def resolve_threshold(threshold: str | float, val_true: np.ndarray, val_prob: np.ndarray) -> tuple[float, str]:
    """(value, how it was chosen): a fixed number, or the best balanced accuracy on validation."""
    if threshold == "val_balanced_accuracy":
        return choose_threshold(val_true, val_prob), f"maximises balanced accuracy on the validation split (n={len(val_true)})"
    return float(threshold), "fixed" if threshold != DEFAULT_THRESHOLD else "fixed at 0.5 (default)"


def served_predictor(model, calibration: dict | None, batch_size: int = BATCH_SIZE):
    """uint8 pixels (N, S, S, 3) -> calibrated P(glasses) (N,), as the service computes it (x / 255,
    the model, glasses.calibration.apply)."""
    def predict(pixels: np.ndarray) -> np.ndarray:
        raw = model.predict(rescale(pixels), batch_size=batch_size, verbose=0).reshape(-1)
        return apply_calibration(raw.astype(np.float64), calibration)

    return predict


def evaluate_run(run_dir: str | Path, *, threshold: str | float | None = None, robust: bool = True) -> dict:
    """Evaluate the model of a `glasses-train tune` run directory with the profile's threshold rule."""
    run = RunDir(run_dir)
    summary = run.read_tune_summary()
    profile = run.read_profile(summary)
    return evaluate(
        run.model,
        summary["manifest_path"],
        threshold=profile.threshold if threshold is None else threshold,
        history=run.read_history(),
        out_dir=run.path,
        batch_size=profile.batch_size,
        title=f"{profile.name} profile, objective {profile.objective}",
        calibration=profile.calibration,
        robust=robust,
    )


def format_metrics(metrics: dict) -> str:
    """One line of the headline metrics."""
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    cm = metrics["confusion_matrix"]
    return (f"loss {f(metrics['loss'])}  acc {f(metrics['accuracy'])}  bal.acc {f(metrics['balanced_accuracy'])}  "
            f"AUC {f(metrics['roc_auc'])}  P {f(metrics['precision'])}  R {f(metrics['recall'])}  "
            f"F1 {f(metrics['f1'])}  [tn {cm['tn']} fp {cm['fp']} fn {cm['fn']} tp {cm['tp']}] "
            f"@ {metrics['threshold']:.3f}")


# --- CLI ----------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """`glasses-train evaluate --run-dir D` or `--model M --manifest F [--out DIR]`."""
    p = subparsers.add_parser("evaluate", help="test-split metrics, JSON report and learning curves")
    p.add_argument("--run-dir", type=Path, help="run directory written by `glasses-train tune`")
    p.add_argument("--model", type=Path, help="a .keras model (instead of --run-dir)")
    p.add_argument("--manifest", type=Path, help="split manifest (with --model)")
    p.add_argument("--out", type=Path, help="report directory (with --model; default: beside the model)")
    p.add_argument("--threshold", default=None,
                   help="a number, 0.5 or val_balanced_accuracy (default: the run's profile, else 0.5)")
    p.add_argument("--no-robustness", action="store_true", help="skip the framings and conditions report")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.run_dir:
        report = evaluate_run(args.run_dir, threshold=args.threshold, robust=not args.no_robustness)
    elif args.model and args.manifest:
        report = evaluate(args.model, args.manifest, threshold=args.threshold or DEFAULT_THRESHOLD,
                          out_dir=args.out or args.model.parent, robust=not args.no_robustness)
    else:
        raise UserError("give --run-dir, or --model and --manifest")
    print(f"test: {format_metrics(report['metrics'])}")
    print(f"threshold: {report['threshold']['value']:.4f} ({report['threshold']['method']})")
    print(f"report: {report.get('report_path')}")
    print(f"learning curves: {report.get('learning_curves')}")
    ece = report["ece"]
    print(f"calibration: {(report['calibration'] or {}).get('method', 'none')}; test ECE {ece['test']:.4f} "
          f"(raw {ece['test_raw']:.4f}); reliability diagram: {report.get('reliability_diagram')}")
    if report.get("robustness"):
        from training.robustness import markdown_table

        print(markdown_table({"threshold": report["threshold"]["value"], "conditions": report["robustness"]}))
    return 0
