"""Registry: quality gate, atomic save, lineage metadata, same predictions after loading, export/import."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import bentoml
import keras
import numpy as np
import pytest

from glasses import registry
from glasses.registry import export_version, import_version, save_version
from glasses.config import MODEL_FILE, MODEL_NAME
from glasses.preprocessing import PREPROCESSING_VERSION
from training.cli import UserError, main
from training.data import load_split, manifest_hash
from training.register import check_gate, register

from _training import REPO, private_store, tiny_manifest, write_run_dir


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.getbasetemp())


@pytest.fixture()
def store(tmp_path):
    with private_store(tmp_path / "bentoml") as home:
        yield home


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def test_registered_model_predicts_like_the_original_and_records_lineage(store, manifest, tmp_path):
    model = small_model(1)
    run = write_run_dir(tmp_path / "run", model, manifest, metrics={"roc_auc": 0.8})
    result = register(run)
    assert result.promoted and registry.promoted_tag() == result.tag and not result.forced

    stored = bentoml.models.get(result.tag)
    x, _ = load_split(manifest, "test")
    x = x.astype("float32") / 255.0
    reloaded = keras.saving.load_model(stored.path_of(MODEL_FILE), compile=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)

    meta = stored.info.metadata
    for key in ("metrics", "hyperparameters", "tuner", "data_source", "data_fingerprint", "split_manifest_hash",
                "image_size", "preprocessing_version", "class_map", "threshold", "threshold_method",
                "training_wall_time_s", "library_versions", "git_commit"):
        assert key in meta, key
    assert meta["split_manifest_hash"] == manifest_hash(manifest)
    assert meta["class_map"] == {"no_glasses": 0, "glasses": 1}
    assert meta["preprocessing_version"] == PREPROCESSING_VERSION and meta["image_size"] == 64
    assert meta["tuner"]["profile"] == "smoke" and meta["tuner"]["objective"] == "val_accuracy"
    assert meta["tuner"]["settings"]["class_weight"] == "none" and meta["tuner"]["settings"]["max_epochs"] == 2
    assert {"keras", "bentoml", "python"} <= set(meta["library_versions"])
    assert meta["metrics"]["confusion_matrix"]["matrix"]
    assert stored.info.labels["forced"] == "false"


def test_quality_gate_floor_promoted_model_and_force(store, manifest, tmp_path):
    first = register(write_run_dir(tmp_path / "a", small_model(1), manifest, metrics={"roc_auc": 0.90}))

    # below the profile's floor (smoke: roc_auc 0.5)
    with pytest.raises(UserError, match="below the floor"):
        register(write_run_dir(tmp_path / "b", small_model(2), manifest, metrics={"roc_auc": 0.40}))
    # above the floor but below the promoted model on the same test manifest
    worse = write_run_dir(tmp_path / "c", small_model(3), manifest, metrics={"roc_auc": 0.85})
    with pytest.raises(UserError, match=f"below the promoted {first.tag}"):
        register(worse)
    assert [str(m.tag) for m in registry.list_models()] == [first.tag]  # refused = nothing stored
    # --force overrides and is recorded, but the forced model is not promoted: serving it is explicit
    forced = register(worse, force=True)
    assert forced.forced and not forced.promoted and registry.promoted_tag() == first.tag
    assert bentoml.models.get(forced.tag).info.labels["forced"] == "true"
    # a different test manifest is not comparable: only the floor applies
    decision = check_gate({"roc_auc": 0.6}, "another-manifest-hash", metric="roc_auc", floor=0.5)
    assert decision.passed and decision.promoted_value is None
    # a better model passes and becomes promoted
    better = register(write_run_dir(tmp_path / "d", small_model(4), manifest, metrics={"roc_auc": 0.95}))
    assert registry.promoted_tag() == better.tag


def test_gate_refusal_through_the_cli_is_one_line_and_nonzero(store, manifest, tmp_path, capsys):
    run = write_run_dir(tmp_path / "low", small_model(5), manifest, metrics={"roc_auc": 0.1})
    assert main(["register", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quality gate refused" in err and "--force" in err


def test_a_stale_or_foreign_evaluation_report_is_refused(store, manifest, tmp_path):
    """The report must come from this run's model.keras, on the manifest the run was tuned on."""
    from training.rundir import REPORT_FILE

    run = write_run_dir(tmp_path / "run", small_model(7), manifest)
    small_model(8).save(run / MODEL_FILE)  # re-tuned: a new model, the old report left behind
    with pytest.raises(UserError, match="was not made from"):
        register(run)
    write_run_dir(run, small_model(8), manifest)  # evaluated again: the report is the model's own ...
    report = json.loads((run / REPORT_FILE).read_text())
    (run / REPORT_FILE).write_text(json.dumps(report | {"manifest_hash": "0" * 64}))  # ... but of other data
    with pytest.raises(UserError, match="another split manifest"):
        register(run)
    assert registry.list_models() == []


