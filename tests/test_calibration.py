"""Calibration: Platt / temperature fits, ECE, the reliability diagram, and one `apply` for training and serving."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from glasses import calibration as cal
from training.calibrate import DIAGRAM_FILE
from training.evaluate import evaluate, roc_auc, served_predictor
from training.rundir import REPORT_FILE

from _training import tiny_manifest


def _sample(n: int, a: float, b: float, seed: int = 0):
    """Raw scores whose true P(glasses) is sigmoid(a * logit(raw) + b)."""
    rng = np.random.default_rng(seed)
    raw = cal.sigmoid(rng.normal(0.0, 2.5, n))
    y = (rng.random(n) < cal.sigmoid(a * cal.logit(raw) + b)).astype(np.int64)
    return y, raw


def test_platt_recovers_the_true_mapping_and_removes_the_calibration_error():
    y, raw = _sample(40_000, 0.5, -1.5)
    fitted = cal.fit(y, raw, "platt")
    assert fitted["a"] == pytest.approx(0.5, abs=0.03) and fitted["b"] == pytest.approx(-1.5, abs=0.05)
    assert cal.expected_calibration_error(y, raw) > 0.1
    assert cal.expected_calibration_error(y, cal.apply(raw, fitted)) < 0.015


def test_temperature_scales_without_shift():
    y, raw = _sample(40_000, 0.4, 0.0, seed=1)
    fitted = cal.fit(y, raw, "temperature")
    assert fitted["b"] == 0.0 and fitted["temperature"] == pytest.approx(2.5, rel=0.08)


def test_apply_is_monotone_identity_without_calibration_and_keeps_dtype():
    y, raw = _sample(2_000, 0.7, 0.3, seed=2)
    fitted = cal.fit(y, raw)
    assert roc_auc(y, cal.apply(raw, fitted)) == pytest.approx(roc_auc(y, raw), abs=1e-12)
    assert cal.apply(raw, None) is not None and np.array_equal(cal.apply(raw, None), raw)
    p32 = raw.astype(np.float32)
    assert cal.apply(p32, fitted).dtype == np.float32
    assert np.all(np.isfinite(cal.apply(np.array([0.0, 1.0]), fitted)))


def test_fit_survives_separable_and_one_class_validation():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.01, 0.02, 0.03, 0.9, 0.99])
    fitted = cal.fit(y, p)
    assert np.isfinite(fitted["a"]) and np.isfinite(fitted["b"])
    assert cal.fit(np.zeros(4), p[:4])["method"] == "identity"
    with pytest.raises(ValueError, match="calibration method"):
        cal.fit(y, p, "isotonic")


def test_ece_of_known_bins():
    y = np.array([1, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.95, 0.95, 0.95, 0.95])
    # bin 0: observed 0.25 vs 0.05; last bin: observed 1.0 vs 0.95
    assert cal.expected_calibration_error(y, p) == pytest.approx((4 * 0.2 + 4 * 0.05) / 8)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    manifest = tiny_manifest(base)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    out = tmp_path_factory.mktemp("calibrated")
    report = evaluate(model, manifest, threshold="val_balanced_accuracy", out_dir=out)
    return {"model": model, "report": report, "out": out, "manifest": manifest}


def test_evaluate_fits_on_validation_and_reports_ece_and_diagram(evaluated):
    report, out = evaluated["report"], evaluated["out"]
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["calibration"]["method"] == "platt" and saved["calibration"]["n"] == report["validation_metrics"]["n"]
    assert set(saved["ece"]) >= {"val_raw", "val", "test_raw", "test"}
    assert (out / DIAGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the threshold is chosen on the calibrated validation probabilities
    assert saved["threshold"]["method"].startswith("maximises balanced accuracy on the validation split")


def test_service_classifier_and_evaluation_answer_the_same_calibrated_probability(evaluated, tmp_path):
    from glasses.runtimes import CalibratedClassifier, TFClassifier
    from training.data import load_split

    path = tmp_path / "model.keras"
    evaluated["model"].save(path)
    calibration = evaluated["report"]["calibration"]
    x, _ = load_split(evaluated["manifest"], "test")
    raw = TFClassifier(path, 64)(x)
    served = CalibratedClassifier(TFClassifier(path, 64), calibration)(x)  # what load_classifier serves
    trained = served_predictor(evaluated["model"], calibration)(x)
    assert np.allclose(served, trained, atol=1e-6)
    assert np.allclose(served, cal.apply(raw, calibration), atol=1e-6)
    assert not np.allclose(served, raw, atol=1e-3)  # calibration really changed the probabilities
