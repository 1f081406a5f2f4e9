"""Fitting helpers shared by every stage that calls `model.fit` (tune, train): the settings a profile
names (augmentation, class weights) turned into what Keras takes, and how progress is shown."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from glasses.config import CLASS_NAMES, IMBALANCE_WARNING_BELOW
from training.cli import UserError


def resolve_augment(name: str | None) -> Callable | None:
    """The augmentation function `training.augment.<name>` (image, label) -> (image, label), or None."""
    if not name:
        return None
    try:
        module = importlib.import_module("training.augment")
        return getattr(module, name)
    except (ModuleNotFoundError, AttributeError):
        raise UserError(f"augmentation {name!r} not found in training/augment.py") from None


def class_weights(manifest_path: Path, mode: str | None) -> dict[int, float] | None:
    """None, or 'balanced' weights n / (2 * n_class) from the train split (index = label)."""
    if mode is None:
        return None
    from training.data import class_counts

    counts = class_counts(manifest_path, "train")
    n = sum(counts.values())
    return {i: n / (2 * max(counts[c], 1)) for i, c in enumerate(CLASS_NAMES)}


def fit_verbosity() -> int:
    """Keras progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def history_lists(history: Any) -> dict[str, list[float]]:
    """A Keras History as {metric: [float per epoch]}, without the learning-rate schedule's values."""
    return {k: [float(v) for v in vals] for k, vals in history.history.items() if k != "learning_rate"}


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
