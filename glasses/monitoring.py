"""What registration records so that serving can check a version and watch it without labels.

- Parity probe: fixed synthetic pixels (pure arithmetic, identical on every machine and numpy) and
  the P(glasses) the version gave on them at registration. The service scores the same pixels after
  loading a version and refuses it when its answers differ (a corrupt, swapped or mis-converted file).
- Reference distribution: a histogram of P(glasses) over the version's test photos. The service
  compares the last verdicts' P(glasses) with it: the population stability index (PSI), per version.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from glasses.config import DRIFT_BINS, PROBE_IMAGES

PSI_EPSILON = 1e-4  # share given to an empty bin, so an empty bin costs a bounded amount


def probe_pixels(size: int, count: int = PROBE_IMAGES) -> np.ndarray:
    """`count` deterministic uint8 images (count, size, size, 3): gradients and stripes, no RNG."""
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = []
    for k in range(count):
        red = (i * (3 + k) + j * 5 + 40 * k) % 256
        green = (i * j // (k + 1) + 17 * k) % 256
        blue = np.where(((i // (4 + k)) + (j // (6 + k))) % 2 == 0, 30 + 50 * k, 220 - 30 * k)
        images.append(np.stack([red, green, blue], axis=-1))
    return np.stack(images).astype(np.uint8)


def record_probe(model: Any, size: int) -> list[float]:
    """Raw P(glasses) of a Keras model on the probe at registration (float input x / 255, as in training;
    before any calibration: the probe checks the model file)."""
    pixels = probe_pixels(size).astype(np.float32) / 255.0  # == preprocessing.rescale
    return [float(p) for p in np.asarray(model(pixels, training=False)).reshape(-1)]


def parity_error(recorded: Sequence[float], measured: Sequence[float]) -> float:
    """Largest |P recorded at registration - P measured now| on the probe (inf if the counts differ)."""
    recorded, measured = np.asarray(recorded, np.float64), np.asarray(measured, np.float64)
    if recorded.shape != measured.shape:
        return float("inf")
    return float(np.max(np.abs(recorded - measured))) if recorded.size else 0.0


def reference_histogram(probabilities: Sequence[float], bins: int = DRIFT_BINS) -> list[int]:
    """Counts of P(glasses) in `bins` equal-width bins over [0, 1] (what registration stores)."""
    counts, _ = np.histogram(np.clip(np.asarray(probabilities, np.float64), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


def psi(reference_counts: Sequence[int], probabilities: Sequence[float]) -> float:
    """Population stability index of recent P(glasses) against the reference histogram.

    sum over bins of (recent share - reference share) * ln(recent share / reference share); 0 = the
    same distribution. Rule of thumb: < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a major one.
    """
    reference = np.asarray(reference_counts, np.float64)
    recent = np.asarray(reference_histogram(probabilities, len(reference)), np.float64)
    if reference.sum() == 0 or recent.sum() == 0:
        return 0.0
    ref_share = np.maximum(reference / reference.sum(), PSI_EPSILON)
    new_share = np.maximum(recent / recent.sum(), PSI_EPSILON)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))
