"""Compare: registered versions re-evaluated on the same test photos, paired counts, McNemar p."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from glasses import preprocessing, registry
from glasses.config import CLASS_MAP
from training.cli import UserError
from training.compare import compare, format_comparison, mcnemar_exact
from training.data import load_split
from training.evaluate import binary_metrics

from _training import TINY_SIZE, cli_env, glasses_train, private_store, tiny_manifest, tiny_source


def small_model(seed: int, size: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def store_version(model: keras.Model, threshold: float, *, version: str = preprocessing.PREPROCESSING_VERSION,
                  manifest: Path | None = None) -> str:
    metadata = {"image_size": model.input_shape[1], "threshold": threshold, "class_map": dict(CLASS_MAP),
                "preprocessing_version": version, **({"split_manifest_path": str(manifest)} if manifest else {})}
    return registry.save_version(model, metadata=metadata, labels={"stage": "test"})


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    tiny_manifest(base)  # the cache at 64 px, shared with the other training tests
    return base


@pytest.fixture()
def store(tmp_path):
    with private_store(tmp_path / "bentoml") as home:
        yield home


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(10, 0) == mcnemar_exact(0, 10)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)


def test_versions_scored_on_the_same_photos_with_their_own_size_and_threshold(store, base) -> None:
    source = f"folders:{tiny_source(base)}"
    a, b = small_model(1, TINY_SIZE), small_model(2, 128)
    tag_a, tag_b = store_version(a, 0.5), store_version(b, 0.3)
    registry.promote(tag_a)

    report = compare([tag_b], source, work_dir=base / "work")  # one TAG: against the promoted one
    assert report["baseline"] == tag_a and [v["tag"] for v in report["versions"]] == [tag_a, tag_b]

    x, y = load_split(tiny_manifest(base), "test")
    p_a = a.predict(x.astype("float32") / 255.0, verbose=0).reshape(-1)
    first, second = report["versions"]
    assert first["metrics"]["roc_auc"] == pytest.approx(binary_metrics(y, p_a, 0.5)["roc_auc"])
    assert (first["image_size"], second["image_size"], second["threshold"]) == (TINY_SIZE, 128, 0.3)
    assert report["photos"] == len(y) and report["glasses"] == int(y.sum())
    assert first["only_baseline_right"] == first["only_this_right"] == 0 and first["mcnemar_p"] == 1.0
    right_a = len(y) - first["errors"]
    right_b = len(y) - second["errors"]
    assert right_a - right_b == second["only_baseline_right"] - second["only_this_right"]
    assert second["mcnemar_p"] == mcnemar_exact(second["only_baseline_right"], second["only_this_right"])
    text = format_comparison(report)
    assert f"{tag_a} (baseline)" in text and "McNemar exact p" in text and f"{len(y)} photos" in text


def test_refusals_are_one_line_user_errors(store, base) -> None:
    source = f"folders:{tiny_source(base)}"
    tag = store_version(small_model(1, TINY_SIZE), 0.5)
    with pytest.raises(UserError, match="none is promoted"):
        compare([tag], source, work_dir=base / "work")
    with pytest.raises(UserError, match="glasses_classifier:nope"):
        compare([tag, "glasses_classifier:nope"], source, work_dir=base / "work")
    old = store_version(small_model(1, TINY_SIZE), 0.5, version="some-older-rule")
    with pytest.raises(UserError, match="some-older-rule"):
        compare([tag, old], source, work_dir=base / "work")


def test_cli_wrong_source_is_one_line_and_exit_2(tmp_path) -> None:
    run = glasses_train(["compare", "--source", f"folders:{tmp_path / 'nope'}", "a:b", "c:d"],
                        env=cli_env(BENTOML_HOME=str(tmp_path / "bentoml")))
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("glasses-train compare: error:")


def test_a_version_that_saw_the_test_photos_is_refused(store, base, tmp_path) -> None:
    """Trained on a split whose train part holds some of these test photos: not comparable."""
    source = f"folders:{tiny_source(base)}"
    same = store_version(small_model(1, TINY_SIZE), 0.5, manifest=tiny_manifest(base))
    other = json.loads(tiny_manifest(base).read_text())
    other["splits"]["train"]["ids"] += other["splits"]["test"]["ids"][:2]  # e.g. another seed or grouping
    other_split = tmp_path / "manifest-other.json"
    other_split.write_text(json.dumps(other))
    leaky = store_version(small_model(2, TINY_SIZE), 0.5, manifest=other_split)
    unknown = store_version(small_model(3, TINY_SIZE), 0.5)

    report = compare([same, unknown], source, work_dir=base / "work")
    assert [v["unseen_checked"] for v in report["versions"]] == [True, False]
    assert f"not checked that these photos were unseen in training (split manifest not on this machine): {unknown}" \
        in format_comparison(report)
    with pytest.raises(UserError, match=r"was trained or validated on 2 of these \d+ test photos"):
        compare([same, leaky], source, work_dir=base / "work")
