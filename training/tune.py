"""Tune: Keras Tuner Hyperband over a search space, on a split manifest, driven by a profile.

    manifest + profile (glasses.config.TUNING_PROFILES)
      -> pre-flight: tensorboard importable (keras-tuner on TF fails every trial without it),
         class balance (warns when an accuracy objective meets imbalanced classes)
      -> keras_tuner.Hyperband(objective, max_epochs, factor, seed) in
         WORK_DIR/tuning/<profile>-<fingerprint[:12]>/ (overwrite off: an interrupted search resumes;
         `fresh=True` starts over), EarlyStopping(objective, patience) in every trial,
         wall time per trial recorded in <trial dir>/glasses_trial.json
      -> every trial's status checked: any failed trial (or none completed) is an error
      -> final model: the best trial's checkpoint (final_epochs 0) or the best hyperparameters
         retrained from scratch (final_epochs N, EarlyStopping, best weights restored)
      -> run directory WORK_DIR/runs/<timestamp>-<profile>-<id>/: model.keras, history.json, tune.json

Distributed search (Keras Tuner's own protocol, gRPC): start the same command on every machine with
KERASTUNER_TUNER_ID ("chief" on one, "tuner0", "tuner1", ... on the others), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT (the chief's address). The chief serves the oracle and, once the workers have
finished every trial, builds the final model; workers only run trials. All must see the same work
directory (the trials' checkpoints live there).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glasses.config import (
    IMBALANCE_WARNING_BELOW,
    RUNS_SUBDIR,
    TUNING_PROFILES,
    TUNING_SUBDIR,
    WORK_DIR,
)
from glasses.files import write_json_atomic
from training import acceleration
from training.cli import UserError
from training.fitting import class_weights, fit_verbosity, history_lists, resolve_augment

OBJECTIVES = ("val_accuracy", "val_auc", "val_balanced_accuracy")
THRESHOLD_METHODS = ("0.5", "val_balanced_accuracy")
TRIAL_FILE = "glasses_trial.json"  # wall time, tuner id, seconds per epoch, precision
TENSORBOARD_SUBDIR = "tensorboard"  # <project>/tensorboard/<trial id>/execution0: scalars + HParams
HISTORY_FILE = "glasses_history.json"
CONFIG_FILE = "glasses_tune_config.json"


@dataclass
class TuneResult:
    """What a search produced. Workers of a distributed search have no run_dir/model."""

    role: str  # "local" | "chief" | "worker"
    profile: str
    objective: str
    project_dir: Path
    run_dir: Path | None = None
    model_path: Path | None = None
    best_trial_id: str | None = None
    best_score: float | None = None
    best_hyperparameters: dict = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    search_wall_time_s: float = 0.0
    final_fit_wall_time_s: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)
    final_model: str = ""  # "refit" | "best trial checkpoint" (and why)
    refit_score: float | None = None  # best validation objective of the refit, when there was one
    final_fit_epoch_times_s: list[float] = field(default_factory=list)  # wall seconds per refit epoch


# --- profiles -----------------------------------------------------------------------------------


def get_profile(name: str, **overrides) -> dict:
    """A copy of a tuning profile from glasses.config.TUNING_PROFILES, validated, with overrides."""
    if name not in TUNING_PROFILES:
        raise UserError(f"unknown profile {name!r}; known: {', '.join(TUNING_PROFILES)}")
    profile = copy.deepcopy(TUNING_PROFILES[name])
    profile.update({k: v for k, v in overrides.items() if v is not None})
    profile["name"] = name
    if profile["objective"] not in OBJECTIVES:
        raise UserError(f"profile {name!r}: objective must be one of {', '.join(OBJECTIVES)}")
    if str(profile["threshold"]) not in THRESHOLD_METHODS:
        raise UserError(f"profile {name!r}: threshold must be one of {', '.join(THRESHOLD_METHODS)}")
    if profile.get("class_weight") not in (None, "balanced"):
        raise UserError(f"profile {name!r}: class_weight must be None or 'balanced'")
    return profile


def imbalance_warning(manifest_path: Path, objective: str) -> str | None:
    """A warning line when the minority class is rare and the objective is plain accuracy."""
    from training.data import class_counts

    counts = class_counts(manifest_path, "train")
    n = sum(counts.values())
    share = min(counts.values()) / n if n else 0.0
    if objective == "val_accuracy" and share < IMBALANCE_WARNING_BELOW:
        rare = min(counts, key=counts.get)
        return (
            f"warning: imbalanced classes ({rare} = {share:.1%} of train); objective val_accuracy rewards "
            f"predicting the majority class: prefer a profile with objective val_auc"
        )
    return None


# --- distribution -------------------------------------------------------------------------------


def distributed_role() -> str:
    """'local', or 'chief' / 'worker' of a Keras Tuner distributed search (from KERASTUNER_* env)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UserError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} is not")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# --- checks -------------------------------------------------------------------------------------


