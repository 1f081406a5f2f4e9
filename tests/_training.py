"""Helpers for the training-area tests (tune, evaluate, register, run): tiny data, private stores.

The tiny dataset is the data pipeline's own synthetic faces (tests/_fixtures.py: dark glasses bar
or not) at 64 px, prepared once per test session through the real `prepare` stage.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from loadtests.server import QUIET_ENV

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TINY_SIZE = 64


def tiny_source(base: Path) -> Path:
    """A folders: source of 64 synthetic faces (24 with glasses), made once under `base`."""
    from _fixtures import make_folders

    root = base / "tiny-faces"
    if not (root / "labels.csv").exists():
        make_folders(root, n_glasses=24, n_no_glasses=40, persons=16, image_size=64)
    return root


def tiny_manifest(base: Path) -> Path:
    """The tiny source prepared at 64 px in base/work (cache reused across calls)."""
    from training.prepare import prepare

    root = tiny_source(base)
    return prepare(f"folders:{root}", size=TINY_SIZE, work_dir=base / "work", progress=False).manifest_path


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a `glasses-train` subprocess: quiet TF, repo importable, no stray KERASTUNER_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update({**QUIET_ENV, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def glasses_train(args: list[str], *, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m training ARGS` to completion; output captured as text."""
    return subprocess.run([PYTHON, "-m", "training", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def private_store(home: Path):
    """Point BentoML's model store (already configured in this process or not) and BENTOML_HOME at `home`."""
    from service.bentoml_compat import model_store_at

    (home / "models").mkdir(parents=True, exist_ok=True)
    old = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        with model_store_at(home / "models"):
            yield home
    finally:
        if old is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = old


def write_run_dir(run_dir: Path, model, manifest: Path, *, profile: str = "smoke", metrics: dict | None = None) -> Path:
    """A run directory as `tune` + `evaluate` leave it, for a given (untuned) model.

    tune.json is written from the real profile; evaluation.json comes from the real `evaluate`,
    with `metrics` entries overriding the measured ones when a test needs exact gate values.
    """
    from training.data import manifest_hash, read_manifest
    from training.evaluate import evaluate
    from training.rundir import RunDir
    from training.tune import get_profile

    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    model.save(run.model)
    info = read_manifest(manifest)
    summary = {
        "role": "local", "profile": profile, "objective": "val_accuracy",
        "best_hyperparameters": {"units": 32}, "best_trial_id": "0000", "best_score": 0.5, "trials": [],
        "profile_config": get_profile(profile).as_dict(), "manifest_path": str(manifest), "manifest_hash": manifest_hash(manifest),
        "data_fingerprint": info["fingerprint"], "data_source": info.get("source"), "image_size": info["size"],
        "params": int(model.count_params()), "training_wall_time_s": 1.0, "search_wall_time_s": 1.0,
    }
    run.write_json(run.tune_summary, summary)
    report = evaluate(run.model, manifest, out_dir=run_dir)
    if metrics:
        report["metrics"].update(metrics)
        run.write_json(run.report, report)
    return run_dir


def linear_model(seed: int = 0, size: int = TINY_SIZE):
    """A seeded one-layer model (flatten + sigmoid) on size x size RGB: untrained, but a real keras.Model."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
