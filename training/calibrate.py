"""Calibrate: fit the calibration on validation, measure it on test, draw the reliability diagram.

    raw P(glasses) on validation -> glasses.calibration.fit (Platt by default) -> stored with the run's
    report (evaluation.json `calibration`) and, at registration, with the version
    -> ECE on validation and test, before and after -> reliability.png (observed share of glasses
       photos against mean predicted P(glasses) per bin, with the photo count per bin)

Applying a calibration is glasses.calibration.apply, the same function the service uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glasses import calibration as cal

DIAGRAM_FILE = "reliability.png"


def calibration_report(val_true: np.ndarray, val_raw: np.ndarray, test_true: np.ndarray, test_raw: np.ndarray,
                       method: str | None) -> tuple[dict | None, dict]:
    """(fitted calibration or None, ECE figures raw and calibrated on validation and test)."""
    fitted = cal.fit(val_true, val_raw, method) if method and len(val_true) else None
    ece = {
        "bins": cal.ECE_BINS,
        "val_raw": cal.expected_calibration_error(val_true, val_raw) if len(val_true) else None,
        "test_raw": cal.expected_calibration_error(test_true, test_raw),
        "val": cal.expected_calibration_error(val_true, cal.apply(val_raw, fitted)) if len(val_true) else None,
        "test": cal.expected_calibration_error(test_true, cal.apply(test_raw, fitted)),
    }
    return fitted, ece


def plot_reliability(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, path: str | Path,
                     title: str = "") -> Path:
    """Reliability diagram of the test split: raw and calibrated, with the diagonal and bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for probs, label, marker in ((raw, "raw", "s"), (calibrated, "calibrated", "o")):
        bins = cal.reliability_bins(y_true, probs)
        ece = cal.expected_calibration_error(y_true, probs)
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], marker=marker,
                label=f"{label} (ECE {ece:.3f})")
        hist.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["n"] for b in bins], width=1 / cal.ECE_BINS,
                 alpha=0.5, label=label)
    ax.set_ylabel("share of glasses photos")
    ax.set_title(title or f"reliability on the test split ({len(y_true)} photos, {int(np.sum(y_true))} with glasses)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    hist.set_yscale("log")
    hist.set_xlabel("predicted P(glasses)")
    hist.set_ylabel("photos")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
