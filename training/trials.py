"""Trials: Keras Tuner trials as this project records and reads them.

Every trial directory gets glasses_trial.json (wall time, which worker) and glasses_history.json
(per-epoch metrics); `trial_summaries` turns the oracle's trials into plain dicts, `check_trials`
refuses a search with failed trials (keras-tuner itself returns normally), `stitched_history` is
the learning curve a Hyperband trial's weights really took, through its parent trials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from glasses.files import write_json_atomic
from training.cli import UserError

TRIAL_FILE = "glasses_trial.json"  # wall time, tuner id, seconds per epoch, precision
HISTORY_FILE = "glasses_history.json"


def make_tuner_class() -> type:
    """keras_tuner.Hyperband that records each trial's wall time, epoch times, worker and history in its directory."""
    import keras_tuner as kt

    class GlassesHyperband(kt.Hyperband):
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


def trial_summaries(tuner: Any) -> list[dict]:
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


def stitched_history(tuner: Any, trial_id: str) -> dict[str, list[float]]:
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
