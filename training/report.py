"""One self-contained HTML report per training run (report.html beside evaluation.json).

    evaluation.json (metrics, threshold) + test labels and P(glasses) (test_predictions.json)
    + the test photos of the cache (for the misclassified ones) + the learning curves
      -> ROC and precision-recall curves (operating point marked), confusion matrix, reliability
         diagram (calibration), learning curves, a contact sheet of the misclassified test photos
         with their P(glasses)
      -> report.html: every image inlined as base64, no script, nothing fetched from anywhere

Every part is optional (a registered version without stored predictions still gets its metrics and
confusion matrix), so `glasses-train registry show TAG --report` can rebuild what it has.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glasses.config import CLASS_NAMES
from glasses.files import write_json_atomic

REPORT_HTML = "report.html"
PREDICTIONS_FILE = "test_predictions.json"
CONTACT_LIMIT = 60  # misclassified photos shown (the most confidently wrong first)
BINS = 10  # reliability diagram
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;color:#1d2433;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d8dce6}
.meta{color:#5b6478;font-size:.9rem}table{border-collapse:collapse;font-size:.92rem}
td,th{border:1px solid #d8dce6;padding:.25rem .6rem;text-align:right}th{background:#f1f3f8}
img.plot{max-width:100%}.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(120px,1fr));gap:.6rem}
.sheet figure{margin:0;font-size:.75rem;color:#5b6478}.sheet img{width:100%;border-radius:4px}
.sheet b{color:#b3261e}.note{color:#5b6478;font-style:italic}
.pair{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}.pair>section{flex:1 1 30rem}"""


# --- curves (numpy) -----------------------------------------------------------------------------
def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order].astype(bool), p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def pr_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order].astype(bool), p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return tp / max(int(y.sum()), 1), tp / np.maximum(tp + fp, 1)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probability bin: mean P(glasses), observed share of glasses, count (empty bins dropped)."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    keep = counts > 0
    mean_p = np.bincount(which, weights=p, minlength=bins)[keep] / counts[keep]
    share = np.bincount(which, weights=y.astype(float), minlength=bins)[keep] / counts[keep]
    return mean_p, share, counts[keep]


# --- figures ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _figure_url(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return _data_url(buf.getvalue())


def curves_figure(y: np.ndarray, p: np.ndarray, threshold: float) -> str:
    """ROC and precision-recall curves with the operating point at `threshold`, as a data URL."""
    fig, (roc, pr) = _plt().subplots(1, 2, figsize=(10, 4.2))
    fpr, tpr = roc_points(y, p)
    pred = p >= threshold
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    roc.plot(fpr, tpr, drawstyle="steps-post", label="model")
    roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    roc.plot(fp / neg, tp / pos, "o", c="crimson", label=f"threshold {threshold:.3f}")
    roc.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC")
    recall, precision = pr_points(y, p)
    pr.plot(recall, precision, drawstyle="steps-post")
    pr.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"share of glasses {y.mean():.3f}")
    if tp + fp:
        pr.plot(tp / pos, tp / (tp + fp), "o", c="crimson", label=f"threshold {threshold:.3f}")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (glasses)", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc else "lower left")
    fig.tight_layout()
    return _figure_url(fig)


def confusion_figure(matrix: Sequence[Sequence[int]]) -> str:
    """The confusion matrix (rows true, columns predicted) with counts, as a data URL."""
    fig, ax = _plt().subplots(figsize=(4.2, 3.8))
    m = np.asarray(matrix)
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color="white" if v > m.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.tight_layout()
    return _figure_url(fig)


