"""Evaluation metrics (numpy), the validation-chosen threshold, the report and learning curves."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from glasses import calibration
from training.evaluate import (
    binary_metrics,
    choose_threshold,
    evaluate,
    plot_learning_curves,
    roc_auc,
)
from training.data import load_split
from training.rundir import CURVES_FILE, REPORT_FILE

from _training import tiny_manifest


def pairwise_auc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_roc_auc_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(pairwise_auc(y, p))
    assert roc_auc(np.ones(5), np.ones(5)) is None


def test_binary_metrics_on_a_known_confusion_matrix():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.1, 0.3, 0.4])
    m = binary_metrics(y, p, 0.5)
    assert m["confusion_matrix"]["matrix"] == [[4, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    expected_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert m["loss"] == pytest.approx(expected_loss)


def test_threshold_is_chosen_to_maximise_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.01, 0.02, 0.05, 0.10, 0.2, 0.3])  # separable, but all below 0.5
    t = choose_threshold(y, p)
    assert 0.10 < t < 0.2
    assert binary_metrics(y, p, t)["balanced_accuracy"] == 1.0
    assert binary_metrics(y, p, 0.5)["balanced_accuracy"] == 0.5
    assert choose_threshold(np.zeros(4), p[:4]) == 0.5  # one class: keep the default


def test_learning_curves_png(tmp_path):
    hist = {"loss": [0.7, 0.5], "val_loss": [0.8, 0.6], "accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6]}
    path = plot_learning_curves(hist, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_learning_curves({}, tmp_path / "none.png") is None


def test_evaluate_writes_report_and_curves_and_chooses_threshold_on_validation(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    manifest = tiny_manifest(base)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    out = tmp_path_factory.mktemp("eval")
    history = {"loss": [0.7, 0.6], "val_loss": [0.7, 0.65], "accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.55]}
    report = evaluate(model, manifest, threshold="val_balanced_accuracy", history=history, out_dir=out)
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["threshold"] == report["threshold"]
    assert "validation" in report["threshold"]["method"]
    x_test, y_test = load_split(manifest, "test")
    raw = model.predict(x_test.astype("float32") / 255.0, verbose=0).reshape(-1)
    probs = calibration.apply(raw.astype("float64"), report["calibration"])  # fitted on validation
    expected = binary_metrics(y_test, probs, report["threshold"]["value"])
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "f1", "precision", "recall"):
        assert saved["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key
    assert saved["metrics"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert (out / CURVES_FILE).stat().st_size > 1000
    assert report["manifest_hash"] and report["image_size"] == 64
