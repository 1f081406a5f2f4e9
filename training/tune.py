"""Tune: Keras Tuner Hyperband over a search space, on a split manifest, driven by a profile.

    manifest + profile (glasses.config.TUNING_PROFILES)
      -> pre-flight: tensorboard importable (keras-tuner on TF fails every trial without it),
         class balance (warns when an accuracy objective meets imbalanced classes)
      -> keras_tuner.Hyperband(objective, max_epochs, factor, seed) in
         WORK_DIR/tuning/<profile>-<fingerprint[:12]>/ (overwrite off: an interrupted search resumes;
         `fresh=True` starts over), EarlyStopping(objective, patience) in every trial,
         wall time per trial recorded in its trial directory (training/trials.py)
      -> every trial's status checked: any failed trial (or none completed) is an error
      -> final model: the best trial's checkpoint (final_epochs 0) or the best hyperparameters
         retrained from scratch (final_epochs N, EarlyStopping, best weights restored)
      -> run directory WORK_DIR/runs/<timestamp>-<profile>-<id>/ (training/rundir.py): the model,
         its history and tune.json

Distributed search (Keras Tuner's own protocol, gRPC): start the same command on every machine with
KERASTUNER_TUNER_ID ("chief" on one, "tuner0", "tuner1", ... on the others), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT (the chief's address). The chief serves the oracle and, once the workers have
finished every trial, builds the final model; workers only run trials. All must see the same work
directory (the trials' checkpoints live there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glasses.config import TUNING_PROFILES, TUNING_SUBDIR, WORK_DIR, TuningProfile
from glasses.files import write_json_atomic
from training import acceleration, keras_tuner_compat
from training.cli import UserError
from training.fitting import class_weights, fit_verbosity, history_lists, imbalance_warning, resolve_augment
from training.rundir import RunDir
from training.trials import active_hyperparameters, check_trials, make_tuner_class, stitched_history, trial_summaries

CONFIG_FILE = "glasses_tune_config.json"
TENSORBOARD_SUBDIR = "tensorboard"  # <project>/tensorboard/<trial id>/execution0: scalars + HParams
# The settings that define a search: resuming with any of them changed is refused.
SEARCH_KEYS = ("search_space", "objective", "max_epochs", "factor", "hyperband_iterations", "seed",
               "patience", "class_weight", "augment", "image_size", "batch_size")


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


# --- profiles, roles, checks -------------------------------------------------------------------
def get_profile(name: str, **overrides: Any) -> TuningProfile:
    """A tuning profile from glasses.config.TUNING_PROFILES with overrides (None ignored), validated."""
    if name not in TUNING_PROFILES:
        raise UserError(f"unknown profile {name!r}; known: {', '.join(TUNING_PROFILES)}")
    try:
        return TUNING_PROFILES[name].replace(**overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def distributed_role() -> str:
    """'local', or 'chief' / 'worker' of a Keras Tuner distributed search (from KERASTUNER_* env)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UserError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} is not")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def check_tensorboard() -> None:
    """keras-tuner imports tensorboard's hparams plugin in every trial (TF backend); fail up front."""
    try:
        importlib.import_module("tensorboard.plugins.hparams.api")
    except ImportError as exc:
        raise UserError(
            f"tensorboard is not importable ({exc}); keras-tuner would fail every trial: "
            "pip install 'tensorboard==2.21.0'"
        ) from None


def _check_saved_state(project_dir: Path) -> None:
    """One line instead of a JSONDecodeError deep inside keras-tuner when a saved search state is damaged."""
    for path in sorted([*project_dir.glob("*.json"), *project_dir.glob("trial_*/*.json")]):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"the saved search state {path} is damaged (written by a search killed mid-write, "
                            "before this was atomic); rerun with --fresh to start over") from None


def _project_dir(work_dir: str | Path, profile: TuningProfile, fingerprint: str) -> Path:
    return Path(work_dir) / TUNING_SUBDIR / f"{profile.name}-{fingerprint[:12]}"


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