def check_tensorboard() -> None:
    """keras-tuner imports tensorboard's hparams plugin in every trial (TF backend); fail up front."""
    try:
        importlib.import_module("tensorboard.plugins.hparams.api")
    except ImportError as exc:
        raise UserError(
            f"tensorboard is not importable ({exc}); keras-tuner would fail every trial: "
            "pip install 'tensorboard==2.21.0'"
        ) from None


def trial_summaries(tuner) -> list[dict]:
    """One dict per trial: id, status, score, epochs, hyperparameters, wall time, error."""
    out = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        values = dict(trial.hyperparameters.values)
        record = {
            "trial_id": trial_id,
            "status": trial.status,
            "score": None if trial.score is None else float(trial.score),
            "best_step": trial.best_step,
            "epochs": values.get("tuner/epochs"),
            "initial_epoch": values.get("tuner/initial_epoch"),
            "parent": values.get("tuner/trial_id"),
            "hyperparameters": active_hyperparameters(values),
            "error": (trial.message or "").strip().splitlines()[-1] if trial.message else None,
        }
        timing = Path(tuner.get_trial_dir(trial_id)) / TRIAL_FILE
        if timing.exists():
            record.update(json.loads(timing.read_text()))
        out.append(record)
    return out


def active_hyperparameters(values: dict) -> dict:
    """Hyperparameter values without keras-tuner's bookkeeping and without layers beyond conv_layers."""
    n = values.get("conv_layers")
    out = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        head, _, index = name.rpartition("_")
        if n is not None and index.isdigit() and head in ("filters", "kernel_size", "pooling") and int(index) >= n:
            continue
        out[name] = value
    return out


def check_trials(trials: list[dict]) -> None:
    """Raise UserError if any trial failed or none completed (keras-tuner itself returns normally)."""
    failed = [t for t in trials if t["status"] in ("FAILED", "INVALID")]
    completed = [t for t in trials if t["status"] == "COMPLETED"]
    if failed:
        first = failed[0]
        raise UserError(
            f"{len(failed)} of {len(trials)} trials failed (trial {first['trial_id']}: {first['error']})"
        )
    if not completed:
        raise UserError(f"no trial completed ({len(trials)} trials: {sorted({t['status'] for t in trials})})")


# --- the tuner ----------------------------------------------------------------------------------


def _make_tuner_class():
    import keras_tuner as kt

    class GlassesHyperband(kt.Hyperband):
        """Hyperband that records each trial's wall time, epoch times and worker in its trial directory."""

        epoch_timer = None  # an acceleration.epoch_timer() passed in the search callbacks
        precision = "float32"

        def on_trial_begin(self, trial):
            self._trial_started = time.monotonic()
            super().on_trial_begin(trial)

        def run_trial(self, trial, *args, **kwargs):
            histories = super().run_trial(trial, *args, **kwargs)
            history = histories[-1]  # one execution per trial
            record = {"epochs": [int(e) for e in history.epoch],
                      "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}
            write_json_atomic(Path(self.get_trial_dir(trial.trial_id)) / HISTORY_FILE, record)
            return histories

        def on_trial_end(self, trial):
            wall = time.monotonic() - getattr(self, "_trial_started", time.monotonic())
            record = {"wall_time_s": round(wall, 3), "tuner_id": self.tuner_id, "precision": self.precision,
                      "epoch_times_s": list(self.epoch_timer.epoch_times) if self.epoch_timer else []}
            path = Path(self.get_trial_dir(trial.trial_id)) / TRIAL_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, record)
            super().on_trial_end(trial)
            status = "COMPLETED" if trial.status == "COMPLETED" else f"FAILED ({trial.status})"
            print(f"[tune] trial {trial.trial_id} {status} in {wall:.1f}s on {self.tuner_id}", flush=True)

    return GlassesHyperband