def test_registry_errors_are_one_line(store, capsys):
    assert main(["registry", "promote", "not a tag!"]) == 2
    assert "not a valid model tag" in capsys.readouterr().err
    (store / "glasses_registry.json").write_text("{ half a pointer")
    assert main(["registry", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read the promotion pointer" in err


def test_crash_mid_registration_leaves_nothing(store, monkeypatch):
    import tempfile

    class Exploding:
        def save(self, path):
            Path(path).write_bytes(b"partial")
            raise OSError("disk full")

    made = []
    real_mkdtemp = tempfile.mkdtemp  # BentoML makes the new version's temp dir with it
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    with pytest.raises(OSError, match="disk full"):
        save_version(Exploding(), metadata={"x": 1}, labels={})
    assert registry.list_models() == []
    assert not any((store / "models").rglob(MODEL_FILE))
    assert len(made) == 1 and not Path(made[0]).exists()  # BentoML's temp dir cleaned up


def test_export_import_round_trip_and_bentoml_cli_sees_the_store(store, manifest, tmp_path, capsys, monkeypatch):
    model = small_model(6)
    result = register(write_run_dir(tmp_path / "run", model, manifest))
    monkeypatch.chdir(tmp_path)  # a path relative to the working directory, as users type it
    archive = export_version(result.tag, "model.bentomodel")
    assert archive == tmp_path / "model.bentomodel" and archive.exists()

    bentoml.models.delete(result.tag)
    assert registry.list_models() == []
    assert import_version(archive) == (result.tag, True)
    x = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    reloaded = keras.saving.load_model(bentoml.models.get(result.tag).path_of(MODEL_FILE), compile=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert import_version(archive) == (result.tag, False)  # already present: a no-op, reported
    assert main(["registry", "import", str(archive)]) == 0
    assert "already in the store" in capsys.readouterr().out
    with pytest.raises(UserError, match="already exists"):  # export never overwrites silently
        export_version(result.tag, "model.bentomodel")
    assert export_version(result.tag, "model.bentomodel", overwrite=True) == archive

    assert main(["registry", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tag"], r["promoted"]) for r in rows] == [(result.tag, True)]
    assert main(["registry", "show", result.tag.split(":")[1]]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["image_size"] == 64
    assert main(["registry", "promote", "glasses_classifier:nope"]) == 2

    # BentoML's own CLI works on the same store
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml_cli = str(Path(os.sys.executable).parent / "bentoml")
    listed = subprocess.run([bentoml_cli, "models", "list", MODEL_NAME, "-o", "json"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert result.tag in listed.stdout


def _renamed_source(base: Path) -> Path:
    """A tiny folders: source whose photos (ids) are not the module manifest's: same faces, other names."""
    from _fixtures import make_folders

    root = make_folders(base / "other-faces", n_glasses=24, n_no_glasses=40, persons=16, image_size=64)
    for path in sorted(root.rglob("*-0*.*")):
        path.rename(path.with_name(f"other-{path.name}"))
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [lines[0]] + [line.replace("/", "/other-", 1) for line in lines[1:]]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_promotion_rescores_both_on_the_same_photos_when_test_sets_differ(store, manifest, tmp_path):
    from training.compare import compare
    from training.prepare import prepare

    production = small_model(1)
    first = register(write_run_dir(tmp_path / "a", production, manifest, metrics={"roc_auc": 0.99}))
    source = _renamed_source(tmp_path)
    other = prepare(f"folders:{source}", size=64, work_dir=manifest.parents[2], progress=False).manifest_path
    assert manifest_hash(other) != manifest_hash(manifest)

    inverted = small_model(1)  # sigmoid(-z) = 1 - P: on any photos exactly one of the two is the better
    kernel, bias = inverted.layers[-1].get_weights()
    inverted.layers[-1].set_weights([-kernel, -bias])
    result = register(write_run_dir(tmp_path / "b", inverted, other, metrics={"roc_auc": 0.999}))
    rescored = compare([first.tag, result.tag], f"folders:{source}", work_dir=manifest.parents[2])
    base, new = (v["metrics"]["roc_auc"] for v in rescored["versions"])
    assert result.promoted == (new >= base) and f"re-scored on the same {rescored['photos']} test photos" in result.why
    assert registry.promoted_tag() == (result.tag if new >= base else first.tag)

    registry.promote(first.tag)  # the same weights evaluated on other photos, claiming less: still promoted
    same = register(write_run_dir(tmp_path / "c", production, other, metrics={"roc_auc": 0.51}))
    assert same.promoted and registry.promoted_tag() == same.tag, same.why
