"""LiteRT conversion at registration and the one loader: real Keras models, real TFLite converter,
real ai_edge_litert interpreter; parity with Keras <= 1e-5 on real photos and generated formats."""

from __future__ import annotations

import bentoml
import keras
import numpy as np
import pytest

from _training import private_store, tiny_manifest, write_run_dir
from glasses import preprocessing, registry
from glasses.config import LITERT_MODEL_FILE, LITERT_TOLERANCE
from glasses.runtimes import RuntimeUnavailable, available_runtimes, choose_runtime, load_classifier
from training import convert
from training.cli import UserError, main
from training.register import register

SIZE = 64
_real_export = convert.export_tflite


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.getbasetemp())


@pytest.fixture()
def store(tmp_path):
    with private_store(tmp_path / "bentoml") as home:
        yield home


def cnn(seed: int, size: int = SIZE) -> keras.Model:
    """A small real CNN whose output spreads over (0, 1) (so parity is not vacuous)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(1)(x)
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(keras.layers.Rescaling(30.0, -0.2)(x)))


def test_registration_stores_a_checked_tflite_and_both_runtimes_agree(store, manifest, tmp_path):
    model = cnn(1)
    result = register(write_run_dir(tmp_path / "run", model, manifest, metrics={"roc_auc": 0.8}))
    assert result.litert_accepted and "accepted" in result.litert, result.litert
    stored = bentoml.models.get(result.tag)
    assert available_runtimes(stored) == ["tf", "litert"]
    record = stored.info.metadata["litert"]
    assert record["accepted"] and record["max_abs_dp"] <= LITERT_TOLERANCE
    x = convert.check_images(convert.test_pixels(stored.info.metadata["split_manifest_path"]), SIZE)
    assert record["checked_images"] == len(x) > len(convert.generated_check_images(SIZE))  # test photos too
    tf_p, lite_p = load_classifier(stored, "tf")(x), load_classifier(stored, "litert")(x)
    assert np.max(np.abs(tf_p - lite_p)) <= LITERT_TOLERANCE
    assert np.ptp(lite_p) > 0.05  # the model is not constant
    assert load_classifier(stored).runtime == "litert"  # auto prefers LiteRT


def test_a_bad_conversion_is_refused_and_the_version_serves_on_tf(store, manifest, tmp_path, capsys, monkeypatch):
    """A LiteRT model that does not match Keras (here: another model's weights) is refused, in one line."""
    other = cnn(2)
    monkeypatch.setattr(convert, "export_tflite", lambda model: _real_export(other))
    run = write_run_dir(tmp_path / "run", cnn(1), manifest, metrics={"roc_auc": 0.8})
    assert main(["register", "--run-dir", str(run)]) == 0
    out = capsys.readouterr()
    [line] = [x for x in out.err.splitlines() if "LiteRT" in x]
    assert "refused" in line and "serves on TensorFlow" in line, line
    [stored] = registry.list_models()
    assert available_runtimes(stored) == ["tf"] and not stored.info.metadata["litert"]["accepted"]
    assert stored.info.metadata["litert"]["max_abs_dp"] > LITERT_TOLERANCE
    assert choose_runtime(stored, "auto") == "tf"
    with pytest.raises(RuntimeUnavailable, match="no litert model"):
        choose_runtime(stored, "litert")


def test_convert_checked_refuses_past_the_tolerance_and_on_converter_errors():
    model, pixels = cnn(3), convert.generated_check_images(SIZE)
    ok = convert.convert_checked(model, pixels)
    assert ok.accepted and ok.max_abs_dp <= LITERT_TOLERANCE
    other = convert.convert_checked(model, pixels, export=lambda m: _real_export(cnn(4)))
    assert not other.accepted and other.max_abs_dp > LITERT_TOLERANCE and "refused" in other.reason
    broken = convert.convert_checked(model, pixels, export=lambda m: b"not a flatbuffer")
    assert not broken.accepted and broken.reason.startswith("LiteRT conversion failed") and "\n" not in broken.reason


def test_convert_cli_adds_litert_to_a_registered_version(store, manifest, tmp_path, capsys, monkeypatch):
    real = convert.export_tflite
    monkeypatch.setattr(convert, "export_tflite", lambda model: (_ for _ in ()).throw(RuntimeError("no op")))
    first = register(write_run_dir(tmp_path / "run", cnn(4), manifest, metrics={"roc_auc": 0.8}))
    assert not first.litert_accepted and "failed" in first.litert
    monkeypatch.setattr(convert, "export_tflite", real)
    assert main(["convert", first.tag]) == 0
    new_tag = capsys.readouterr().out.split()[1]
    new = bentoml.models.get(new_tag)
    assert new.info.metadata["converted_from"] == first.tag and available_runtimes(new) == ["tf", "litert"]
    assert registry.promoted_tag() == new_tag  # it replaced the promoted version
    assert main(["convert", "glasses_classifier:doesnotexist"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_loader_refuses_unknown_runtimes_and_missing_files(tmp_path):
    (tmp_path / LITERT_MODEL_FILE).write_bytes(convert.export_tflite(cnn(5)))
    assert available_runtimes(tmp_path) == ["litert"]
    assert load_classifier(tmp_path, "auto", SIZE).runtime == "litert"
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        choose_runtime(tmp_path, "onnx")
    with pytest.raises(RuntimeUnavailable, match="no tf model"):
        choose_runtime(tmp_path, "tf")
    with pytest.raises(ValueError, match="does not match"):
        load_classifier(tmp_path, "litert", 128)
    assert issubclass(RuntimeUnavailable, UserError)


def test_bundled_model_litert_parity_on_real_photos(store, celeba_dir):
    """The bundled default model ships its model.tflite; both runtimes agree on real photos + formats."""
    tag = registry.import_bundled_model()
    stored = bentoml.models.get(tag)
    assert available_runtimes(stored) == ["tf", "litert"], "bundled model has no model.tflite"
    files = sorted(celeba_dir.glob("glasses/*.jpg"))[:24] + sorted(celeba_dir.glob("no_glasses/*.jpg"))[:40]
    pixels = np.concatenate([np.stack([preprocessing.to_uint8(f, 128) for f in files]),
                             convert.generated_check_images(128)])
    tf_p, lite_p = load_classifier(stored, "tf")(pixels), load_classifier(stored, "litert")(pixels)
    assert np.max(np.abs(tf_p - lite_p)) <= LITERT_TOLERANCE
    assert tf_p[:24].mean() > tf_p[24:64].mean() + 0.3  # a real model: glasses photos score higher
