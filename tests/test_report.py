"""The HTML report of a run: its curves agree with the metrics, it is self-contained, `evaluate` writes
it, registration stores it and `glasses-train registry show TAG --report` gives it back (or rebuilds it)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from _training import cli_env, glasses_train, linear_model, private_store, tiny_manifest, write_run_dir
from training.evaluate import binary_metrics, evaluate, roc_auc
from training.report import (
    PREDICTIONS_FILE,
    REPORT_HTML,
    pr_points,
    read_predictions,
    reliability,
    render,
    roc_points,
    version_report,
)


def _scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1).round(2)  # informative, with ties
    return y, p


def _self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "a resource that is not inlined"


def test_curves_agree_with_the_metrics():
    y, p = _scores()
    fpr, tpr = roc_points(y, p)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, p), abs=1e-9)
    recall, precision = pr_points(y, p)
    assert recall[-1] == 1 and precision[-1] == pytest.approx(y.mean())
    mean_p, share, counts = reliability(y, p)
    assert counts.sum() == len(y) and np.all((0 <= share) & (share <= 1)) and np.all(np.diff(mean_p) > 0)


def test_render_inlines_everything_and_lists_the_misclassified():
    y, p = _scores(80)
    images = np.random.default_rng(1).integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    files = [f"glasses/{i:03d}.png" for i in range(80)]
    evaluation = {"metrics": binary_metrics(y, p, 0.5), "threshold": {"value": 0.5, "method": "fixed"}}
    page = render(evaluation, title="t", y=y, p=p, images=images, files=files, curves_png=None)
    _self_contained(page)
    assert page.count("data:image/png;base64,") == 3  # confusion matrix, ROC + PR, reliability
    wrong = int(((p >= 0.5) != (y == 1)).sum())
    assert 0 < wrong and page.count("data:image/jpeg;base64,") == min(wrong, 60)
    assert "No training history recorded" in page


def test_evaluate_writes_the_report_and_registration_keeps_it(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    manifest = tiny_manifest(base)
    run_dir = write_run_dir(tmp_path_factory.mktemp("run") / "r", linear_model(), manifest)
    history = {"loss": [0.7, 0.6], "val_loss": [0.7, 0.65], "accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.55]}
    report = evaluate(run_dir / "model.keras", manifest, history=history, out_dir=run_dir, title="smoke")
    page = (run_dir / REPORT_HTML).read_text()
    _self_contained(page)
    assert report["html_report"] == str(run_dir / REPORT_HTML)
    assert page.count("data:image/png;base64,") == 4  # + the learning curves
    files, y, p = read_predictions(run_dir / PREDICTIONS_FILE)
    assert len(files) == len(y) == len(p) == report["metrics"]["n"]
    assert binary_metrics(y, p, report["threshold"]["value"])["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    home = tmp_path_factory.mktemp("store") / "bentoml"
    from training.register import register

    with private_store(home):
        tag = register(run_dir, force=True, promote=False).tag
        out = version_report(tag, home.parent / "copy.html")
        assert out.read_text() == page
    cli = glasses_train(["registry", "show", tag, "--report", "--out", str(home.parent / "cli.html")],
                        env=cli_env(BENTOML_HOME=str(home)))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"report: {home.parent / 'cli.html'}"
    assert (home.parent / "cli.html").read_text() == page


def test_a_version_without_a_stored_report_gets_one_rebuilt(tmp_path):
    from glasses import registry

    y, p = _scores(40)
    metadata = {"metrics": binary_metrics(y, p, 0.4), "threshold": 0.4, "threshold_method": "fixed"}
    model = linear_model()
    with private_store(tmp_path / "bentoml"):
        tag = registry.save_version(model, metadata=metadata, labels={})
        page = version_report(tag, tmp_path / "r.html").read_text()
    _self_contained(page)
    assert "Rebuilt from what the registry stores" in page and "confusion matrix" in page
    assert "No per-photo test predictions stored" in page