# --- the search ---------------------------------------------------------------------------------
def tune(
    manifest_path: str | Path,
    profile: str | TuningProfile = "paper",
    *,
    fresh: bool = False,
    work_dir: str | Path = WORK_DIR,
    run_dir: str | Path | None = None,
    verbose: int | None = None,
) -> TuneResult:
    """Run (or resume) the Hyperband search for `profile` on a manifest and save the final model.

    Returns a TuneResult; local and chief runs write the model, its history and tune.json into
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


def _tune(manifest_path: Path, profile: str | TuningProfile, plan: acceleration.Plan, *, fresh: bool,
          work_dir: str | Path, run_dir: str | Path | None, verbose: int | None) -> TuneResult:
    """The search and the final model, under an acceleration plan already in force."""
    from training.data import make_dataset

    manifest_path, manifest, profile = _inputs(manifest_path, profile)
    role = distributed_role()
    verbose = fit_verbosity() if verbose is None else verbose
    check_tensorboard()
    warning = imbalance_warning(manifest_path, profile.objective)
    if warning:
        print(f"[tune] {warning}", flush=True)
    if fresh and role == "worker":
        print("[tune] --fresh ignored on a worker (only the chief or a local search may start over)")
        fresh = False
    project_dir, config = _open_project(work_dir, profile, manifest_path, manifest, fresh=fresh)

    import keras

    from training.models import fixed_point

    # before the seed is set: finding out builds a throwaway model, which draws from the global RNG
    point = fixed_point(profile.search_space, profile.image_size, _train_steps(manifest, profile))
    keras.utils.set_random_seed(profile.seed)
    data = _FitData(
        train=make_dataset(manifest_path, "train", batch_size=profile.batch_size, seed=profile.seed,
                           augment=resolve_augment(profile.augment)),
        val=make_dataset(manifest_path, "val", batch_size=profile.batch_size, shuffle=False),
        class_weight=class_weights(manifest_path, profile.class_weight),
        verbose=verbose,
        timer=acceleration.epoch_timer(),
    )
    if point is not None and role == "local" and profile.final_epochs:
        print(f"[tune] every hyperparameter of search space {profile.search_space!r} is Fixed: no search, "
              "one fit of that point", flush=True)
        result = TuneResult(role=role, profile=profile.name, objective=profile.objective, project_dir=project_dir,
                            best_hyperparameters=point)
        fit_started = time.monotonic()
        model = _refit(profile, data, result, int(manifest["size"]))
        result.final_fit_wall_time_s, resumed = round(time.monotonic() - fit_started, 3), False
    else:
        tuner, resumed, search_wall = _search(profile, project_dir, data, role, _train_steps(manifest, profile), plan)
        result = TuneResult(role=role, profile=profile.name, objective=profile.objective, project_dir=project_dir,
                            search_wall_time_s=round(search_wall, 3))
        if role != "worker":
            model = _final_model(tuner, profile, data, result, int(manifest["size"]))
    if role == "worker":
        print(f"[tune] worker {os.environ['KERASTUNER_TUNER_ID']} done in {result.search_wall_time_s:.1f}s; the chief builds "
              "the final model", flush=True)
        return result
    run = RunDir(run_dir) if run_dir else RunDir.new(work_dir, profile.name)
    _write_run(run, model, result, profile, manifest_path, manifest, config["manifest_hash"], resumed, plan)
    print(f"[tune] search {result.search_wall_time_s:.1f}s + final model {result.final_fit_wall_time_s:.1f}s; "
          f"{sum(t['status'] == 'COMPLETED' for t in result.trials)} trials; model -> {result.model_path}", flush=True)
    return result


@dataclass
class _FitData:
    """What every fit of a search gets: datasets, class weights, progress display, the epoch timer."""

    train: Any
    val: Any
    class_weight: dict[int, float] | None
    verbose: int
    timer: Any  # acceleration.epoch_timer(): wall seconds per epoch


def _inputs(manifest_path: str | Path, profile: str | TuningProfile) -> tuple[Path, dict, TuningProfile]:
    """The manifest (checked) and the profile, at the manifest's image size."""
    from training.data import read_manifest

    manifest_path = Path(manifest_path)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    manifest = read_manifest(manifest_path)  # a wrong path or file fails here, before TensorFlow loads
    size = int(manifest["size"])
    if size != profile.image_size:
        print(f"[tune] note: manifest images are {size}px; profile says {profile.image_size}: using {size}")
    return manifest_path, manifest, profile.replace(image_size=size)


