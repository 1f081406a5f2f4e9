"""Calibration: the model's raw P(glasses) -> a probability that means what it says (numpy only).

    raw p --logit--> z --(a * z + b)--> sigmoid --> calibrated P(glasses)

Fitted once on the validation split (`fit`, Platt scaling: a and b by maximum likelihood; or
temperature scaling: a = 1 / T, b = 0), stored with the registered version (metadata
`calibration`), and applied by `apply` wherever a model's probabilities are used: the service's
classifier, evaluation, the robustness report. A missing calibration is the identity, so older
versions serve unchanged. The transformation is monotone: it never reorders photos (ROC-AUC is
unchanged) and the decision threshold is chosen on the calibrated validation probabilities.

`expected_calibration_error` is the usual binned ECE: the photo-weighted mean over equal-width
bins of |share of glasses photos - mean predicted P(glasses)|.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before the logit
ECE_BINS = 15
METHODS = ("platt", "temperature")


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of clipped probabilities, float64."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), without overflow."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def apply(p: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Calibrated P(glasses) for raw probabilities `p` (identity when calibration is None or empty)."""
    p = np.asarray(p)
    if not calibration:
        return p
    out = sigmoid(float(calibration["a"]) * logit(p) + float(calibration["b"]))
    return out.astype(p.dtype) if p.dtype.kind == "f" else out


def _nll(z: np.ndarray, target: np.ndarray, a: float, b: float) -> float:
    """Cross-entropy of sigmoid(a * z + b) against soft targets (stable: log(1 + e^x) via logaddexp)."""
    s = a * z + b
    return float(np.sum(target * np.logaddexp(0.0, -s) + (1 - target) * np.logaddexp(0.0, s)))


def _newton(z: np.ndarray, target: np.ndarray, fit_bias: bool, iterations: int = 100) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of sigmoid(a * z + b) against soft targets: Newton-Raphson steps,
    halved until the likelihood improves (the loss is convex, so this converges)."""
    a, b = 1.0, 0.0
    loss = _nll(z, target, a, b)
    for _ in range(iterations):
        q = sigmoid(a * z + b)
        r, w = q - target, np.maximum(q * (1 - q), 1e-12)
        grad = np.array([np.sum(r * z), np.sum(r)])
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad) if fit_bias else np.array([grad[0] / hess[0, 0], 0.0])
        for _ in range(40):
            new = _nll(z, target, a - step[0], b - step[1])
            if new <= loss:
                break
            step = step / 2
        else:
            break
        a, b, improvement, loss = a - step[0], b - step[1], loss - new, new
        if improvement < 1e-10 * max(1.0, loss):
            break
    return float(a), float(b)


def fit(y_true: np.ndarray, p: np.ndarray, method: str = "platt") -> dict:
    """Fit the calibration on (validation) labels and raw probabilities.

    Platt's targets are smoothed ((n+ + 1) / (n+ + 2) and 1 / (n- + 2)), as in Platt (1999), so a
    perfectly separated validation split still gives finite parameters.
    """
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    z = logit(np.asarray(p).reshape(-1))
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return {"method": "identity", "a": 1.0, "b": 0.0, "n": int(len(y)), "note": "one class only: not fitted"}
    target = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = _newton(z, target, fit_bias=method == "platt")
    out = {"method": method, "a": a, "b": b, "n": int(len(y)), "positives": int(n_pos)}
    if method == "temperature":
        out["temperature"] = 1.0 / a if a else float("inf")
    return out


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Binned ECE over `bins` equal-width bins of predicted P(glasses) (0 is perfectly calibrated)."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            total += sel.sum() * abs(y[sel].mean() - p[sel].mean())
    return float(total / len(y))


def reliability_bins(y_true: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty bin: its range, photo count, mean predicted P(glasses) and share of glasses photos."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        sel = which == k
        if sel.any():
            out.append({"lo": k / bins, "hi": (k + 1) / bins, "n": int(sel.sum()),
                        "mean_p": float(p[sel].mean()), "observed": float(y[sel].mean())})
    return out