def _plain_log_counts(axis: Any) -> None:
    """Label a log-scaled count axis 1, 2, 5, 10, 20, ... (not 6x10^0, minor ticks unlabelled)."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def reliability_figure(y: np.ndarray, p: np.ndarray) -> str:
    """Reliability diagram: observed share of glasses against mean P(glasses) per bin, as a data URL."""
    fig, (ax, hist) = _plt().subplots(2, 1, figsize=(5, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    mean_p, share, counts = reliability(y, p)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.plot(mean_p, share, "o-", label="model")
    for x, s, n in zip(mean_p, share, counts):
        ax.annotate(str(n), (x, s), textcoords="offset points", xytext=(4, -10), fontsize=7, color="#5b6478")
    ax.set(ylabel="observed share of glasses", title=f"reliability ({BINS} bins; n per bin)", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    hist.hist(p, bins=BINS, range=(0, 1), color="#8a94ab")
    hist.set(xlabel="P(glasses)", ylabel="photos", yscale="log")
    _plain_log_counts(hist.yaxis)
    hist.set_ylim(bottom=0.7)  # a bin of one photo is a visible bar, not a line on the axis
    fig.tight_layout()
    return _figure_url(fig)


def contact_sheet(images: Any, y: np.ndarray, p: np.ndarray, files: Sequence[str], threshold: float) -> str:
    """HTML grid of the misclassified photos (most confidently wrong first) with their P(glasses)."""
    from PIL import Image

    wrong = np.flatnonzero((p >= threshold) != (y == 1))
    if len(wrong) == 0:
        return '<p class="note">No test photo is misclassified at this threshold.</p>'
    wrong = wrong[np.argsort(-np.abs(p[wrong] - threshold), kind="mergesort")][:CONTACT_LIMIT]
    cells = []
    for i in wrong:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(images[i], np.uint8)).save(buf, "JPEG", quality=85)
        truth = CLASS_NAMES[int(y[i])]
        cells.append(f'<figure><img src="{_data_url(buf.getvalue(), "image/jpeg")}" alt="{html.escape(files[i])}">'
                     f"<figcaption>{html.escape(Path(files[i]).name)}<br>true <b>{truth}</b>, "
                     f"P(glasses) {p[i]:.3f}</figcaption></figure>")
    shown = f"{len(wrong)} of {int(((p >= threshold) != (y == 1)).sum())}"
    return f'<p class="meta">{shown} misclassified, most confident first.</p><div class="sheet">{"".join(cells)}</div>'


# --- the document -------------------------------------------------------------------------------
def _metrics_table(evaluation: dict) -> str:
    rows = [("", "test", "validation")]
    test, val = evaluation.get("metrics") or {}, evaluation.get("validation_metrics") or {}
    for key in ("n", "positives", "accuracy", "balanced_accuracy", "roc_auc", "precision", "recall", "f1", "loss"):
        cell = [test.get(key), val.get(key)]
        rows.append((key, *("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cell)))
    head, *body = rows
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")


def _pair(*sections: tuple[str, str]) -> str:
    """Sections side by side (wrapping on narrow screens)."""
    return '<div class="pair">' + "".join(f"<section><h2>{h}</h2>{body}</section>" for h, body in sections) + "</div>"


def render(evaluation: dict, *, title: str, y: np.ndarray | None = None, p: np.ndarray | None = None,
           images: Any = None, files: Sequence[str] | None = None, curves_png: bytes | None = None,
           notes: Sequence[str] = ()) -> str:
    """The report as one HTML string; sections without their data say so instead of failing."""
    threshold = float((evaluation.get("threshold") or {}).get("value", 0.5))
    method = (evaluation.get("threshold") or {}).get("method", "")
    metrics = evaluation.get("metrics") or {}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">threshold {threshold:.4f} ({html.escape(method)}) · test split of '
             f'{html.escape(str(evaluation.get("manifest_path", "?")))} · {evaluation.get("params", "?")} parameters</p>',
             *(f'<p class="note">{html.escape(n)}</p>' for n in notes)]
    confusion = (f'<img class="plot" alt="confusion matrix" src="{confusion_figure(metrics["confusion_matrix"]["matrix"])}">'
                 if metrics.get("confusion_matrix") else "")
    parts.append(_pair(("Metrics", _metrics_table(evaluation)), ("Confusion matrix", confusion)))
    if y is not None and p is not None and len(y):
        parts.append("<h2>ROC and precision-recall</h2>"
                     f'<img class="plot" alt="ROC and precision-recall curves" src="{curves_figure(y, p, threshold)}">')
        calibration = f'<img class="plot" alt="reliability diagram" src="{reliability_figure(y, p)}">'
    else:
        calibration = '<p class="note">No per-photo test predictions stored: no curves or calibration.</p>'
    learning = (f'<img class="plot" alt="learning curves" src="{_data_url(curves_png)}">' if curves_png
                else '<p class="note">No training history recorded.</p>')
    parts.append(_pair(("Calibration", calibration), ("Learning curves", learning)))
    parts.append("<h2>Misclassified test photos</h2>")
    if images is not None and y is not None and p is not None and files is not None:
        parts.append(contact_sheet(images, y, p, files, threshold))
    else:
        parts.append('<p class="note">The test photos are not available here (the cache is elsewhere).</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>{"".join(parts)}</body></html>\n')


def write_predictions(out_dir: Path, files: Sequence[str], y: np.ndarray, p: np.ndarray) -> Path:
    """test_predictions.json: file, label and P(glasses) of every test photo (what the report plots)."""
    path = Path(out_dir) / PREDICTIONS_FILE
    write_json_atomic(path, {"files": list(files), "labels": [int(v) for v in y],
                             "probabilities": [float(v) for v in p]})
    return path


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(files, labels, P(glasses)) from a test_predictions.json."""
    data = json.loads(Path(path).read_text())
    return data["files"], np.asarray(data["labels"], np.int64), np.asarray(data["probabilities"], np.float64)