def _train_steps(manifest: dict, profile: TuningProfile) -> int:
    """Optimizer steps of the longest fit the profile asks for (what a learning-rate schedule spans)."""
    n_train = sum(manifest["counts"]["train"].values())
    return (profile.final_epochs or profile.max_epochs) * math.ceil(n_train / profile.batch_size)


def _open_project(work_dir: str | Path, profile: TuningProfile, manifest_path: Path, manifest: dict, *,
                  fresh: bool) -> tuple[Path, dict]:
    """The search's project directory (emptied when fresh), refused if it holds another search."""
    from training.data import manifest_hash

    project_dir = _project_dir(work_dir, profile, manifest["fingerprint"])
    config = {k: getattr(profile, k) for k in SEARCH_KEYS} | {"manifest_hash": manifest_hash(manifest_path)}
    if fresh and project_dir.exists():
        shutil.rmtree(project_dir)
    _check_or_write_config(project_dir, config, fresh=False)
    _check_saved_state(project_dir)
    keras_tuner_compat.save_state_atomically()
    return project_dir, config


def _search(profile: TuningProfile, project_dir: Path, data: _FitData, role: str, train_steps: int,
            plan: acceleration.Plan) -> tuple[Any, bool, float]:
    """Build the tuner over the project and run (or resume) the search: (tuner, resumed, seconds)."""
    import keras
    import keras_tuner as kt

    from training import models

    tuner = make_tuner_class()(
        hypermodel=models.hypermodel_for(profile.search_space, profile.image_size, train_steps=train_steps),
        objective=kt.Objective(profile.objective, direction="max"),
        max_epochs=profile.max_epochs,
        factor=profile.factor,
        hyperband_iterations=profile.hyperband_iterations,
        seed=profile.seed,
        directory=str(project_dir.parent),
        project_name=project_dir.name,
        overwrite=False,
    )
    for tid in keras_tuner_compat.drop_unrecorded_trials(tuner):
        print(f"[tune] trial {tid} was cut off before the search recorded it: it runs again", flush=True)
    resumed = keras_tuner_compat.has_saved_state(tuner)
    print(f"[tune] {role} search, profile {profile.name}, objective {profile.objective}, project {project_dir}",
          flush=True)
    print(f"[tune] {acceleration.describe(plan)}; TensorBoard: tensorboard --logdir {project_dir / TENSORBOARD_SUBDIR}",
          flush=True)
    early = keras.callbacks.EarlyStopping(monitor=profile.objective, mode="max", patience=profile.patience)
    tuner.epoch_timer, tuner.precision = data.timer, plan.precision
    board = keras.callbacks.TensorBoard(log_dir=str(project_dir / TENSORBOARD_SUBDIR), write_graph=False)
    started = time.monotonic()
    try:
        tuner.search(data.train, validation_data=data.val, callbacks=[early, data.timer, board],
                     class_weight=data.class_weight, verbose=data.verbose)
    except RuntimeError as exc:  # keras-tuner stops after max_consecutive_failed_trials failures
        if "consecutive failures" in str(exc):
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise UserError(f"trials failed, search stopped: {last}") from None
        raise
    return tuner, resumed, time.monotonic() - started


