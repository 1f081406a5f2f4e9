"""Hyperband tuning: smoke search, resume after a kill, failing trials, tensorboard, distributed search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from training import fitting, models, tune as tune_mod
from training.cli import UserError
from training.rundir import RunDir
from training.trials import HISTORY_FILE, TRIAL_FILE
from training.tune import get_profile, tune

from _training import PYTHON, REPO, cli_env, tiny_manifest
from loadtests.server import free_port


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.getbasetemp())


def trial_files(project: Path, name: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(project.glob(f"trial_*/{name}"))}


def hparams_by_trial(logdir: Path) -> dict[str, dict]:
    """{trial id: hyperparameters} from the HParams session-start summaries in TensorBoard event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata as hp_metadata

    found = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != hp_metadata.PLUGIN_NAME:
                    continue
                data = hp_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content) \
                    if value.tag == hp_metadata.SESSION_START_INFO_TAG else None
                if data is not None:
                    values = {k: v.string_value or v.number_value or v.bool_value for k, v in data.hparams.items()}
                    found[data.group_name or path.relative_to(logdir).parts[0]] = values
    return found


def test_interrupted_smoke_search_resumes_where_it_stopped(manifest, tmp_path):
    """Kill a smoke search after its first trial; the same call resumes, runs only the missing trial
    (also when the kill left that trial's file on disk unrecorded by the oracle)."""
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [PYTHON, "-m", "training", "tune", "--manifest", str(manifest), "--profile", "smoke", "--work-dir", str(work)],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            seen.append(line)
            if "[tune] trial 0000 COMPLETED" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)  # a crash, not a polite stop
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert any("[tune] trial 0000 COMPLETED" in line for line in seen), "".join(seen[-20:])
    (project,) = (work / "tuning").iterdir()
    first = trial_files(project, TRIAL_FILE)
    assert list(first) == ["trial_0000"]
    # The kill can land after keras-tuner wrote trial 0001's trial.json but before oracle.json recorded
    # it: leave that state every time, so the resume is tested against the worst case.
    if not (project / "trial_0001" / "trial.json").exists():
        orphan = json.loads((project / "trial_0000" / "trial.json").read_text())
        orphan.update(trial_id="0001", status="RUNNING", metrics={"metrics": {}}, score=None, best_step=0)
        (project / "trial_0001").mkdir(exist_ok=True)
        (project / "trial_0001" / "trial.json").write_text(json.dumps(orphan))

    result = tune(manifest, "smoke", work_dir=work, verbose=0)

    assert [t["status"] for t in result.trials] == ["COMPLETED", "COMPLETED"]
    after = trial_files(project, TRIAL_FILE)
    assert after["trial_0000"] == first["trial_0000"]  # not run again
    assert set(after) == {"trial_0000", "trial_0001"}
    assert all(t["wall_time_s"] > 0 for t in result.trials)
    # per-epoch timings and the precision in every trial's record, the plan in tune.json
    assert all(len(t["epoch_times_s"]) == len(trial_files(project, HISTORY_FILE)[f"trial_{t['trial_id']}"]["epochs"])
               and min(t["epoch_times_s"]) > 0 for t in result.trials)
    assert {t["precision"] for t in result.trials} <= {"float32", "mixed_bfloat16"}
    assert result.best_trial_id in ("0000", "0001")
    assert result.best_score == max(t["score"] for t in result.trials)
    summary = json.loads(RunDir(result.run_dir).tune_summary.read_text())
    assert summary["resumed"] is True
    assert summary["acceleration"]["precision"] == result.trials[-1]["precision"]
    assert summary["acceleration"]["cpu_model"]
    # TensorBoard: one run per trial with its hyperparameters for the HParams dashboard
    hparams = hparams_by_trial(project / tune_mod.TENSORBOARD_SUBDIR)
    assert set(hparams) == {"0000", "0001"}
    for trial in result.trials:
        logged = hparams[trial["trial_id"]]  # the space as known when the trial started
        assert {"conv_layers", "filters_0", "units", "learning_rate"} <= set(logged)
        assert all(trial["hyperparameters"][k] == v for k, v in logged.items() if k in trial["hyperparameters"])
    assert summary["profile_config"]["max_epochs"] == 2 and summary["objective"] == "val_accuracy"
    hist = json.loads(RunDir(result.run_dir).history.read_text())
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "val_auc"} <= set(hist)
    assert 1 <= len(hist["loss"]) <= 2
    model = keras.saving.load_model(RunDir(result.run_dir).model, compile=False)
    assert model.input_shape == (None, 64, 64, 3)

    # A finished search resumes into "nothing to do" and the same best trial.
    again = tune(manifest, "smoke", work_dir=work, verbose=0)
    assert again.best_trial_id == result.best_trial_id
    assert trial_files(project, TRIAL_FILE) == after

    # final_epochs N (the paper profile): the best hyperparameters are retrained from scratch, and the
    # refit is kept unless it ends below the best trial on the validation objective.
    retrained = tune(manifest, get_profile("smoke", final_epochs=1), work_dir=work, verbose=0)
    assert retrained.best_hyperparameters == result.best_hyperparameters
    assert retrained.refit_score is not None and retrained.final_fit_wall_time_s > 0
    if retrained.refit_score >= retrained.best_score:
        assert retrained.final_model == "refit" and len(retrained.history["loss"]) == 1
    else:
        assert retrained.final_model.startswith("best trial checkpoint (refit reached val_accuracy")
        assert retrained.history == result.history  # the best trial's own curves
    assert keras.saving.load_model(retrained.model_path, compile=False).count_params() == model.count_params()
    assert result.final_model == "best trial checkpoint" and result.refit_score is None  # final_epochs 0

    # Changing the search settings without --fresh is refused (one line, names the setting).
    with pytest.raises(UserError, match="patience.*--fresh"):
        tune(manifest, get_profile("smoke", patience=5), work_dir=work, verbose=0)


