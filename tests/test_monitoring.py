"""Parity probe and drift statistic (glasses/monitoring.py): deterministic, and PSI reads as documented."""

from __future__ import annotations

import numpy as np

from glasses import monitoring
from glasses.config import DRIFT_WORRY_PSI


def test_probe_is_deterministic_varied_uint8():
    a, b = monitoring.probe_pixels(64), monitoring.probe_pixels(64)
    assert a.dtype == np.uint8 and a.shape == (4, 64, 64, 3) and np.array_equal(a, b)
    assert len({img.tobytes() for img in a}) == 4 and a.std() > 40  # four different, non-flat images
    assert monitoring.parity_error([0.1, 0.2], [0.1, 0.2000001]) < 1e-6
    assert monitoring.parity_error([0.1, 0.2], [0.1]) == float("inf")


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = monitoring.reference_histogram(rng.beta(0.5, 2.0, 5000))
    assert sum(reference) == 5000 and len(reference) == 10
    same = monitoring.psi(reference, rng.beta(0.5, 2.0, 500))
    shifted = monitoring.psi(reference, rng.beta(2.0, 0.5, 500))  # verdicts flipped towards "glasses"
    assert 0.0 <= same < 0.1 < DRIFT_WORRY_PSI < shifted
    assert monitoring.psi(reference, []) == 0.0