def _final_model(tuner: Any, profile: TuningProfile, data: _FitData, result: TuneResult, size: int) -> Any:
    """The best trial's checkpoint, or its hyperparameters refitted when that scores better on validation."""
    result.trials = trial_summaries(tuner)
    check_trials(result.trials)
    best = tuner.oracle.get_best_trials(1)[0]
    result.best_trial_id = best.trial_id
    result.best_score = float(best.score)
    result.best_hyperparameters = active_hyperparameters(best.hyperparameters.values)
    objective = profile.objective
    print(f"[tune] best trial {best.trial_id}: {objective} = {best.score:.4f} {result.best_hyperparameters}",
          flush=True)
    fit_started = time.monotonic()
    model = _refit(profile, data, result, size) if profile.final_epochs else None
    # A refit from scratch can end worse on validation than the checkpoint the search already holds (on
    # imbalanced data an accuracy objective can stop it at an all-"no glasses" epoch): keep the better one,
    # judged on the same validation objective (the test split stays unseen).
    if result.refit_score is None or result.refit_score < result.best_score:
        if result.refit_score is not None:
            print(f"[tune] the refit reached {objective} {result.refit_score:.4f} < the best trial's "
                  f"{result.best_score:.4f}: keeping the best trial's checkpoint", flush=True)
        model = tuner.get_best_models(1)[0]
        result.history = stitched_history(tuner, best.trial_id)
        result.final_model = "best trial checkpoint" + (
            f" (refit reached {objective} {result.refit_score:.4f} < {result.best_score:.4f})"
            if result.refit_score is not None else "")
    result.final_fit_wall_time_s = round(time.monotonic() - fit_started, 3)
    return model


def _refit(profile: TuningProfile, data: _FitData, result: TuneResult, size: int) -> Any:
    """The best hyperparameters retrained from scratch for up to final_epochs (best weights restored)."""
    import keras

    from training import models

    keras.utils.set_random_seed(profile.seed)
    model = models.build_from_hyperparameters(result.best_hyperparameters, profile.search_space, size)
    restore = keras.callbacks.EarlyStopping(monitor=profile.objective, mode="max", patience=profile.patience,
                                            restore_best_weights=True)
    print(f"[tune] retraining the best hyperparameters for up to {profile.final_epochs} epochs", flush=True)
    history = model.fit(data.train, validation_data=data.val, epochs=profile.final_epochs,
                        callbacks=[restore, data.timer], class_weight=data.class_weight, verbose=data.verbose)
    result.final_fit_epoch_times_s = list(data.timer.epoch_times)
    result.history = history_lists(history)
    result.refit_score = max(result.history.get(profile.objective) or [float("-inf")])
    result.final_model = "refit"
    return model


def _write_run(run: RunDir, model: Any, result: TuneResult, profile: TuningProfile, manifest_path: Path,
               manifest: dict, manifest_hash: str, resumed: bool, plan: acceleration.Plan) -> None:
    """The final model, its history and tune.json (what the search did, on which data) into the run dir."""
    run.path.mkdir(parents=True, exist_ok=True)
    result.run_dir = run.path
    result.model_path = run.model
    acceleration.float32_copy(model).save(run.model)  # trained in bf16 or not, saved float32
    run.write_json(run.history, result.history)
    summary = asdict(result) | {
        "profile_config": profile.as_dict(),
        "manifest_path": str(manifest_path.resolve()),
        "manifest_hash": manifest_hash,
        "data_fingerprint": manifest["fingerprint"],
        "data_source": manifest.get("source"),
        "data_sources": manifest.get("sources") or [{"source": manifest.get("source"),
                                                     "fingerprint": manifest["fingerprint"]}],
        "image_size": profile.image_size,
        "params": int(model.count_params()),
        # trials may have run in an earlier (resumed) invocation or in parallel on workers:
        "trials_time_total_s": round(sum(t.get("wall_time_s", 0.0) for t in result.trials), 3),
        "training_wall_time_s": round(result.search_wall_time_s + result.final_fit_wall_time_s, 3),
        "resumed": resumed,
        "acceleration": plan.as_dict(),
    }
    run.write_json(run.tune_summary, summary, default=str)


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
