"""The one place that touches keras-tuner's private API (pinned: keras-tuner 1.4.8).

keras-tuner 1.4.8 truncates and rewrites its state (oracle.json, trial.json, ...) in place, so a
search killed mid-write kept an empty oracle.json and could never resume. `save_state_atomically`
routes its one writer, keras_tuner.src.utils.save_json, through glasses.files.write_json_atomic.
`drop_unrecorded_trials` forgets a trial a kill left on disk before oracle.json recorded it, and
`has_saved_state` asks whether a tuner found a saved search to resume. All of them rely on the version
check in `save_state_atomically` (called first), which fails loudly when keras-tuner is upgraded, so
these internals are looked at again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from glasses.files import write_json_atomic

SUPPORTED_KERAS_TUNER = "1.4.8"


def check_version() -> None:
    """RuntimeError unless the installed keras-tuner is the version these internals were written for."""
    import keras_tuner

    if keras_tuner.__version__ != SUPPORTED_KERAS_TUNER:
        raise RuntimeError(f"keras-tuner {keras_tuner.__version__} is installed but training/keras_tuner_compat.py "
                           f"was written for {SUPPORTED_KERAS_TUNER}: check its private API use, then update it")


def save_state_atomically() -> None:
    """Make keras-tuner write every state file through a temp file + rename (idempotent)."""
    check_version()
    from keras_tuner.src import utils as kt_utils

    if kt_utils.save_json is not write_json_atomic:
        kt_utils.save_json = write_json_atomic


def drop_unrecorded_trials(tuner: Any) -> list[str]:
    """Forget the trials a crash left on disk before the oracle recorded them; their ids, in order.

    keras-tuner writes a new trial's trial.json before oracle.json. A search killed between the two
    resumes with that trial stuck RUNNING (the saved oracle never started it, so it is not retried)
    and runs one more. Dropping it, and its folder, lets the search create the same slot again.
    """
    oracle = tuner.oracle
    if getattr(oracle, "start_order", None) is None:  # a distributed worker's OracleClient: the chief's job
        return []
    started = set(oracle.start_order)
    orphans = sorted(tid for tid in oracle.trials if tid not in started)
    for tid in orphans:
        del oracle.trials[tid]
        shutil.rmtree(Path(oracle._project_dir) / f"trial_{tid}", ignore_errors=True)
    return orphans


def has_saved_state(tuner: Any) -> bool:
    """Whether the tuner was constructed over a saved search (with trials) it resumes."""
    return Path(tuner._get_tuner_fname()).exists() and bool(tuner.oracle.trials)
