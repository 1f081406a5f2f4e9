"""The paper's model ladder and hypermodel: exact layers, parameter counts, metrics, LR decay."""

from __future__ import annotations

import keras_tuner as kt
import numpy as np
import pytest

from training import models

# Parameter counts at 128 px, computed by hand from the paper's layer lists (see models.py).
EXPECTED_PARAMS = {
    "perceptron": 128 * 128 * 3 + 1,  # 49,153
    "first_cnn": 448 + 4_640 + 8_192 * 128 + 128 + 129,  # 1,053,921
    "dropout_cnn": 336 + 2_616 + 6_144 * 128 + 128 + 129,  # 789,641
    "batchnorm_cnn": 324 + 36 + 2_592 + 72 + 13_824 + 192 + 1_024 * 200 + 600 + 201,  # 222,641
    "batchnorm_cnn_lr_decay": 222_641,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_ladder_parameter_counts(name):
    builder, _ = models.LADDER[name]
    model = builder(128)
    assert model.count_params() == EXPECTED_PARAMS[name]
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_paper_best_hypermodel_has_1105013_parameters():
    model = models.build_from_hyperparameters(models.PAPER_BEST_HYPERPARAMETERS, "paper", 128)
    assert model.count_params() == models.PAPER_BEST_PARAMS == 1_105_013
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [12, 44, 44]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)]
    bns = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(bns) == 3 and all(b.center and not b.scale for b in bns)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)


def test_hypermodel_space_is_the_papers():
    hp = kt.HyperParameters()
    models.build_paper_hypermodel(hp, size=64)
    space = {p.name: p for p in hp.space}
    assert (space["conv_layers"].min_value, space["conv_layers"].max_value) == (2, 4)
    assert (space["filters_0"].min_value, space["filters_0"].max_value, space["filters_0"].step) == (12, 64, 32)
    assert list(space["kernel_size_0"].values) == [3, 5]
    assert list(space["pooling_0"].values) == ["max", "avg"]
    assert (space["units"].min_value, space["units"].max_value, space["units"].step) == (32, 200, 32)
    assert list(space["learning_rate"].values) == [1e-2, 1e-3, 1e-4]
    # every value the tuner can draw for filters is 12 or 44
    assert set(range(12, 65, 32)) == {12, 44}


def test_batchnorm_cnn_uses_lr_001_and_the_papers_decay():
    model = models.build_batchnorm_cnn(64)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert [models.lr_decay(e) for e in range(3)] == pytest.approx([0.01, 0.006, 0.0036])
    assert models.LADDER["batchnorm_cnn_lr_decay"] == (models.build_batchnorm_cnn, True)


def test_balanced_accuracy_metric_matches_numpy():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 1], dtype="float32")
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.3, 0.4, 0.6, 0.8], dtype="float32")
    metric = models.BalancedAccuracy()
    metric.update_state(y[:4], p[:4].reshape(-1, 1))
    metric.update_state(y[4:], p[4:].reshape(-1, 1))
    tpr = 2 / 3  # glasses found: 0.9, 0.8 of 0.9, 0.2, 0.8
    tnr = 3 / 5  # no_glasses below 0.5: 0.1, 0.3, 0.4 of 5
    assert float(metric.result()) == pytest.approx((tpr + tnr) / 2)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_unknown_search_space_is_refused():
    with pytest.raises(ValueError, match="unknown search space"):
        models.hypermodel_for("nope")