def test_a_refit_worse_than_the_best_trial_keeps_the_trials_checkpoint(manifest, tmp_path, monkeypatch):
    """The final refit is judged on the validation objective against the search's best trial."""
    from training.data import load_split

    work = tmp_path / "work"
    searched = tune(manifest, "smoke", work_dir=work, verbose=0)
    real = models.build_from_hyperparameters

    def always_glasses(*args, **kwargs):  # a refit that cannot learn: frozen, every photo "glasses"
        model = real(*args, **kwargs)
        kernel, bias = model.layers[-1].get_weights()
        model.layers[-1].set_weights([kernel * 0.0, bias * 0.0 + 20.0])
        for layer in model.layers:
            layer.trainable = False
        return model

    monkeypatch.setattr(models, "build_from_hyperparameters", always_glasses)
    result = tune(manifest, get_profile("smoke", final_epochs=1), work_dir=work, verbose=0)
    assert result.refit_score < result.best_score
    assert result.final_model.startswith("best trial checkpoint (refit reached val_accuracy")
    x, _ = load_split(manifest, "test")
    x = x.astype("float32") / 255.0
    kept = keras.saving.load_model(result.model_path, compile=False).predict(x, verbose=0)
    best = keras.saving.load_model(searched.model_path, compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(kept, best, rtol=1e-6, atol=1e-7)
    assert json.loads(RunDir(result.run_dir).tune_summary.read_text())["final_model"] == result.final_model


def test_a_damaged_saved_search_is_one_line_and_state_is_written_atomically(manifest, tmp_path):
    """An oracle.json emptied by a kill mid-write (keras-tuner writes in place) is refused in one line;
    from then on keras-tuner's state writer is the atomic one."""
    from keras_tuner.src import utils as kt_utils

    from training.data import read_manifest

    work = tmp_path / "work"
    project = tune_mod._project_dir(work, get_profile("smoke"), read_manifest(manifest)["fingerprint"])
    project.mkdir(parents=True)
    (project / "oracle.json").write_text("")
    with pytest.raises(UserError, match=r"oracle.json is damaged .* --fresh"):
        tune(manifest, "smoke", work_dir=work, verbose=0)
    result = tune(manifest, "smoke", work_dir=work, fresh=True, verbose=0)
    assert [t["status"] for t in result.trials] == ["COMPLETED", "COMPLETED"]
    assert kt_utils.save_json is tune_mod.write_json_atomic
    assert not list(project.rglob("*.tmp"))  # every temp file was renamed into place
    json.loads((project / "oracle.json").read_text())


def test_failing_trials_fail_loudly(manifest, tmp_path, monkeypatch):
    """A search space whose models cannot train: keras-tuner returns normally, tune() must not."""
    def broken(hp, size, train_steps=None):  # wrong input size: every fit raises
        return models.build_paper_hypermodel(hp, size=size + 8)

    monkeypatch.setitem(models.SEARCH_SPACES, "broken", broken)
    profile = get_profile("smoke", search_space="broken")
    with pytest.raises(UserError, match=r"2 of 2 trials failed \(trial 0000: .*"):
        tune(manifest, profile, work_dir=tmp_path, verbose=0)


def test_missing_tensorboard_is_caught_before_and_after_search(manifest, tmp_path, monkeypatch):
    """Without tensorboard every trial fails inside keras-tuner: refused up front, and caught after."""
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams", None)
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams.api", None)
    with pytest.raises(UserError, match="tensorboard is not importable"):
        tune(manifest, "smoke", work_dir=tmp_path / "a", verbose=0)
    # Even with the pre-flight check skipped, the failed trials are detected after the search.
    monkeypatch.setattr(tune_mod, "check_tensorboard", lambda: None)
    with pytest.raises(UserError, match="trials failed.*tensorboard|trials failed.*import"):
        tune(manifest, "smoke", work_dir=tmp_path / "b", verbose=0)


def test_distributed_smoke_search_chief_and_one_worker(manifest, tmp_path):
    """Keras Tuner's chief/worker protocol over gRPC on 127.0.0.1: the worker runs the trials."""
    work = tmp_path / "work"
    port = str(free_port())
    args = ["tune", "--manifest", str(manifest), "--profile", "smoke", "--work-dir", str(work)]
    common = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    chief = subprocess.Popen([PYTHON, "-m", "training", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=cli_env(KERASTUNER_TUNER_ID="chief", **common))
    worker = subprocess.Popen([PYTHON, "-m", "training", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=cli_env(KERASTUNER_TUNER_ID="tuner0", **common))
    try:
        worker_out, _ = worker.communicate(timeout=300)
        chief_out, _ = chief.communicate(timeout=120)
    finally:
        for p in (chief, worker):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert worker.returncode == 0, worker_out[-3000:]
    assert chief.returncode == 0, chief_out[-3000:]
    assert "worker tuner0 done" in worker_out
    assert "[tune] chief search" in chief_out and "run directory:" in chief_out
    (project,) = (work / "tuning").iterdir()
    timings = trial_files(project, TRIAL_FILE)
    assert len(timings) == 2 and {t["tuner_id"] for t in timings.values()} == {"tuner0"}
    assert len(trial_files(project, HISTORY_FILE)) == 2
    run_dir = Path(chief_out.split("run directory:")[1].split()[0])
    summary = json.loads(RunDir(run_dir).tune_summary.read_text())
    assert summary["role"] == "chief"
    assert [t["status"] for t in summary["trials"]] == ["COMPLETED", "COMPLETED"]
    assert RunDir(run_dir).model.exists()


def test_class_weight_and_augment_hooks(manifest, monkeypatch):
    """Profile hooks: 'balanced' class weights from the train split, augment resolved in training/augment.py."""
    import types

    import tensorflow as tf

    from training.data import class_counts
    from training.train import fit_ladder_model

    weights = fitting.class_weights(manifest, "balanced")
    counts = class_counts(manifest, "train")
    n = sum(counts.values())
    assert weights == {0: n / (2 * counts["no_glasses"]), 1: n / (2 * counts["glasses"])}
    assert fitting.class_weights(manifest, None) is None

    calls = []

    def flip(image, label):
        calls.append(1)  # traced once by tf.data
        return tf.image.flip_left_right(image), label

    monkeypatch.setitem(sys.modules, "training.augment", types.SimpleNamespace(flip=flip))
    assert fitting.resolve_augment("flip") is flip
    with pytest.raises(UserError, match="not found in training/augment.py"):
        fitting.resolve_augment("nope")
    model, history, seconds = fit_ladder_model("perceptron", manifest, epochs=1, batch_size=16,
                                               class_weight="balanced", augment="flip", verbose=0)
    assert calls and len(history["loss"]) == 1 and model.count_params() == 64 * 64 * 3 + 1


def test_imbalance_warning_recommends_val_auc(manifest, monkeypatch):
    monkeypatch.setattr("training.data.class_counts", lambda m, s: {"no_glasses": 95, "glasses": 5})
    line = fitting.imbalance_warning(manifest, "val_accuracy")
    assert line.startswith("warning: imbalanced classes (glasses = 5.0% of train)") and "val_auc" in line
    assert fitting.imbalance_warning(manifest, "val_auc") is None


def test_a_search_space_of_one_point_is_fitted_once_without_a_trial(manifest, tmp_path):
    """The robust space has every value Fixed: no keras-tuner trial runs, the point is fitted once."""
    profile = get_profile("robust", final_epochs=1, augment=None, image_size=64)
    result = tune(manifest, profile, work_dir=tmp_path, verbose=0)
    assert result.trials == [] and result.search_wall_time_s == 0.0 and result.best_trial_id is None
    assert result.final_model == "refit" and len(result.history["loss"]) == 1
    assert result.best_hyperparameters == models.fixed_point("robust", 64, result.best_hyperparameters["decay_steps"])
    assert not list(result.project_dir.glob("trial_*"))
    model = keras.saving.load_model(result.model_path, compile=False)
    assert model.name == "robust" and model.input_shape == (None, 64, 64, 3)
    summary = json.loads((result.run_dir / "tune.json").read_text())
    assert summary["trials"] == [] and summary["training_wall_time_s"] == result.final_fit_wall_time_s > 0
