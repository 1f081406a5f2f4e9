"""RunDir: the layout of a run directory, the one place that names its files and writes them.

    WORK_DIR/runs/<timestamp>-<profile>-<id>/
      model.keras            the final model (tune)
      history.json           its per-epoch metrics (tune)
      tune.json              what the search did and with which profile and data (tune)
      evaluation.json        test metrics, threshold, which model and manifest they belong to (evaluate)
      learning_curves.png    loss and accuracy per epoch (evaluate)
      registered.json        the tag it got in the registry and the gate's decision (register)

Every JSON file is written atomically (temp file + rename): a killed process leaves the old file
or the new one, never half of one.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from glasses.config import MODEL_FILE, RUNS_SUBDIR, TuningProfile
from glasses.files import write_json_atomic
from training.cli import UserError

HISTORY_FILE = "history.json"
TUNE_FILE = "tune.json"
REPORT_FILE = "evaluation.json"
CURVES_FILE = "learning_curves.png"
REGISTERED_FILE = "registered.json"


class RunDir:
    """A run directory (or any directory `evaluate` reports into): paths of its files, JSON in and out."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.model = self.path / MODEL_FILE
        self.history = self.path / HISTORY_FILE
        self.tune_summary = self.path / TUNE_FILE
        self.report = self.path / REPORT_FILE
        self.curves = self.path / CURVES_FILE
        self.registered = self.path / REGISTERED_FILE

    @classmethod
    def new(cls, work_dir: str | Path, profile_name: str) -> "RunDir":
        """A fresh WORK_DIR/runs/<timestamp>-<profile>-<id>/ directory."""
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}-{uuid.uuid4().hex[:6]}"
        path = Path(work_dir) / RUNS_SUBDIR / name
        path.mkdir(parents=True)
        return cls(path)

    def write_json(self, file: Path, obj: Any, **dump_kwargs: Any) -> Path:
        """Write `obj` as JSON to one of this directory's files, atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, obj, **{"indent": 2, **dump_kwargs})
        return file

    def read_tune_summary(self) -> dict[str, Any]:
        """tune.json, or a UserError saying this is not a run directory."""
        if not self.tune_summary.exists():
            raise UserError(f"{self.tune_summary} does not exist; is {self.path} a run directory from "
                            "`glasses-train tune`?")
        return json.loads(self.tune_summary.read_text())

    def read_profile(self, summary: dict[str, Any] | None = None) -> TuningProfile:
        """The profile the run was tuned with (from tune.json), validated."""
        summary = self.read_tune_summary() if summary is None else summary
        try:
            return TuningProfile.from_dict(summary["profile_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.tune_summary} holds no valid profile: {exc}") from None

    def read_history(self) -> dict[str, list[float]]:
        """history.json, or {} when the run has none."""
        return json.loads(self.history.read_text()) if self.history.exists() else {}