def _keras_tuner_saves_atomically() -> None:
    """keras-tuner 1.4.8 truncates and rewrites its state (oracle.json, trial.json, ...) in place, so a
    search killed mid-write kept an empty oracle.json and could never resume (a CI run hit it).
    Route its one writer, keras_tuner.src.utils.save_json, through write_json_atomic."""
    from keras_tuner.src import utils as kt_utils

    if kt_utils.save_json is not write_json_atomic:
        kt_utils.save_json = write_json_atomic


def _check_saved_state(project_dir: Path) -> None:
    """One line instead of a JSONDecodeError deep inside keras-tuner when a saved search state is damaged."""
    for path in sorted([*project_dir.glob("*.json"), *project_dir.glob("trial_*/*.json")]):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"the saved search state {path} is damaged (written by a search killed mid-write, "
                            "before this was atomic); rerun with --fresh to start over") from None


def _project_dir(work_dir: Path, profile: dict, fingerprint: str) -> Path:
    return Path(work_dir) / TUNING_SUBDIR / f"{profile['name']}-{fingerprint[:12]}"


def _check_or_write_config(project_dir: Path, config: dict, fresh: bool) -> None:
    """Refuse to resume a search that was started with a different profile or manifest."""
    path = project_dir / CONFIG_FILE
    if path.exists() and not fresh:
        old = json.loads(path.read_text())
        if old != config:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise UserError(
                f"the search in {project_dir} was started with different settings ({', '.join(changed)}); "
                "rerun with --fresh to start over"
            )
        return
    project_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config, indent=2, sort_keys=True)


def _stitched_history(tuner, trial_id: str) -> dict[str, list[float]]:
    """Per-epoch metrics of a Hyperband trial, prefixed by its parents' epochs (the rounds it continued).

    A child trial starts from its parent's best checkpoint at epoch `tuner/initial_epoch`, so the
    stitched curve is the path the final weights actually took (approximately, when a parent stopped
    early and its best epoch was not its last).
    """
    chain, tid = [], trial_id
    while tid:
        chain.append(tid)
        tid = tuner.oracle.trials[tid].hyperparameters.values.get("tuner/trial_id")
    by_step: dict[str, dict[int, float]] = {}
    for tid in reversed(chain):
        path = Path(tuner.get_trial_dir(tid)) / HISTORY_FILE
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        for name, values in record["history"].items():
            for epoch, value in zip(record["epochs"], values):
                by_step.setdefault(name, {})[epoch] = value
    by_step.pop("learning_rate", None)
    return {name: [steps[s] for s in sorted(steps)] for name, steps in by_step.items()}


def new_run_dir(work_dir: Path, profile_name: str) -> Path:
    """A fresh WORK_DIR/runs/<timestamp>-<profile>-<id>/ directory."""
    run_dir = Path(work_dir) / RUNS_SUBDIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    return run_dir


def tune(
    manifest_path: str | Path,
    profile: str | dict = "paper",
    *,
    fresh: bool = False,
    work_dir: str | Path = WORK_DIR,
    run_dir: str | Path | None = None,
    verbose: int | None = None,
) -> TuneResult:
    """Run (or resume) the Hyperband search for `profile` on a manifest and save the final model.

    Returns a TuneResult; local and chief runs write model.keras, history.json and tune.json into
    `run_dir` (default: a new WORK_DIR/runs/<timestamp>-<profile>-<id>/). Raises UserError when any
    trial failed, so a broken environment can never hand back an untrained "best" model. Runs under
    this machine's acceleration plan (training/acceleration.py); the saved model is float32.
    """
    from training.data import read_manifest

    read_manifest(manifest_path)  # a wrong path or file fails here, before TensorFlow loads
    plan = acceleration.make_plan()
    acceleration.set_threads(plan.intra_threads, plan.inter_threads)  # before TensorFlow's runtime starts
    with acceleration.accelerated(plan):
        return _tune(Path(manifest_path), profile, plan, fresh=fresh, work_dir=work_dir, run_dir=run_dir,
                     verbose=verbose)