def write_run_report(out_dir: Path, evaluation: dict, *, title: str, images: Any, files: Sequence[str],
                     y: np.ndarray, p: np.ndarray, curves: Path | None) -> Path:
    """Write test_predictions.json and report.html into a run's directory; the report's path."""
    out_dir = Path(out_dir)
    write_predictions(out_dir, files, y, p)
    curves_png = Path(curves).read_bytes() if curves else None
    path = out_dir / REPORT_HTML
    path.write_text(render(evaluation, title=title, y=y, p=p, images=images, files=files, curves_png=curves_png))
    return path


def version_report(tag: str, out: Path | None = None) -> Path:
    """Write the report of a registered version to `out` (default artifacts/reports/NAME-VERSION.html).

    The report stored at registration is copied as it is; a version without one (registered before
    reports existed, or imported) gets one rebuilt from its metadata, its stored test predictions
    and, where its split manifest's cache is still on this machine, the misclassified photos.
    """
    from glasses import registry
    from glasses.config import WORK_DIR

    model = registry.get_model(tag)
    target = Path(out) if out else WORK_DIR / "reports" / f"{model.tag.name}-{model.tag.version}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    stored = Path(model.path) / REPORT_HTML
    if stored.exists():
        target.write_bytes(stored.read_bytes())
        return target
    meta = dict(model.info.metadata or {})
    evaluation = {"metrics": meta.get("metrics"), "validation_metrics": meta.get("validation_metrics"),
                  "threshold": {"value": meta.get("threshold", 0.5), "method": meta.get("threshold_method", "")},
                  "manifest_path": meta.get("split_manifest_path"), "params": meta.get("params", "?")}
    notes = [f"Rebuilt from what the registry stores for {model.tag} (no report was stored at registration)."]
    y = p = files = images = None
    if (Path(model.path) / PREDICTIONS_FILE).exists():
        files, y, p = read_predictions(Path(model.path) / PREDICTIONS_FILE)
        images = _test_images(meta.get("split_manifest_path"), len(files))
    target.write_text(render(evaluation, title=f"Evaluation report: {model.tag}", y=y, p=p, images=images,
                             files=files, notes=notes))
    return target


def _test_images(manifest_path: str | None, n: int) -> Any:
    """The test photos of a split manifest if its cache is on this machine and matches, else None."""
    if not manifest_path or not Path(manifest_path).exists():
        return None
    from training.data import load_split

    try:
        images, labels = load_split(manifest_path, "test")
    except (OSError, ValueError, KeyError):
        return None
    return images if len(labels) == n else None