def _tune(manifest_path: Path, profile: str | dict, plan: acceleration.Plan, *, fresh: bool, work_dir: str | Path,
          run_dir: str | Path | None, verbose: int | None) -> TuneResult:
    from training.data import make_dataset, manifest_hash, read_manifest

    manifest_path = Path(manifest_path)
    profile = get_profile(profile) if isinstance(profile, str) else dict(profile)
    manifest = read_manifest(manifest_path)
    size = int(manifest["size"])
    if size != profile["image_size"]:
        print(f"[tune] note: manifest images are {size}px; profile says {profile['image_size']}: using {size}")
    profile["image_size"] = size
    role = distributed_role()
    verbose = fit_verbosity() if verbose is None else verbose
    objective = profile["objective"]
    check_tensorboard()
    warning = imbalance_warning(manifest_path, objective)
    if warning:
        print(f"[tune] {warning}", flush=True)

    project_dir = _project_dir(work_dir, profile, manifest["fingerprint"])
    if fresh and role == "worker":
        print("[tune] --fresh ignored on a worker (only the chief or a local search may start over)")
        fresh = False
    search_keys = ("search_space", "objective", "max_epochs", "factor", "hyperband_iterations", "seed",
                   "patience", "class_weight", "augment", "image_size", "batch_size")
    config = {k: profile.get(k) for k in search_keys} | {"manifest_hash": manifest_hash(manifest_path)}
    if fresh and project_dir.exists():
        import shutil

        shutil.rmtree(project_dir)
    _check_or_write_config(project_dir, config, fresh=False)
    _check_saved_state(project_dir)
    _keras_tuner_saves_atomically()

    import keras

    from training import models

    keras.utils.set_random_seed(profile["seed"])
    augment = resolve_augment(profile.get("augment"))
    train_ds = make_dataset(manifest_path, "train", batch_size=profile["batch_size"], seed=profile["seed"],
                            augment=augment)
    val_ds = make_dataset(manifest_path, "val", batch_size=profile["batch_size"], shuffle=False)
    weights = class_weights(manifest_path, profile.get("class_weight"))

    import keras_tuner as kt

    tuner = _make_tuner_class()(
        hypermodel=models.hypermodel_for(profile["search_space"], size),
        objective=kt.Objective(objective, direction="max"),
        max_epochs=profile["max_epochs"],
        factor=profile["factor"],
        hyperband_iterations=profile["hyperband_iterations"],
        seed=profile["seed"],
        directory=str(project_dir.parent),
        project_name=project_dir.name,
        overwrite=False,
    )
    resumed = Path(tuner._get_tuner_fname()).exists() and bool(tuner.oracle.trials)
    print(f"[tune] {role} search, profile {profile['name']}, objective {objective}, project {project_dir}",
          flush=True)
    print(f"[tune] {acceleration.describe(plan)}; TensorBoard: tensorboard --logdir {project_dir / TENSORBOARD_SUBDIR}",
          flush=True)
    early = keras.callbacks.EarlyStopping(monitor=objective, mode="max", patience=profile["patience"])
    timer = tuner.epoch_timer = acceleration.epoch_timer()
    tuner.precision = plan.precision
    board = keras.callbacks.TensorBoard(log_dir=str(project_dir / TENSORBOARD_SUBDIR), write_graph=False)
    started = time.monotonic()
    try:
        tuner.search(train_ds, validation_data=val_ds, callbacks=[early, timer, board], class_weight=weights,
                     verbose=verbose)
    except RuntimeError as exc:  # keras-tuner stops after max_consecutive_failed_trials failures
        if "consecutive failures" in str(exc):
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise UserError(f"trials failed, search stopped: {last}") from None
        raise
    search_wall = time.monotonic() - started
    result = TuneResult(role=role, profile=profile["name"], objective=objective, project_dir=project_dir,
                        search_wall_time_s=round(search_wall, 3))
    if role == "worker":
        print(f"[tune] worker {os.environ['KERASTUNER_TUNER_ID']} done in {search_wall:.1f}s; the chief builds "
              "the final model", flush=True)
        return result

    result.trials = trial_summaries(tuner)
    check_trials(result.trials)
    best = tuner.oracle.get_best_trials(1)[0]
    result.best_trial_id = best.trial_id
    result.best_score = float(best.score)
    result.best_hyperparameters = active_hyperparameters(best.hyperparameters.values)
    print(f"[tune] best trial {best.trial_id}: {objective} = {best.score:.4f} {result.best_hyperparameters}",
          flush=True)

    fit_started = time.monotonic()
    if profile.get("final_epochs"):
        keras.utils.set_random_seed(profile["seed"])
        model = models.build_from_hyperparameters(result.best_hyperparameters, profile["search_space"], size)
        restore = keras.callbacks.EarlyStopping(monitor=objective, mode="max", patience=profile["patience"],
                                                restore_best_weights=True)
        print(f"[tune] retraining the best hyperparameters for up to {profile['final_epochs']} epochs", flush=True)
        history = model.fit(train_ds, validation_data=val_ds, epochs=profile["final_epochs"],
                            callbacks=[restore, timer], class_weight=weights, verbose=verbose)
        result.final_fit_epoch_times_s = list(timer.epoch_times)
        result.history = history_lists(history)
        result.refit_score = max(result.history.get(objective) or [float("-inf")])
        result.final_model = "refit"
    # A refit from scratch can end worse on validation than the checkpoint the search already holds (on
    # imbalanced data an accuracy objective can stop it at an all-"no glasses" epoch): keep the better one,
    # judged on the same validation objective (the test split stays unseen).
    if result.refit_score is None or result.refit_score < result.best_score:
        if result.refit_score is not None:
            print(f"[tune] the refit reached {objective} {result.refit_score:.4f} < the best trial's "
                  f"{result.best_score:.4f}: keeping the best trial's checkpoint", flush=True)
        model = tuner.get_best_models(1)[0]
        result.history = _stitched_history(tuner, best.trial_id)
        result.final_model = "best trial checkpoint" + (
            f" (refit reached {objective} {result.refit_score:.4f} < {result.best_score:.4f})"
            if result.refit_score is not None else "")
    result.final_fit_wall_time_s = round(time.monotonic() - fit_started, 3)

    run_dir = Path(run_dir) if run_dir else new_run_dir(work_dir, profile["name"])
    run_dir.mkdir(parents=True, exist_ok=True)
    result.run_dir = run_dir
    result.model_path = run_dir / "model.keras"
    acceleration.float32_copy(model).save(result.model_path)  # trained in bf16 or not, saved float32
    (run_dir / "history.json").write_text(json.dumps(result.history, indent=2))
    summary = asdict(result) | {
        "profile_config": profile,
        "manifest_path": str(manifest_path.resolve()),
        "manifest_hash": config["manifest_hash"],
        "data_fingerprint": manifest["fingerprint"],
        "data_source": manifest.get("source"),
        "data_sources": manifest.get("sources") or [{"source": manifest.get("source"),
                                                     "fingerprint": manifest["fingerprint"]}],
        "image_size": size,
        "params": int(model.count_params()),
        # trials may have run in an earlier (resumed) invocation or in parallel on workers:
        "trials_time_total_s": round(sum(t.get("wall_time_s", 0.0) for t in result.trials), 3),
        "training_wall_time_s": round(search_wall + result.final_fit_wall_time_s, 3),
        "resumed": resumed,
        "acceleration": plan.as_dict(),
    }
    (run_dir / "tune.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[tune] search {search_wall:.1f}s + final model {result.final_fit_wall_time_s:.1f}s; "
          f"{sum(t['status'] == 'COMPLETED' for t in result.trials)} trials; model -> {result.model_path}", flush=True)
    return result


def read_tune_summary(run_dir: str | Path) -> dict:
    """tune.json of a run directory."""
    path = Path(run_dir) / "tune.json"
    if not path.exists():
        raise UserError(f"{path} does not exist; is {run_dir} a run directory from `glasses-train tune`?")
    return json.loads(path.read_text())


# --- CLI ----------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """`glasses-train tune --manifest M [--profile P] [--fresh] [--run-dir D]`."""
    p = subparsers.add_parser("tune", help="Hyperband search on a split manifest (resumable, distributable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path, help="split manifest from `glasses-train prepare`")
    p.add_argument("--profile", default="paper", choices=sorted(TUNING_PROFILES))
    p.add_argument("--fresh", action="store_true", help="delete the previous search for this profile and data")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--run-dir", type=Path, default=None, help="where to write the final model (default: new)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    result = tune(args.manifest, args.profile, fresh=args.fresh, work_dir=args.work_dir, run_dir=args.run_dir)
    if result.run_dir:
        print(f"run directory: {result.run_dir}")
    return 0
